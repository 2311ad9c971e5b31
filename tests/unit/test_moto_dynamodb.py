"""The local emulator's DynamoDB updates without repeated work (moto_dynamodb.py): the same updates,
valid and invalid, sent to moto (in this process) with and without the changes, must leave the same
items and raise the same errors; and the work is no longer repeated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.parsing import expressions, validators

from visionq.jobs import ObjectVersion
from visionq.moto_dynamodb import (
    speed_up_dynamodb_conditions,
    speed_up_dynamodb_responses,
    speed_up_dynamodb_updates,
)
from visionq.stores.job_store import DynamoJobStore

ALL_CHANGES = (speed_up_dynamodb_updates, speed_up_dynamodb_responses, speed_up_dynamodb_conditions)

START = {
    "pk": {"S": "a"},
    "n": {"N": "1"},
    "s": {"S": "x"},
    "l": {"L": [{"N": "1"}, {"N": "2"}, {"N": "3"}]},
    "m": {"M": {"kid": {"S": "y"}, "deep": {"M": {"k": {"N": "5"}}}}},
    "ss": {"SS": ["p", "q"]},
}

# (UpdateExpression, ConditionExpression or None, names, values): what update_item is sent.
UPDATES: list[tuple[str, str | None, dict[str, str], dict[str, Any]]] = [
    ("SET n = n + :one", None, {}, {":one": {"N": "1"}}),
    ("SET #s = :v, m.kid = :v", "attribute_exists(pk)", {"#s": "s"}, {":v": {"S": "z"}}),
    ("SET l = list_append(l, :more)", None, {}, {":more": {"L": [{"N": "4"}]}}),
    ("SET l[0] = :v REMOVE l[2]", None, {}, {":v": {"N": "9"}}),
    (
        "SET created = if_not_exists(created, :now), m.deep.k = m.deep.k - :one",
        None,
        {},
        {":now": {"N": "7"}, ":one": {"N": "1"}},
    ),
    ("ADD n :one, ss :more", None, {}, {":one": {"N": "2"}, ":more": {"SS": ["r"]}}),
    ("DELETE ss :gone", None, {}, {":gone": {"SS": ["p"]}}),
    ("ADD n :one DELETE ss :gone", None, {}, {":one": {"N": "2"}, ":gone": {"SS": ["p"]}}),
    ("REMOVE s, m.kid", "#n IN (:a, :b)", {"#n": "n"}, {":a": {"N": "1"}, ":b": {"N": "2"}}),
    ("SET s = :v", "n > :big", {}, {":v": {"S": "no"}, ":big": {"N": "100"}}),  # the condition fails
    ("SET s = :v SET n = :v", None, {}, {":v": {"S": "no"}}),  # two SET clauses
    ("SET s = :v, s = :w", None, {}, {":v": {"S": "a"}, ":w": {"S": "b"}}),  # the same path twice
    ("SET s = :missing", None, {}, {":v": {"S": "a"}}),  # a value not given
    ("SET #missing = :v", None, {}, {":v": {"S": "a"}}),  # a name not given
    ("SET pk = :v", None, {}, {":v": {"S": "b"}}),  # the key
    ("SET n = s + :one", None, {}, {":one": {"N": "1"}}),  # a string plus a number
    ("SET nope.deeper = :v", None, {}, {":v": {"S": "a"}}),  # a path into nothing
    ("SET = :v", None, {}, {":v": {"S": "a"}}),  # not an expression
    # One expression, its checks passed with some names, then failed with others: a kept verdict
    # is the expression's with those names only.
    ("SET #a = :v", None, {"#a": "s"}, {":v": {"S": "ok"}}),
    ("SET #a = :v", None, {"#a": "pk"}, {":v": {"S": "no"}}),  # the key, by its name
    ("SET #a = :v, #b = :w", None, {"#a": "s", "#b": "n"}, {":v": {"S": "a"}, ":w": {"N": "3"}}),
    ("SET #a = :v, #b = :w", None, {"#a": "s", "#b": "s"}, {":v": {"S": "a"}, ":w": {"N": "3"}}),  # one path twice
    ("SET #a = :v, #b = :w", None, {"#a": "s", "#b": "n"}, {":v": {"S": "b"}}),  # checks kept; a value missing
    # One condition met, then not met with other values or names, then naming a value not given.
    ("SET s = :v", "n = :want", {}, {":v": {"S": "met"}, ":want": {"N": "1"}}),
    ("SET s = :v", "n = :want", {}, {":v": {"S": "met"}, ":want": {"N": "2"}}),
    ("SET s = :v", "#k = :want", {"#k": "n"}, {":v": {"S": "met"}, ":want": {"N": "1"}}),
    ("SET s = :v", "#k = :want", {"#k": "s"}, {":v": {"S": "met"}, ":want": {"N": "1"}}),
    ("SET s = :v", "n = :want", {}, {":v": {"S": "met"}}),
    # A list of actions nests one level per action: deep trees are parsed and copied as moto does,
    # and fail where moto fails (its copy's recursion limit), or not at all.
    (", ".join(f"SET a{i} = :v" if i == 0 else f"a{i} = :v" for i in range(80)), None, {}, {":v": {"S": "d"}}),
    (", ".join(f"SET a{i} = :v" if i == 0 else f"a{i} = :v" for i in range(250)), None, {}, {":v": {"S": "d"}}),
    (
        ", ".join(f"SET a{i} = :v" if i == 0 else f"a{i} = :v" for i in range(250)),
        "attribute_not_exists(pk)",  # fails before the tree is copied
        {},
        {":v": {"S": "d"}},
    ),
    (", ".join(f"SET a{i} = :v" if i == 0 else f"a{i} = :v" for i in range(250)), None, {}, {":w": {"S": "d"}}),
    ("SET s = :v", None, {}, {":v": {"S": "fresh"}}),  # on an item that does not exist yet (key "b")
]


def _client_with_table() -> Any:
    """A client of the in-process moto (inside ``mock_aws``) with table "t", keyed by "pk"."""
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return client


def _outcomes(apply: Callable[[], None] | None, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Each update sent twice in a row (the second from what the cache keeps), on a fresh table:
    the item after it, or the error's code and message."""
    with monkeypatch.context() as patch:
        if apply is not None:
            assert all(change(patch.setattr) for change in ALL_CHANGES)
        with mock_aws():
            client = _client_with_table()
            outcomes = []
            for i, (update, condition, names, values) in enumerate(UPDATES * 2):
                key = "b" if i % len(UPDATES) == len(UPDATES) - 1 else "a"
                client.put_item(TableName="t", Item=START) if key == "a" else None
                kwargs: dict[str, Any] = {
                    "TableName": "t",
                    "Key": {"pk": {"S": key}},
                    "UpdateExpression": update,
                    "ExpressionAttributeValues": values,
                    "ReturnValues": "ALL_NEW",
                }
                if condition:
                    kwargs["ConditionExpression"] = condition
                if names:
                    kwargs["ExpressionAttributeNames"] = names
                try:
                    outcomes.append(client.update_item(**kwargs).get("Attributes"))
                except ClientError as exc:
                    outcomes.append((exc.response["Error"]["Code"], exc.response["Error"]["Message"]))
                except RecursionError:  # where in moto's copy the limit is met may word it differently
                    outcomes.append(("raised", "RecursionError"))
                except Exception as exc:  # noqa: BLE001 - moto itself fails on some (a name not given)
                    outcomes.append(("raised", type(exc).__name__, str(exc)))
                client.delete_item(TableName="t", Key={"pk": {"S": key}})
            return outcomes


def test_every_update_has_the_same_outcome_with_and_without_the_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    stock = _outcomes(None, monkeypatch)
    changed = _outcomes(speed_up_dynamodb_updates, monkeypatch)
    assert changed == stock
    # Not vacuous: the valid updates changed their items, the invalid ones failed, each its own way.
    assert sum(isinstance(o, dict) for o in stock) >= 14 and len({o for o in stock if isinstance(o, tuple)}) >= 8
    assert ("raised", "RecursionError") in stock and isinstance(stock[len(UPDATES) - 5], dict)  # the 80 actions


def test_an_expression_is_parsed_once_and_each_call_gets_a_tree_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    parses = []
    parse = expressions.UpdateExpressionParser.make

    def counted(expression: str) -> Any:
        parses.append(expression)
        return parse(expression)

    monkeypatch.setattr(expressions.UpdateExpressionParser, "make", staticmethod(counted))
    assert speed_up_dynamodb_updates(monkeypatch.setattr) is True
    first = expressions.UpdateExpressionParser.make("SET a = :v, b = :w")
    second = expressions.UpdateExpressionParser.make("SET a = :v, b = :w")
    assert parses == ["SET a = :v, b = :w"]
    assert first is not second and first.children[0] is not second.children[0]
    first.children.clear()  # what one caller does to its tree, the next does not see
    assert expressions.UpdateExpressionParser.make("SET a = :v, b = :w").children
    with pytest.raises(Exception, match="Invalid UpdateExpression"):
        expressions.UpdateExpressionParser.make("SET = :v")


def test_the_validators_copy_is_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert speed_up_dynamodb_updates(monkeypatch.setattr) is True
    tree = expressions.UpdateExpressionParser.make("SET a = if_not_exists(a, :v) REMOVE b")
    copied = validators.deepcopy(tree)
    assert copied is not tree and _shape(copied) == _shape(tree) != _shape(
        expressions.UpdateExpressionParser.make("SET a = :v")
    )
    assert copied.children[0].parent is copied  # the parent links point into the copy
    assert validators.deepcopy({"plain": [1]}) == {"plain": [1]}  # anything else: deepcopy's


def test_the_checks_run_once_per_expression_names_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = {"actions": 0, "overlaps": 0}
    count_actions = validators.ActionCountValidator.verify_action_counts
    count_overlaps = validators.OverlappingPathsValidator.check_for_overlapping_paths

    def actions(self: Any, node: Any) -> Any:
        counts["actions"] += 1
        return count_actions(self, node)

    def overlaps(self: Any, node: Any) -> Any:
        counts["overlaps"] += 1
        return count_overlaps(self, node)

    monkeypatch.setattr(validators.ActionCountValidator, "verify_action_counts", actions)
    monkeypatch.setattr(validators.OverlappingPathsValidator, "check_for_overlapping_paths", overlaps)
    assert speed_up_dynamodb_updates(monkeypatch.setattr) is True
    with mock_aws():
        client = _client_with_table()

        def update(names: dict[str, str], value: str) -> None:
            client.update_item(
                TableName="t",
                Key={"pk": {"S": "a"}},
                UpdateExpression="SET #a = :v",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={":v": {"S": value}},
            )

        update({"#a": "s"}, "1")  # creates the item: validated twice, checked once
        once = dict(counts)
        assert once["actions"] > 0 and once["overlaps"] > 0  # (each check runs at every node it matches)
        for value in ("2", "3"):
            update({"#a": "s"}, value)
        assert counts == once
        update({"#a": "t"}, "4")  # other names: checked again
        assert counts == {name: 2 * n for name, n in once.items()}
        assert client.get_item(TableName="t", Key={"pk": {"S": "a"}})["Item"] == {
            "pk": {"S": "a"},
            "s": {"S": "3"},
            "t": {"S": "4"},
        }


def test_the_job_stores_writes_go_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job store's own claim and result writes, as the pipeline sends them, with the changes."""
    from infra.bootstrap import ensure_jobs_table

    assert speed_up_dynamodb_updates(monkeypatch.setattr) is True
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        ensure_jobs_table(client, "jobs")
        store = DynamoJobStore(client, "jobs")
        for i in range(3):
            job_id = f"{i:032x}"
            obj = ObjectVersion(bucket="b", key=f"uploads/{i}.jpg", version=job_id)
            assert store.claim(job_id, obj, model="default", expires_at=2_000_000_000).status == "RUNNING"
            assert store.claim(job_id, obj, model="default", expires_at=2_000_000_000).status == "RUNNING"
            done = store.mark_succeeded(job_id, {"detections": []})
            assert done.status == "SUCCEEDED"
            assert store.claim(job_id, obj, model="default", expires_at=2_000_000_000).status == "SUCCEEDED"


def _shape(node: Any) -> Any:
    """A tree as nested tuples of its node types and leaf values."""
    children = getattr(node, "children", None)
    if children is None:
        return (type(node).__name__, node) if not hasattr(node, "type") else (node.type,)
    return (type(node).__name__, tuple(_shape(child) for child in children))


# Every kind of attribute value: plain ones (written as kept) and blobs (moto's base64), nested.
ITEM = {
    "pk": {"S": "a"},
    "n": {"N": "12.5"},
    "s": {"S": 'text with "quotes" and ünïcode'},
    "empty": {"S": ""},
    "yes": {"BOOL": True},
    "no": {"BOOL": False},
    "nothing": {"NULL": True},
    "ss": {"SS": ["p", "q"]},
    "ns": {"NS": ["1", "2.5"]},
    "b": {"B": b"\x00\xffbytes"},
    "bs": {"BS": [b"one", b"two"]},
    "m": {"M": {"kid": {"S": "y"}, "deep": {"M": {"k": {"N": "5"}, "blob": {"B": b"\x01"}}}}},
    "l": {"L": [{"N": "1"}, {"S": "two"}, {"L": [{"BOOL": True}]}, {"M": {}}, {"B": b"\x02"}]},
}


def _responses(apply: Callable[[pytest.MonkeyPatch], bool] | None, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What a client reads back of ITEM through each kind of response that returns items."""
    with monkeypatch.context() as patch:
        if apply is not None:
            assert apply(patch) is True
        with mock_aws():
            client = _client_with_table()
            client.put_item(TableName="t", Item=ITEM)
            key = {"pk": {"S": "a"}}
            out: list[Any] = [
                client.get_item(TableName="t", Key=key)["Item"],
                client.update_item(
                    TableName="t",
                    Key=key,
                    UpdateExpression="SET extra = :v",
                    ExpressionAttributeValues={":v": {"M": {"x": {"B": b"\x03"}, "y": {"NS": ["7"]}}}},
                    ReturnValues="ALL_NEW",
                )["Attributes"],
                client.query(
                    TableName="t", KeyConditionExpression="pk = :a", ExpressionAttributeValues={":a": {"S": "a"}}
                )["Items"],
                client.scan(TableName="t")["Items"],
                client.batch_get_item(RequestItems={"t": {"Keys": [key]}})["Responses"],
                client.get_item(TableName="t", Key=key, ProjectionExpression="s, m.deep")["Item"],
            ]
            try:
                client.put_item(TableName="t", Item=ITEM, ConditionExpression="attribute_not_exists(pk)")
            except ClientError as exc:
                out.append(exc.response["Error"]["Code"])
            return out


def test_every_item_reads_back_the_same_with_and_without_the_response_change(monkeypatch: pytest.MonkeyPatch) -> None:
    stock = _responses(None, monkeypatch)
    changed = _responses(lambda patch: speed_up_dynamodb_responses(patch.setattr), monkeypatch)
    assert changed == stock
    assert stock[0] == ITEM  # not vacuous: every kind of value came back as it was put
    assert stock[1]["extra"] == {"M": {"x": {"B": b"\x03"}, "y": {"NS": ["7"]}}}


def test_plain_values_skip_the_serializers_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.core import serialize

    picks = {"n": 0}
    pick = serialize.AttributePicker.__call__

    def counted(self: Any, context: Any) -> Any:
        picks["n"] += 1
        return pick(self, context)

    monkeypatch.setattr(serialize.AttributePicker, "__call__", counted)
    _responses(None, monkeypatch)
    stock = picks["n"]
    picks["n"] = 0
    _responses(lambda patch: speed_up_dynamodb_responses(patch.setattr), monkeypatch)
    assert 0 < picks["n"] < stock / 2, (picks["n"], stock)


def test_a_condition_is_parsed_once_per_expression_names_and_the_values_it_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moto.dynamodb import comparisons

    parses = []
    lex = comparisons.ConditionExpressionParser._lex_condition_expression

    def counted(self: Any) -> Any:
        parses.append(self.condition_expression)
        return lex(self)

    monkeypatch.setattr(comparisons.ConditionExpressionParser, "_lex_condition_expression", counted)
    assert speed_up_dynamodb_conditions(monkeypatch.setattr) is True
    with mock_aws():
        client = _client_with_table()

        def update(now: str, want: str) -> None:
            client.update_item(
                TableName="t",
                Key={"pk": {"S": "a"}},
                UpdateExpression="SET s = :now",
                ConditionExpression="attribute_not_exists(pk) OR s <> :want",
                ExpressionAttributeValues={":now": {"S": now}, ":want": {"S": want}},
            )

        update("1", "x")
        once = len(parses)
        assert once > 0
        update("2", "x")  # another value, but not one the condition names
        update("3", "x")
        assert len(parses) == once
        with pytest.raises(ClientError, match="ConditionalCheckFailed"):
            update("4", "3")  # a value the condition names: parsed again, and not met
        assert len(parses) == 2 * once
