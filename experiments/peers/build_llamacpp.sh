#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (continuous batching) as a benchmark peer, offline except for
# PyPI: the llama.cpp sources come vendored in the llama-cpp-python source distribution.
# Idempotent: each step is skipped when its output exists. Output: build/bin/llama-server.
# Usage: experiments/peers/build_llamacpp.sh   (about 15 min on 2 cores; set JOBS to change -j)
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="$HERE/build"
PYTHON="${PYTHON:-$HERE/../../.venv/bin/python}"
SRC="$BUILD/llama_cpp_python-$VERSION"
CMAKE_DIR="$BUILD/cmake-llama.cpp"
BIN="$BUILD/bin/llama-server"

mkdir -p "$BUILD/bin"

if [[ -x "$BIN" ]]; then
    echo "already built: $BIN"
    exit 0
fi

SDIST="$(ls "$BUILD"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)"
if [[ -z "$SDIST" ]]; then
    echo "== downloading the llama-cpp-python $VERSION source distribution"
    "$PYTHON" -m pip download --no-binary :all: --no-deps --dest "$BUILD" "llama-cpp-python==$VERSION"
    SDIST="$BUILD/llama_cpp_python-$VERSION.tar.gz"
fi

if [[ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]]; then
    echo "== unpacking $SDIST"
    tar -xzf "$SDIST" -C "$BUILD"
fi

if [[ ! -f "$CMAKE_DIR/CMakeCache.txt" ]]; then
    echo "== configuring"
    # The UI flags keep the build offline: by default it downloads the web UI assets.
    cmake -S "$SRC/vendor/llama.cpp" -B "$CMAKE_DIR" \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF
fi

echo "== building llama-server with -j$JOBS"
cmake --build "$CMAKE_DIR" --target llama-server -j"$JOBS"

BUILT="$(find "$CMAKE_DIR" -type f -name llama-server -perm -u+x | head -n 1)"
[[ -n "$BUILT" ]] || { echo "llama-server not found under $CMAKE_DIR" >&2; exit 1; }
# Shared libraries (if any) are found through the binary's RPATH into the cmake folder.
ln -sf "$BUILT" "$BIN"
echo "built: $BIN"
