"""moto's DynamoDB ``UpdateItem`` without the work it repeats on every call (the local emulator only;
``moto_server.py`` applies these changes): ``speed_up_dynamodb_updates`` below, then its responses
(``speed_up_dynamodb_responses``) and conditions (``speed_up_dynamodb_conditions``), bench/RESULTS.md
run 24.

Every job costs the emulator two conditional ``UpdateItem`` calls (the claim, the result), and
they were most of its CPU: a py-spy profile of the moto server under the job store's calls put
72 % of its busy time in ``update_item`` (bench/RESULTS.md run 21). Its costs there are mostly the
same answer computed again:

- **The update expression is parsed twice per call** (the handler, then the backend), always from
  one of the handful of strings the job store sends. The parse of each string is kept, pickled,
  and every call gets its own copy unpickled from it: a fresh tree, as a parse gives.
- **The validator deep-copies the parsed tree** before it rewrites it (twice for a call that
  creates its item). The copy is now made by pickling the tree and reading it back: the same
  objects, rebuilt by the same protocol, in a third of the time.
  Both only for trees at most 64 levels deep: a list of actions nests one level per action, and
  pickle meets Python's recursion limit at another depth than deepcopy does, so a deeper tree is
  parsed and copied as moto does, and fails (or not) where moto's own copy fails.
- **Three of the validator's ten passes only check the expression** (one SET / REMOVE / ADD
  clause each, no path updated twice, no key updated): their verdict depends on the expression,
  its names and the table's key, never on the values or the item. A verdict "passed" is kept per
  (expression, names, key attributes), and a call that repeats all three skips those passes; a
  failing check is not kept, so it fails again as moto fails it.
- **Each of the validator's ten passes over the tree builds its table of node types again at
  every node**, twice. Each pass now builds it once: the tables are fixed (each maps node classes
  to the pass's own methods). And the passes, like ``find_clauses``, check every node against
  moto's abstract node classes (``ABCMeta``: microseconds per check); each answer is kept per type.

No answer changes: tests/unit/test_moto_dynamodb.py sends the same updates, valid and invalid, to
moto with and without these changes and compares every item and every error. As with the other
changes to moto, each is applied only where moto's code has the shape it was written against.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import pickle
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("visionq.moto_server")

Setter = Callable[[Any, str, Any], None]

KEPT_PARSES = 256  # distinct update expressions whose parse is kept (the job store sends a few)
KEPT_VERDICTS = 4096  # (expression, names, key) whose checks passed; forgotten all at once beyond
SHALLOW_DEPTH = 64  # deeper trees are parsed and copied as moto does (its copy's recursion limit)


def speed_up_dynamodb_updates(set_attribute: Setter = setattr) -> bool:
    """Apply the changes above (``set_attribute``: how to replace an attribute, ``setattr`` or a
    test's ``monkeypatch.setattr``); False where moto's code is not as expected."""
    from moto.dynamodb.parsing import ast_nodes, expressions, validators

    parser = getattr(expressions, "UpdateExpressionParser", None)
    traverser = getattr(ast_nodes, "DepthFirstTraverser", None)
    node_class = getattr(ast_nodes, "Node", None)
    expression = getattr(ast_nodes, "Expression", None)
    function = getattr(ast_nodes, "UpdateExpressionFunction", None)
    methods = ("nodes_to_be_processed", "process", "traverse_node_recursively", "pre_processing_of_child")
    if (
        parser is None
        or not callable(getattr(parser, "make", None))
        or traverser is None
        or not all(callable(getattr(traverser, name, None)) for name in methods)
        or node_class is None
        or not callable(getattr(node_class, "find_clauses", None))
        or expression is None
        or function is None
        or getattr(validators, "deepcopy", None) is not copy.deepcopy
        or not _validator_as_expected(validators)
    ):
        logger.warning("moto's DynamoDB is not as this fix expects; updates are parsed and copied as before")
        return False

    parse = parser.make
    # Trees ``make`` handed out that are shallow: only these are copied by pickle. A deep tree (a
    # long list of actions nests one level per action) goes to deepcopy, which then fails with a
    # RecursionError exactly where moto's own copy fails (pickle's limit is elsewhere).
    shallow: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()  # by identity

    @functools.lru_cache(maxsize=KEPT_PARSES)
    def parsed(expression: str) -> bytes | None:
        tree = parse(expression)  # an invalid one raises, and is not kept
        if _depth(tree) > SHALLOW_DEPTH:
            return None  # parsed again on every call, as moto does
        return pickle.dumps(tree, pickle.HIGHEST_PROTOCOL)

    def make(expression: str) -> Any:
        if not isinstance(expression, str):
            return parse(expression)
        blob = parsed(expression)
        if blob is None:
            return parse(expression)
        tree = pickle.loads(blob)  # noqa: S301 - bytes this process pickled itself
        shallow[id(tree)] = tree
        tree._visionq_source = expression  # kept by the validator's copy: its verdicts' key
        return tree

    set_attribute(parser, "make", staticmethod(make))

    def copied(value: Any, memo: dict[int, Any] | None = None) -> Any:
        if memo is None and shallow.get(id(value)) is value:
            return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))  # noqa: S301 - ours
        return copy.deepcopy(value, memo)

    set_attribute(validators, "deepcopy", copied)

    def nodes_to_be_processed(self: Any) -> tuple[type, ...]:
        return tuple(_table(self))

    def process(self: Any, node: Any) -> Any:
        processor = _processor(self, type(node))
        return processor(node) if processor is not None else None

    def traverse_node_recursively(self: Any, node: Any, child_id: int = -1) -> Any:
        # moto's, with its isinstance checks against abstract classes answered once per type.
        if _is_a(type(node), node_class):
            parent_node = node.parent
            if node.children is not None:
                for i, child_node in enumerate(node.children):
                    self.pre_processing_of_child(node, i)
                    self.traverse_node_recursively(child_node, i)
            if _processor(self, type(node)) is not None:
                node = self.process(node)
                node.parent = parent_node
                if parent_node:
                    parent_node.children[child_id] = node
        return node

    descend = (expression, function)

    def find_clauses(self: Any, clause_types: Any) -> list[Any]:
        clauses = []
        for child in self.children or []:
            if type(child) in clause_types:
                clauses.append(child)
            elif _is_a(type(child), descend):
                clauses.extend(child.find_clauses(clause_types))
        return clauses

    checks = tuple(getattr(validators, name) for name in _CHECKS)
    passed: dict[tuple[str, str, str], None] = {}

    def validate(self: Any) -> Any:
        # moto's Validator.validate, without the checks a call with the same verdict key passed.
        n = self.node_to_validate
        source = getattr(n, "_visionq_source", None)
        key = None
        if source is not None and isinstance(self.expression_attribute_names or {}, dict):
            names = repr(sorted((self.expression_attribute_names or {}).items()))  # a str: hashable whatever was sent
            key = (source, names, repr(self.table.table_key_attrs))
        known = key is not None and key in passed
        for processor in self.processors:
            if known and type(processor) in checks:
                continue
            n = processor.traverse(n)
        if key is not None and not known:  # every pass passed (one that fails raises), the checks too
            if len(passed) >= KEPT_VERDICTS:
                passed.clear()
            passed[key] = None
        return n

    set_attribute(validators.UpdateExpressionValidator, "validate", validate)
    set_attribute(traverser, "nodes_to_be_processed", nodes_to_be_processed)
    set_attribute(traverser, "process", process)
    set_attribute(traverser, "traverse_node_recursively", traverse_node_recursively)
    set_attribute(node_class, "find_clauses", find_clauses)
    return True


# The passes that only check the expression, its names and the table's key (they return the tree
# as it is, or raise).
_CHECKS = ("ActionCountValidator", "OverlappingPathsValidator", "UpdateHashRangeKeyValidator")


def _validator_as_expected(validators: Any) -> bool:
    """moto's update validator as this change expects it: the three checks exist, validate() is
    the base class's loop over ``processors``."""
    update_validator = getattr(validators, "UpdateExpressionValidator", None)
    base = getattr(validators, "Validator", None)
    return (
        update_validator is not None
        and base is not None
        and all(isinstance(getattr(validators, name, None), type) for name in _CHECKS)
        and update_validator.validate is base.validate
        and "self.processors" in _source(base.validate)
    )


def _source(function: Any) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def _table(traverser: Any) -> dict[type, Callable[[Any], Any]]:
    """The pass's table of node types, built once per pass (it was built at every node)."""
    table: dict[type, Callable[[Any], Any]] | None = traverser.__dict__.get("_visionq_table")
    if table is None:
        table = traverser.__dict__["_visionq_table"] = traverser._processing_map()
    return table


def _processor(traverser: Any, kind: type) -> Callable[[Any], Any] | None:
    """The pass's processor for nodes of type ``kind`` (the first whose class it is), or None."""
    chosen: dict[type, Any] | None = traverser.__dict__.get("_visionq_chosen")
    if chosen is None:
        chosen = traverser.__dict__["_visionq_chosen"] = {}
    if kind not in chosen:
        chosen[kind] = next((p for c, p in _table(traverser).items() if issubclass(kind, c)), None)
    return chosen[kind]  # type: ignore[no-any-return]


def _depth(tree: Any) -> int:
    """How deep ``tree`` nests (walked without recursion: the tree may be too deep for it)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in getattr(node, "children", None) or [])
    return deepest


_IS_A: dict[tuple[type, Any], bool] = {}


def _is_a(kind: type, classes: Any) -> bool:
    """``issubclass``, kept per pair: the node classes are abstract (ABCMeta), whose checks cost
    microseconds each, and a tree is checked thousands of times per update."""
    key = (kind, classes)
    if key not in _IS_A:
        _IS_A[key] = issubclass(kind, classes)
    return _IS_A[key]


# An AttributeValue whose members are all strings or flags is already in its wire form: moto keeps
# items as DynamoDB JSON (numbers as strings). Blobs (B, BS) go through moto's base64 step.
_PLAIN_MEMBERS: dict[str, Callable[[Any], bool]] = {
    "S": lambda v: type(v) is str,
    "N": lambda v: type(v) is str,
    "BOOL": lambda v: type(v) is bool,
    "NULL": lambda v: type(v) is bool,
    "SS": lambda v: type(v) is list and all(type(s) is str for s in v),
    "NS": lambda v: type(v) is list and all(type(s) is str for s in v),
}


def _wire_form(value: Any, depth: int = 0) -> bool:
    """Whether the AttributeValue ``value`` would be serialized as it is (its only member plain,
    or a map or list of such values)."""
    if type(value) is not dict or len(value) != 1 or depth > SHALLOW_DEPTH:
        return False
    [(member, inner)] = value.items()
    if member == "M":
        return type(inner) is dict and all(type(k) is str and _wire_form(v, depth + 1) for k, v in inner.items())
    if member == "L":
        return type(inner) is list and all(_wire_form(v, depth + 1) for v in inner)
    plain = _PLAIN_MEMBERS.get(member)
    return plain is not None and plain(inner)


def speed_up_dynamodb_responses(set_attribute: Setter = setattr) -> bool:
    """moto's JSON responses with the items' attribute values written as they are kept.

    moto's response serializer walks the AttributeValue shape's ten members for every attribute of
    every item it returns (each looked up under its name and under a snake_case alias), about a
    fifth of the emulator's DynamoDB time under the job store's writes, which return the whole
    item. A value that is already in its wire form (strings, numbers as strings, flags, sets of
    those, maps and lists of them) is written as it is; any other, and any response with a
    transformer, goes through moto's serializer. False where moto's serializer is not as expected."""
    from moto.core import serialize

    json_serializer = getattr(serialize, "BaseJSONSerializer", None)
    original = getattr(json_serializer, "_serialize_type_structure", None)
    if original is None or not callable(getattr(json_serializer, "_default_serialize", None)):
        logger.warning("moto's JSON serializer is not as this fix expects; responses are serialized as before")
        return False

    def serialize_structure(self: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if (
            key
            and shape.name == "AttributeValue"
            and not getattr(self._value_picker, "response_transformers", True)
            and _wire_form(value)
        ):
            self._default_serialize(serialized, value, shape, key)
            return
        original(self, serialized, value, shape, key)

    set_attribute(json_serializer, "_serialize_type_structure", serialize_structure)
    return True


KEPT_CONDITIONS = 1024  # (condition, names, the values it names) whose parse is kept; all forgotten beyond


def speed_up_dynamodb_conditions(set_attribute: Setter = setattr) -> bool:
    """moto's condition expressions parsed once per (expression, names, the values it names).

    Each conditional write's condition was parsed twice per call (the handler, to find the names
    and values it uses; then the backend, to evaluate it): about a tenth of the emulator's
    DynamoDB time under the job store's writes, whose conditions name only the job states. The
    parse (an operator tree that holds the values it names, and is only read afterwards) is kept
    with the names and values it found, which a kept parse hands to its parser as a parse would. A
    condition that fails to parse is never kept. False where moto's parser is not as expected."""
    from moto.dynamodb import comparisons

    parser_class = getattr(comparisons, "ConditionExpressionParser", None)
    parse = getattr(parser_class, "parse", None)
    if parse is None or not all(
        name in _source(getattr(parser_class, "__init__", None))
        for name in ("condition_expression", "expression_attribute_values", "expr_attr_values_found")
    ):
        logger.warning("moto's condition parser is not as this fix expects; conditions are parsed as before")
        return False
    kept: dict[tuple[Any, ...], tuple[Any, list[str], list[str]]] = {}

    def kept_parse(self: Any) -> Any:
        expression = self.condition_expression
        if not isinstance(expression, str) or not expression:
            return parse(self)
        values = self.expression_attribute_values or {}
        names = self.expression_attribute_names or {}
        if not isinstance(values, dict) or not isinstance(names, dict):
            return parse(self)  # moto's own answer to what is malformed
        key = (
            expression,
            repr(sorted(names.items())),
            # Every value whose placeholder appears in the text (":p1" also where ":p10" does): at
            # worst a value it does not name, so a parse kept for other values is never used.
            repr(sorted((p, v) for p, v in values.items() if isinstance(p, str) and p in expression)),
        )
        if key not in kept:
            names_before, values_before = len(self.expr_attr_names_found), len(self.expr_attr_values_found)
            op = parse(self)  # one that raises is not kept
            if len(kept) >= KEPT_CONDITIONS:
                kept.clear()
            kept[key] = (op, self.expr_attr_names_found[names_before:], self.expr_attr_values_found[values_before:])
            return op
        op, names_found, values_found = kept[key]
        self.expr_attr_names_found.extend(names_found)
        self.expr_attr_values_found.extend(values_found)
        return op

    set_attribute(parser_class, "parse", kept_parse)
    return True
