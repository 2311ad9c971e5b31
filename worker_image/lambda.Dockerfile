# syntax=docker/dockerfile:1
# The Lambda worker: functions/sqs_worker.handler behind an SQS event source, CPU only (Lambda has
# no GPU). Build from the repository root:
#   docker build -f worker_image/lambda.Dockerfile -t visionq-worker-lambda .
# Model weights are not in the image: VISIONQ_MODEL / VISIONQ_MODELS_FILE name s3:// URIs, fetched
# on a cold start into VISIONQ_WEIGHTS_CACHE under /tmp (the only writable path; size it with the
# function's ephemeral storage) and reused while the execution environment lives.
ARG LAMBDA_IMAGE=public.ecr.aws/lambda/python:3.12

# --- deps: the dependencies, CPU builds of torch/torchvision ---------------------------------------
FROM ${LAMBDA_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /build
# From the project's metadata and pins only: rebuilt when pyproject.toml or constraints.txt change,
# not when the code does. torch/torchvision come from PyTorch's CPU index (the "+cpu" builds, no
# CUDA libraries: about 1 GB less than PyPI's), everything else from PyPI.
COPY pyproject.toml constraints.txt ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['worker']))" > requirements.txt \
    && pip install --target /opt/deps \
        --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
        -c constraints.txt -r requirements.txt torch==2.14.1+cpu torchvision==0.29.1+cpu \
    && rm -rf /opt/deps/bin

# --- app: visionq itself (no dependencies: they are above) ----------------------------------------
FROM deps AS app
COPY README.md ./
COPY src ./src
COPY functions ./functions
COPY infra ./infra
COPY template.yaml ./
RUN pip install --no-deps --target /opt/app . \
    && rm -rf /opt/app/bin

# --- runtime --------------------------------------------------------------------------------------
FROM ${LAMBDA_IMAGE}

# OpenCV (imported by Ultralytics) needs libGL and GLib.
# DL3041 (pin dnf versions): the packages follow the base image's Amazon Linux 2023 release; the
# image is pinned by its tag (pin a digest for reproducible builds).
# hadolint ignore=DL3041
RUN dnf install -y mesa-libGL glib2 \
    && dnf clean all

# Lambda's file system is read-only but /tmp: every cache the worker or its libraries write lives there.
ENV VISIONQ_WEIGHTS_CACHE=/tmp/visionq-weights \
    HF_HOME=/tmp/huggingface \
    YOLO_CONFIG_DIR=/tmp/ultralytics \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1

# The dependencies (cached unless they change), then the app (small).
COPY --from=deps /opt/deps ${LAMBDA_TASK_ROOT}
COPY --from=app /opt/app ${LAMBDA_TASK_ROOT}

CMD ["functions.sqs_worker.handler"]
