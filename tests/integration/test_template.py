"""template.yaml, validated offline: cfn-lint (with the serverless transform), the SAM translator,
a security pass, and the translated template deployed into moto's CloudFormation (server mode)
reaching CREATE_COMPLETE, in each worker flavour.

moto's CloudFormation (5.2) creates the bucket, queues with their redrive, the table, log groups,
roles, the functions, the event source mapping, and the ECS cluster, task definition and service,
launch template and Auto Scaling group. It skips the types it does not implement (API Gateway v2
API/stage, SQS queue policies, the bucket policy, the scaling target and policies, the alarm, the
capacity provider and its association: they show as resources with no logical id) and ignores the
bucket's NotificationConfiguration, the table's TimeToLiveSpecification and
PointInTimeRecoverySpecification, and a function's PackageType. Those settings the bootstrap shares
with the template are compared in tests/unit/test_template_parity.py instead.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest

from infra.template_settings import load_template, template_path

pytestmark = pytest.mark.integration

# What `sam build` / `sam package` put in place of the local build: the API's zip in an artifacts
# bucket, the worker's image in ECR.
ARTIFACTS_BUCKET = "visionq-sam-artifacts"
API_ZIP_KEY = "visionq/api.zip"
WORKER_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/visionq-worker-lambda:test"
GPU_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/visionq-worker-gpu:test"


def packaged_template() -> dict[str, Any]:
    """The template as `sam package` leaves it: code locations in S3 and ECR."""
    sam = copy.deepcopy(load_template())
    for resource in sam["Resources"].values():  # the API and the notifier share the API's zip
        if resource["Type"] == "AWS::Serverless::Function" and resource["Properties"].get("CodeUri") == "build/api":
            resource["Properties"]["CodeUri"] = f"s3://{ARTIFACTS_BUCKET}/{API_ZIP_KEY}"
    for resource in sam["Resources"].values():  # the worker and the dead-letter sweeper share one image
        if resource["Type"] == "AWS::Serverless::Function" and resource["Properties"].get("PackageType") == "Image":
            resource["Properties"]["ImageUri"] = WORKER_IMAGE
    return sam


def translate(sam: dict[str, Any]) -> dict[str, Any]:
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    # Every managed policy is named by ARN in the template: no map of names is needed.
    session = boto3.session.Session(region_name="us-east-1")  # the region of the ARNs it writes
    translator = Translator(managed_policy_map={}, sam_parser=Parser(), boto_session=session)
    translated: dict[str, Any] = translator.translate(sam, parameter_values={})
    return translated


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


# --- lint ----------------------------------------------------------------------------------------


def test_cfn_lint_is_clean() -> None:
    """Errors, warnings and informational findings, SAM resources checked against SAM's schemas
    (Globals merged); no rule ignored."""
    cfn_lint = _tool("cfn-lint")
    assert cfn_lint, "cfn-lint is a dev dependency"
    result = subprocess.run(
        [cfn_lint, "--format", "parseable", "--include-checks", "I", "--", str(template_path())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_is_clean_on_the_translated_template(tmp_path: Path) -> None:
    """cfn-lint (1.x) checks SAM resources against SAM's schemas without translating them: lint the
    CloudFormation that the SAM translator makes too, as CloudFormation will receive it."""
    cfn_lint = _tool("cfn-lint")
    assert cfn_lint, "cfn-lint is a dev dependency"
    translated = tmp_path / "translated.json"
    translated.write_text(json.dumps(translate(packaged_template())), encoding="utf-8")
    result = subprocess.run(
        [cfn_lint, "--format", "parseable", "--include-checks", "I", "--", str(translated)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_security_pass_checkov() -> None:
    """checkov, where it is installed (it pins its own boto3, so it lives outside this venv:
    ``CHECKOV=/path/to/checkov``). Every finding is fixed or skipped in the template with a reason."""
    checkov = os.environ.get("CHECKOV") or _tool("checkov")
    if not checkov:
        pytest.skip("checkov not installed (set CHECKOV=/path/to/checkov); test_iam_least_privilege still runs")
    result = subprocess.run(
        [checkov, "-f", str(template_path()), "--compact", "--quiet", "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['resource']}"
        for report in reports
        if isinstance(report, dict)
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, failed


def test_sam_cli_validates_and_builds_the_zip_functions(tmp_path: Path) -> None:
    """The SAM CLI itself, where it is installed (``SAM=/path/to/sam``; scripts/setup-sam puts it in
    a venv of its own): ``sam validate --lint``, then ``sam build`` of each zip function from the API's
    package as scripts/build-api makes it. The image functions' builds (the Lambda worker, the
    dead-letter sweeper) need a Docker engine, which is not here: they are left out by name."""
    sam = os.environ.get("SAM") or _tool("sam")
    if not sam:
        pytest.skip("the SAM CLI is not installed (set SAM=/path/to/sam); the translator test still runs")
    sam = os.path.abspath(sam)  # the builds run in tmp_path
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    template = tmp_path / "template.yaml"
    shutil.copy(template_path(), template)
    validated = subprocess.run(
        [sam, "validate", "--lint", "-t", str(template)], capture_output=True, text=True, timeout=300, env=env
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    root = template_path().parent
    built = subprocess.run(
        [str(root / "scripts" / "build-api"), str(tmp_path / "build" / "api")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    zip_functions = {
        name: resource["Properties"]
        for name, resource in load_template()["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function" and resource["Properties"].get("PackageType") == "Zip"
    }
    assert set(zip_functions) >= {"HttpApiFunction", "NotifierFunction"}
    for name, properties in zip_functions.items():
        out = tmp_path / "sam-build" / name
        done = subprocess.run(
            [sam, "build", name, "-t", str(template), "--build-dir", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        module, _, function = properties["Handler"].rpartition(".")
        handler = out / name / (module.replace(".", "/") + ".py")
        assert f"def {function}(" in handler.read_text(encoding="utf-8"), f"{name}: no {properties['Handler']}"
        assert not (out / name / "torch").exists()  # the API's slim package, no model runtime


def _skips(resource: dict[str, Any]) -> list[dict[str, Any]]:
    skips: list[dict[str, Any]] = (resource.get("Metadata") or {}).get("checkov", {}).get("skip", [])
    return skips


def test_every_security_skip_is_justified() -> None:
    for logical_id, resource in load_template()["Resources"].items():
        for skip in _skips(resource):
            assert len(str(skip.get("comment", "")).strip()) > 30, f"{logical_id}: {skip.get('id')} lacks a reason"


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The policy's statements; a conditional one (Fn::If) counts with its statement branch."""
    statements = document["Statement"]
    listed = statements if isinstance(statements, list) else [statements]
    return [s["Fn::If"][1] if "Fn::If" in s else s for s in listed]


def test_iam_least_privilege() -> None:
    """The security pass that always runs: no wildcard actions, no Allow on every resource (but the
    one action that has no resource: ecr:GetAuthorizationToken), roles only for what needs them."""
    template = load_template()
    roles = {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    assert set(roles) == {
        "HttpApiFunctionRole",
        "LambdaWorkerRole",
        "DeadLetterSweeperRole",
        "NotifierRole",
        "GpuInstanceRole",
        "GpuTaskExecutionRole",
        "GpuTaskRole",
    }
    for logical_id, role in roles.items():
        for policy in role["Properties"].get("Policies", []):
            for statement in _statements(policy["PolicyDocument"]):
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert statement["Effect"] == "Allow"
                assert not any("*" in a for a in actions), f"{logical_id}: wildcard action {actions}"
                if statement["Resource"] == "*":
                    assert actions == ["ecr:GetAuthorizationToken"], f"{logical_id}: {actions} on every resource"
    # The API never reads the queue nor the weights; the workers never presign uploads (PutObject).
    api = json.dumps(roles["HttpApiFunctionRole"]["Properties"]["Policies"])
    assert "sqs:" not in api and "ModelWeightsUri" not in api
    for worker in ("LambdaWorkerRole", "GpuTaskRole"):
        assert "s3:PutObject" not in json.dumps(roles[worker]["Properties"]["Policies"])
    # The dead-letter sweeper reads parked messages and ends jobs: nothing else.
    sweeper = json.dumps(roles["DeadLetterSweeperRole"]["Properties"]["Policies"])
    assert "s3:" not in sweeper and "sqs:DeleteMessage" not in sweeper and "JobQueue" not in sweeper
    # The notifier reads notices and job records, and writes delivery records: no object, no work queue.
    notifier = json.dumps(roles["NotifierRole"]["Properties"]["Policies"])
    assert "s3:" not in notifier and "JobQueue" not in notifier and "dynamodb:PutItem" not in notifier
    # Only the task's execution role reads the database secret (the functions get it resolved at deploy).
    secret_readers = [k for k, r in roles.items() if "secretsmanager:GetSecretValue" in json.dumps(r)]
    assert secret_readers == ["GpuTaskExecutionRole"]


# --- the SAM transform -----------------------------------------------------------------------------


def test_sam_translator_produces_cloudformation() -> None:
    cfn = translate(packaged_template())
    resources = cfn["Resources"]
    assert not any(r["Type"].startswith("AWS::Serverless::") for r in resources.values())
    api = resources["HttpApiFunction"]["Properties"]
    assert (api["Runtime"], api["Handler"], api["PackageType"]) == ("python3.12", "functions.http_api.handler", "Zip")
    assert api["Code"] == {"S3Bucket": ARTIFACTS_BUCKET, "S3Key": API_ZIP_KEY}
    assert resources["HttpApi"]["Type"] == "AWS::ApiGatewayV2::Api"
    worker = resources["LambdaWorkerFunction"]
    assert worker["Condition"] == "IsLambdaWorker"
    assert worker["Properties"]["PackageType"] == "Image"
    assert worker["Properties"]["Code"] == {"ImageUri": WORKER_IMAGE}
    assert "Handler" not in worker["Properties"] and "Runtime" not in worker["Properties"]
    mapping = resources["LambdaWorkerFunctionJobs"]
    assert mapping["Type"] == "AWS::Lambda::EventSourceMapping"
    assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["Properties"]["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "WorkerMaxConcurrency"}}
    assert {"BatchSize", "MaximumBatchingWindowInSeconds"} <= set(mapping["Properties"])
    metadata = load_template()["Resources"]["LambdaWorkerFunction"]["Metadata"]
    assert (metadata["Dockerfile"], metadata["DockerContext"]) == ("worker_image/lambda.Dockerfile", ".")
    gpu = resources["GpuTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert gpu["ResourceRequirements"] == [{"Type": "GPU", "Value": "1"}]
    assert gpu["Secrets"] == [{"Name": "DATABASE_URL", "ValueFrom": {"Ref": "DatabaseSecretArn"}}]
    for logical_id in ("GpuCluster", "GpuAutoScalingGroup", "GpuCapacityProvider", "GpuWorkerService"):
        assert resources[logical_id]["Condition"] == "IsEcsWorker"
    assert resources["GpuAutoScalingGroup"]["Properties"]["MinSize"] == "0"
    assert resources["GpuWorkerScalableTarget"]["Properties"]["MinCapacity"] == 0
    notifier = resources["NotifierFunction"]
    assert notifier["Condition"] == "HasWebhookSecret"
    assert notifier["Properties"]["Code"] == {"S3Bucket": ARTIFACTS_BUCKET, "S3Key": API_ZIP_KEY}
    assert notifier["Properties"]["Handler"] == "functions.notifier.handler"
    notices = resources["NotifierFunctionNotices"]["Properties"]
    assert notices["EventSourceArn"] == {"Fn::GetAtt": ["NotifyQueue", "Arn"]}
    assert notices["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


# --- deployed into moto's CloudFormation -------------------------------------------------------------


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")


@pytest.mark.parametrize("flavour", ["lambda", "ecs"])
def test_deploys_into_moto(moto_server: Any, flavour: str) -> None:
    endpoint = moto_server.endpoint
    s3, sqs, dynamodb = (_client(n, endpoint) for n in ("s3", "sqs", "dynamodb"))
    ec2, ssm, secrets, cloudformation = (
        _client(n, endpoint) for n in ("ec2", "ssm", "secretsmanager", "cloudformation")
    )
    stack_name = f"visionq-{flavour}-{os.getpid()}"

    # What `sam package` uploads, and what the deployment expects to exist already.
    if ARTIFACTS_BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=ARTIFACTS_BUCKET)
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("functions/http_api.py", "def handler(event, context):\n    return {}\n")
    s3.put_object(Bucket=ARTIFACTS_BUCKET, Key=API_ZIP_KEY, Body=code.getvalue())
    secret_arn = secrets.create_secret(Name=f"{stack_name}/database-url", SecretString="postgresql://db/visionq")["ARN"]
    # Webhooks on in one flavour only: the notifier is created with a signing secret, and not without.
    webhook_arn = secrets.create_secret(Name=f"{stack_name}/webhooks", SecretString="signing")["ARN"]
    ami_parameter = f"/{stack_name}/gpu-ami"  # stands in for AWS's public ECS GPU AMI parameter
    ssm.put_parameter(Name=ami_parameter, Value=ec2.describe_images()["Images"][0]["ImageId"], Type="String")
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    group = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
    parameters = {
        "WorkerFlavour": flavour,
        "DatabaseSecretArn": secret_arn,
        "ModelWeightsUri": "s3://visionq-models/yolo11n.pt",
        "SubnetIds": ",".join(subnets),
        "SecurityGroupIds": group,
        "GpuAmiId": ami_parameter,
        "WorkerImageUri": GPU_IMAGE if flavour == "ecs" else "",
        "WebhookSecretArn": webhook_arn if flavour == "lambda" else "",
    }
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(translate(packaged_template())),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    cloudformation.get_waiter("stack_create_complete").wait(
        StackName=stack_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert {"ApiUrl", "Bucket", "QueueUrl", "DeadLetterQueueUrl", "NotifyQueueUrl", "JobsTable"} <= set(outputs)
    created = {
        r["LogicalResourceId"]: r
        for r in cloudformation.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
        if r["LogicalResourceId"]
    }
    for logical_id in ("UploadBucket", "JobQueue", "DeadLetterQueue", "NotifyQueue", "JobsTable", "HttpApiFunction"):
        assert created[logical_id]["ResourceStatus"] == "CREATE_COMPLETE"
    assert ("NotifierFunction" in created) == (flavour == "lambda")
    worker_resources = (
        {"LambdaWorkerFunction", "LambdaWorkerFunctionJobs", "LambdaWorkerRole", "DeadLetterSweeperFunction"}
        if flavour == "lambda"
        else {"GpuCluster", "GpuLaunchTemplate", "GpuAutoScalingGroup", "GpuTaskDefinition", "GpuWorkerService"}
    )
    assert worker_resources <= set(created)
    other = "Gpu" if flavour == "lambda" else "LambdaWorker"
    assert not any(k.startswith(other) for k in created), "the other flavour's resources were created"

    # The bucket, the queues with their redrive, the table: as template_settings reads them.
    from infra.template_settings import template_settings

    settings = template_settings()
    assert outputs["Bucket"] == f"{stack_name}-uploads-123456789012"
    s3.head_bucket(Bucket=outputs["Bucket"])
    queue = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["All"])["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=outputs["DeadLetterQueueUrl"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(queue["RedrivePolicy"])
    assert redrive == {"deadLetterTargetArn": dlq["QueueArn"], "maxReceiveCount": settings.max_receive_count}
    assert int(queue["VisibilityTimeout"]) == settings.visibility_timeout
    assert int(dlq["MessageRetentionPeriod"]) == settings.dead_letter_retention_seconds
    table = dynamodb.describe_table(TableName=outputs["JobsTable"])["Table"]
    assert table["KeySchema"] == list(settings.table.key_schema)
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["by_object", "by_batch", "by_owner"]
    notify = sqs.get_queue_attributes(QueueUrl=outputs["NotifyQueueUrl"], AttributeNames=["All"])["Attributes"]
    assert int(notify["VisibilityTimeout"]) == settings.notify_visibility_timeout

    if flavour == "lambda":
        function = created["LambdaWorkerFunction"]["PhysicalResourceId"]
        (mapping,) = _client("lambda", endpoint).list_event_source_mappings(FunctionName=function)[
            "EventSourceMappings"
        ]
        assert mapping["EventSourceArn"] == queue["QueueArn"]
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        config = _client("lambda", endpoint).get_function_configuration(FunctionName=function)
        # (moto's CloudFormation does not pass PackageType on; the translation test checks it)
        assert config["Environment"]["Variables"]["VISIONQ_QUEUE_URL"] == outputs["QueueUrl"]
    else:
        ecs = _client("ecs", endpoint)
        task = ecs.describe_task_definition(taskDefinition=created["GpuTaskDefinition"]["PhysicalResourceId"])
        (container,) = task["taskDefinition"]["containerDefinitions"]
        assert container["image"] == GPU_IMAGE
        assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
        groups = _client("autoscaling", endpoint).describe_auto_scaling_groups(
            AutoScalingGroupNames=[created["GpuAutoScalingGroup"]["PhysicalResourceId"]]
        )["AutoScalingGroups"]
        assert groups[0]["MinSize"] == 0

    cloudformation.delete_stack(StackName=stack_name)
