"""The API Lambda function's package (scripts/build-api), built as `sam build` would find it: small,
free of the model runtimes, importable on its own, and answering an API Gateway HTTP API event.

Needs the package registry (pip downloads Linux wheels for the Lambda runtime's Python); about
a minute. The import check runs the built package itself when a Python of the Lambda runtime's
version (3.12) is on this machine; otherwise it builds the same dependency set for this
interpreter's version and says so.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAMBDA_PYTHON = "3.12"  # template.yaml: Runtime python3.12
LAMBDA_UNZIPPED_LIMIT = 250 * 1000 * 1000  # "250 MB": the smaller reading of AWS's quota
# Neither these packages nor their distributions may be in the API's code.
WORKER_ONLY = ("torch", "torchvision", "ultralytics", "transformers", "onnxruntime", "onnx", "numpy", "PIL", "nvidia")

pytestmark = pytest.mark.timeout(900)


def build(out: Path, python_version: str) -> str:
    env = {**os.environ, "API_PYTHON_VERSION": python_version}
    done = subprocess.run(
        [str(ROOT / "scripts" / "build-api"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"scripts/build-api failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def interpreter(version: str) -> str | None:
    """A Python of ``version`` on this machine (API_PYTHON, pythonX.Y on PATH, pyenv), else None."""
    candidates = [os.environ.get("API_PYTHON", ""), f"python{version}"]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    return None


def tree_bytes(path: Path) -> int:
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() or f.is_symlink())


@pytest.fixture(scope="module")
def api_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build") / "api"
    build(out, LAMBDA_PYTHON)
    return out


def test_the_api_package_is_small_and_has_no_model_runtime(api_package: Path) -> None:
    size = tree_bytes(api_package)
    print(f"\nAPI package ({LAMBDA_PYTHON}, manylinux x86_64): {size / 1e6:.1f} MB unzipped")
    assert size < LAMBDA_UNZIPPED_LIMIT, f"{size / 1e6:.1f} MB unzipped: over Lambda's 250 MB"
    entries = {p.name.lower() for p in api_package.iterdir()}
    found = sorted(
        name
        for name in entries
        for banned in WORKER_ONLY
        if name == banned.lower() or name.startswith(banned.lower().replace("-", "_") + "-")
    )
    assert not found, f"worker-only packages in the API package: {found}"
    for needed in ("functions", "visionq", "fastapi", "mangum", "boto3", "psycopg", "pydantic_core"):
        assert needed in entries, f"{needed} is missing from the API package"
    # Wheels for the Lambda runtime, not for this machine.
    assert list(api_package.glob(f"pydantic_core/_pydantic_core.cpython-{LAMBDA_PYTHON.replace('.', '')}-x86_64-*.so"))


# Run in a fresh interpreter with nothing but the package on its path (-S: no site-packages; Lambda
# puts /var/task on PYTHONPATH the same way): the cold import of the handler's module, then a
# request shaped after AWS's documented HTTP API payload 2.0 sample.
PROBE = textwrap.dedent(
    """
    import importlib.util, json, sys, time
    started = time.perf_counter()
    import functions.http_api
    import_s = time.perf_counter() - started
    present = [m for m in %(worker_only)r if importlib.util.find_spec(m) is not None]
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(%(worker_only)r))
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/healthz",
        "rawQueryString": "",
        "cookies": [],
        "headers": {
            "accept": "application/json",
            "host": "abcdef1234.execute-api.us-east-1.amazonaws.com",
            "user-agent": "curl/8.5.0",
            "x-amzn-trace-id": "Root=1-65f0b2c1-0123456789abcdef01234567",
            "x-api-key": "vq_not_a_real_key",
            "x-forwarded-for": "192.0.2.1",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abcdef1234",
            "domainName": "abcdef1234.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abcdef1234",
            "http": {
                "method": "GET",
                "path": "/healthz",
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "curl/8.5.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "10/Mar/2024:19:03:58 +0000",
            "timeEpoch": 1710097438390,
        },
        "isBase64Encoded": False,
    }
    started = time.perf_counter()
    answer = functions.http_api.handler(event, None)
    first_s = time.perf_counter() - started
    print(json.dumps({"import_s": import_s, "first_request_s": first_s, "present": present,
                      "loaded": loaded, "python": sys.version.split()[0], "answer": answer}))
    """
)


def test_the_handler_imports_cold_and_answers_an_http_api_event(
    api_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    python = interpreter(LAMBDA_PYTHON)
    package = api_package
    how = f"the built package, Python {LAMBDA_PYTHON}"
    if python is None:
        version = "{}.{}".format(*sys.version_info[:2])
        package = tmp_path_factory.mktemp("build-local") / "api"
        build(package, version)
        python = sys.executable
        how = f"no Python {LAMBDA_PYTHON} here: the same dependency set built for Python {version}"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(package),
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "VISIONQ_BUCKET": "visionq-uploads",
        "VISIONQ_JOBS_TABLE": "visionq-jobs",
    }
    probe = PROBE % {"worker_only": WORKER_ONLY}
    runs = []
    for _ in range(3):  # the first may pay for a cold page cache; all three are fresh interpreters
        done = subprocess.run(
            [python, "-S", "-c", probe],
            env=env,
            cwd=tmp_path_factory.mktemp("cwd"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = runs[0]
    assert result["present"] == [], f"worker-only packages importable: {result['present']}"
    assert result["loaded"] == []
    answer = result["answer"]
    assert answer["statusCode"] == 200, answer
    assert json.loads(answer["body"])["status"] == "ok"
    imports = sorted(run["import_s"] * 1000 for run in runs)
    firsts = sorted(run["first_request_s"] * 1000 for run in runs)
    print(
        f"\ncold import of functions.http_api ({how}, Python {result['python']}): "
        f"{imports[1]:.0f} ms median of 3 ({', '.join(f'{t:.0f}' for t in imports)}); "
        f"first request (app built: boto3 clients, registry): {firsts[1]:.0f} ms median"
    )
