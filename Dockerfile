# Hearth's API image for docker-compose.yml (profile `compose`: Ollama, MongoDB, Chroma server).
# Two stages: `build` installs the project into a virtual environment, with whatever compilers
# a source-only dependency needs; the final stage copies that environment alone, so it holds
# no compilers. llama-cpp-python is not installed: the compose profile talks to Ollama.
# Base images are pinned to exact versions; scripts/check_deploy.py checks it.
#
# No `# syntax=` line: it would make BuildKit fetch a frontend image from a registry before
# the build starts. The engine's own frontend has everything used here (RUN --mount).
#
# Build arguments, for machines that cannot reach Docker Hub or PyTorch's index; the defaults
# are what `docker compose build` uses everywhere else:
#   BASE_IMAGE       the Python base of both stages: the official, pinned slim image.
#                    scripts/compose-test.sh passes one built locally from Debian's packages.
#   TORCH_WHEELS     an image with a CPU torch wheel (torch-2.13.0+cpu-*.whl) at its root,
#                    installed instead of one from TORCH_INDEX_URL. Default `scratch`: none.
#   TORCH_INDEX_URL  where torch comes from otherwise: PyTorch's CPU-only index (from PyPI,
#                    torch brings gigabytes of CUDA libraries).
ARG BASE_IMAGE=python:3.11.15-slim-bookworm
ARG TORCH_WHEELS=scratch

FROM ${TORCH_WHEELS} AS torch-wheels


FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# CPU-only torch first; the project's `torch==2.13.0` is then already satisfied by 2.13.0+cpu.
# pip's cache is a BuildKit cache mount: a rebuild downloads nothing again, and the cache never
# lands in a layer.
RUN --mount=type=bind,from=torch-wheels,target=/torch-wheels \
    --mount=type=cache,target=/root/.cache/pip \
    set -e; \
    wheel=$(ls /torch-wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n 1); \
    if [ -n "$wheel" ]; then \
        echo "torch: the given wheel $wheel"; pip install "$wheel"; \
    else \
        pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    fi

# The dependencies first, read from pyproject.toml alone (its dependencies and the `ingest`,
# `otel` and `onnx` extras: traces stay off until HEARTH_OTLP_ENDPOINT names a collector, and
# HEARTH_EMBEDDING_RUNTIME=onnx exports on first use), so that this long layer is rebuilt only
# when they change, not on every code change.
# unstructured (PDFs) pulls in torchvision, whose PyPI build does not match the CPU torch and
# breaks sentence-transformers; Hearth does not use it (as in scripts/bootstrap.sh).
COPY pyproject.toml constraints.txt /src/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['ingest'] \
+ p['optional-dependencies']['otel'] + p['optional-dependencies']['onnx']))" >/tmp/requirements.txt \
    && pip install -c /src/constraints.txt -r /tmp/requirements.txt \
    && if pip show torchvision >/dev/null 2>&1; then pip uninstall -y torchvision; fi

# Then Hearth itself, from the whole build context (.dockerignore keeps tests, data, weights,
# caches and .git out), so that every module and package pyproject.toml installs is there,
# however the tree is laid out; as a wheel, not editable: /src is not in the final image.
COPY . /src
RUN pip install --no-deps /src


FROM ${BASE_IMAGE}

# Everything the app needs ships in the image: a model hub lookup must fail fast, not hang,
# and unstructured must not phone home. What Hearth writes of models (the ONNX export of the
# embedding model, HEARTH_EMBEDDING_RUNTIME=onnx) goes on the data volume: /app is the
# image's, and not the hearth user's to write.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    DO_NOT_TRACK=true \
    ANONYMIZED_TELEMETRY=False \
    HEARTH_PROFILE=compose \
    HEARTH_DATA_DIR=/data \
    HEARTH_MODELS_DIR=/data/models

# Shared libraries (no compilers) that PDF ingestion loads: unstructured imports OpenCV, whose
# wheel links libGL and GLib (ImportError: libGL.so.1 without them); libmagic for file types.
# And the OCR of scanned PDF pages (ingest/ocr.py): poppler's pdftoppm renders a page,
# tesseract reads it, in English.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 libmagic1 \
        poppler-utils tesseract-ocr tesseract-ocr-eng \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid, so that bind-mounted folders can be made readable to it (docs/docker.md).
RUN groupadd --system --gid 10001 hearth \
    && useradd --system --uid 10001 --gid hearth --create-home --home-dir /home/hearth hearth \
    && mkdir -p /data \
    && chown hearth:hearth /data

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Hearth's own user guide, indexed on first run.
COPY docs/ docs/
COPY docker/healthcheck.py docker/healthcheck.py

USER hearth
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=5 \
    CMD ["python", "/app/docker/healthcheck.py"]
CMD ["hearth", "serve"]
