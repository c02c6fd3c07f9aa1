# syntax=docker/dockerfile:1
# Hearth's API image for docker-compose.yml (profile `compose`: Ollama, MongoDB, Chroma server).
# Two stages: `build` installs the project into a virtual environment, with whatever compilers
# a source-only dependency needs; the final stage copies that environment alone, so it holds
# no compilers. llama-cpp-python is not installed: the compose profile talks to Ollama.
# Base images are pinned to exact versions; scripts/check_deploy.py checks it.

FROM python:3.11.15-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# CPU-only torch from PyTorch's own index, first: from PyPI, torch brings gigabytes of CUDA
# libraries. The project's `torch==2.13.0` is then already satisfied by 2.13.0+cpu.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY *.py ./
COPY ingest/ ingest/
COPY evaluation/ evaluation/
COPY webui/ webui/
COPY models/catalog.json models/
# unstructured (PDFs) pulls in torchvision, whose PyPI build does not match the CPU torch and
# breaks sentence-transformers; Hearth does not use it (as in scripts/bootstrap.sh).
RUN pip install -c constraints.txt ".[ingest]" \
    && if pip show torchvision >/dev/null 2>&1; then pip uninstall -y torchvision; fi


FROM python:3.11.15-slim-bookworm

# Everything the app needs ships in the image: a model hub lookup must fail fast, not hang,
# and unstructured must not phone home.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    DO_NOT_TRACK=true \
    HEARTH_PROFILE=compose \
    HEARTH_DATA_DIR=/data

# Shared libraries (no compilers) that PDF ingestion loads: unstructured imports OpenCV, whose
# wheel links libGL and GLib (ImportError: libGL.so.1 without them); libmagic for file types.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 libmagic1 \
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
