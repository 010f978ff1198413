# CPU serving image: FastAPI + ONNX Runtime + tokenizers. No torch, no compilers in the final stage.
#   docker build -t fastformers-serve:cpu .
#   docker run -p 8000:8000 -v "$PWD/models:/models:ro" --cpus 4 fastformers-serve:cpu
# BASE_IMAGE is overridable so the image can be built offline from a local Python 3.11 base.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Behind a TLS-intercepting proxy: mount its CA bundle into the build and name it here
# (deploy/container-check.sh does this when the host sets PIP_CERT). Unset otherwise.
ARG PIP_CERT
# A virtual environment works on the official image and on a plain Debian base (python3 only).
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY contract ./contract
COPY loadtest ./loadtest
# The serve extra only: onnxruntime, tokenizers, FastAPI/uvicorn, prometheus-client (see pyproject).
# hadolint ignore=DL3013  # the project itself; its dependency ranges are in pyproject.toml
RUN pip install --no-cache-dir ".[serve,grpc]" \
    && pip uninstall --yes pip setuptools \
    && find /opt/venv -name "__pycache__" -type d -prune -exec rm -rf {} +

FROM ${BASE_IMAGE} AS serve
RUN groupadd --gid 10001 ffs \
    && useradd --no-log-init --uid 10001 --gid ffs --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin ffs \
    && mkdir /models && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv
# Listen on all interfaces inside the container; the worker count follows the CPU quota
# (`--cpus`), not the host's core count (app/runtime/cpu_quota.py).
# hadolint ignore=DL3064  # TOKENIZERS_PARALLELISM is no secret, only a name with TOKEN in it
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    FFS_HOST=0.0.0.0 \
    FFS_PORT=8000 \
    FFS_MODEL_REPOSITORY=/models \
    FFS_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000
VOLUME ["/models"]
# Ready means every task's workers answer; a draining server (SIGTERM) reports unhealthy at once.
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; u = 'http://127.0.0.1:%s/readyz' % os.environ.get('FFS_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(u, timeout=2).status == 200 else 1)"]
ENTRYPOINT ["python3", "-m", "app"]
