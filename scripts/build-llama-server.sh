#!/usr/bin/env bash
# Build llama.cpp's own HTTP server (`llama-server`, OpenAI-compatible, with parallel slots)
# from the llama.cpp that llama-cpp-python vendors, once, into a cache outside the work tree.
# The scale-out profile (deploy/scale-out/stack.py, tests/test_scale_out.py) serves its model
# with it; llama-cpp-python's own server answers one request at a time.
#
#   scripts/build-llama-server.sh [PYTHON]    # prints the binary's path
#
# Same version and flags as the embedded engine (scripts/bootstrap.sh): -DGGML_NATIVE=OFF,
# since the native build crashes on CPUs that advertise AMX. Takes 10-25 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${1:-.venv/bin/python}
LLAMA_VERSION=0.3.36
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/hearth
OUT=$CACHE/llama-server-$LLAMA_VERSION-native-off
if [ -x "$OUT/llama-server" ]; then
    echo "$OUT/llama-server"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building llama-server (llama-cpp-python $LLAMA_VERSION's llama.cpp; 10-25 minutes, once)" >&2
"$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-$LLAMA_VERSION.tar.gz -C "$work"
src=$work/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$src" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$OUT"
cp "$work/build/bin/llama-server" "$OUT/llama-server.tmp"
cp "$src/LICENSE" "$OUT/LICENSE"  # llama.cpp is MIT-licensed
mv "$OUT/llama-server.tmp" "$OUT/llama-server"
echo "$OUT/llama-server"
