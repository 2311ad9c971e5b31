# syntax=docker/dockerfile:1
# The GPU worker: `visionq worker` (src/visionq/worker.py) on a CUDA machine, e.g. an ECS task on
# a GPU EC2 instance. Build from the repository root:
#   docker build -f worker_image/gpu.Dockerfile -t visionq-worker-gpu .
# Model weights are not in the image: VISIONQ_MODEL (or the registry VISIONQ_MODELS_FILE names)
# points at s3:// URIs, fetched once at start into VISIONQ_WEIGHTS_CACHE (src/visionq/models/weights.py).

# torch 2.14.1 from PyPI is the CUDA 13.0 build (its CUDA libraries come as nvidia-* wheels); the
# base image matches it and carries what the NVIDIA container runtime expects. Ubuntu 24.04 has no
# Python 3.11 package: a standalone CPython 3.11 (python-build-standalone, through uv) is used.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
ARG PYTHON_VERSION=3.11

FROM ghcr.io/astral-sh/uv:0.9.9 AS uv

# --- builder: the interpreter and a virtual environment with the dependencies ---------------------
FROM ${CUDA_IMAGE} AS builder
ARG PYTHON_VERSION
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}" \
    && "$(uv python find "${PYTHON_VERSION}")" -m venv /opt/venv
WORKDIR /src

# Dependencies first, from the project's metadata and pins only: this layer (gigabytes, torch and
# CUDA) is rebuilt when pyproject.toml or constraints.txt change, not when the code does.
COPY pyproject.toml constraints.txt ./
RUN /opt/venv/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['worker']))" > requirements.txt \
    && /opt/venv/bin/pip install -c constraints.txt -r requirements.txt

# --- app: the visionq wheel (no dependencies: they are above) ------------------------------------
FROM builder AS app
COPY README.md ./
COPY src ./src
COPY functions ./functions
COPY infra ./infra
COPY template.yaml ./
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /dist .

# --- runtime ----------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime

# OpenCV (imported by Ultralytics) needs libGL and GLib.
# DL3008 (pin apt versions): the packages follow the base image's release; the image is pinned by
# its tag (pin a digest for reproducible builds), and pinned apt versions break when Ubuntu
# supersedes them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0t64 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/visionq --shell /usr/sbin/nologin visionq \
    && install -d -o visionq -g visionq /var/cache/visionq/weights /var/cache/visionq/huggingface /var/cache/visionq/ultralytics

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VISIONQ_WEIGHTS_CACHE=/var/cache/visionq/weights \
    VISIONQ_READY_FILE=/tmp/visionq-ready \
    HF_HOME=/var/cache/visionq/huggingface \
    YOLO_CONFIG_DIR=/var/cache/visionq/ultralytics \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The interpreter and the dependencies (cached unless they change), then the app (small).
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
RUN --mount=type=bind,from=app,source=/dist,target=/dist \
    pip install --no-deps --no-cache-dir --disable-pip-version-check /dist/visionq-*.whl

USER 10001:10001
WORKDIR /home/visionq

# Healthy once the models are loaded (the worker creates VISIONQ_READY_FILE then, and removes it
# when it stops) and while the worker (PID 1) is alive. Loading weights from S3 takes a while.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["/bin/sh", "-c", "test -f \"$VISIONQ_READY_FILE\" && kill -0 1"]

# SIGTERM (ECS stop, spot interruption) stops receiving; messages in hand finish first, within
# VISIONQ_SHUTDOWN_GRACE_SECONDS (keep the ECS stopTimeout above it).
STOPSIGNAL SIGTERM
ENTRYPOINT ["visionq", "worker"]
