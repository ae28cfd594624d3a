#!/usr/bin/env bash
# Builds ggml's CPU backend (libggml-base, libggml-cpu) for pollama's ctypes layer
# (pollama/ml/ggml/lib.py) into DEST.
#
#   build.sh DEST [PORTABLE_DEST]
#
# DEST gets a native build: ggml compiled for this machine's CPU (-march=native), the way a
# user's own llama.cpp build runs. It is made here, on the user's machine, and never cached
# where another machine could read it; lib.py refuses it on a CPU that lacks its features.
# PORTABLE_DEST, if given, gets a second build for a baseline every x86-64 CPU of the last
# decade has (AVX2/FMA/F16C), the flags llama.cpp's reference outputs in ../shared were made
# with: the tests check logits exactly against them there.
#
# No AMX code in either: ggml's AMX kernels crash on batched prompts on these VMs.
#
# The source is ggml 0.25.3 as vendored by llama.cpp in the llama-cpp-python 0.3.36 sdist on
# PyPI (the registry is the only network this project may assume), checked by its sha256.
set -euo pipefail

DEST=${1:?usage: build.sh DEST [PORTABLE_DEST]}
PORTABLE_DEST=${2:-}
SDIST=llama_cpp_python-0.3.36.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
PY=${PYTHON:-python3}

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PY" -m pip download -q --no-cache-dir --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$work" 2>/dev/null \
    || "$PY" -m pip download -q --no-cache-dir --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$work"
echo "$SDIST_SHA256  $work/$SDIST" | sha256sum -c --quiet -
# Only ggml is needed: 2,000 of the sdist's files.
tar xzf "$work/$SDIST" -C "$work" llama_cpp_python-0.3.36/vendor/llama.cpp/ggml
src=$work/llama_cpp_python-0.3.36/vendor/llama.cpp/ggml
# The vendored copy leaves out the pkg-config template ggml's CMakeLists configures.
[ -f "$src/ggml.pc.in" ] || : > "$src/ggml.pc.in"

NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
COMMON=(
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON
    -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF -DGGML_CCACHE=OFF
    -DGGML_BACKEND_DL=OFF -DGGML_CPU_REPACK=ON -DGGML_LLAMAFILE=ON -DGGML_OPENMP=ON
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    "-DCMAKE_INSTALL_RPATH=\$ORIGIN" -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON
)
JOBS=$(nproc 2>/dev/null || echo 2)

build() {  # build NAME DEST CMAKE_ARGS...
    local name=$1 dest=$2
    shift 2
    CFLAGS="$NO_AMX" CXXFLAGS="$NO_AMX" cmake -S "$src" -B "$work/build-$name" "${COMMON[@]}" "$@" >/dev/null
    cmake --build "$work/build-$name" -j"$JOBS" --target ggml-base ggml-cpu >/dev/null
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    find "$work/build-$name" \( -name 'libggml-base.so*' -o -name 'libggml-cpu.so*' \) -exec cp -a {} "$dest.tmp/" \;
    printf 'version: 0.25.3\nvariant: %s\nfeatures: %s\n' "$name" "$("$PY" "$here/../cpu.py" "$name")" > "$dest.tmp/BUILD"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
}

build native "$DEST" -DGGML_NATIVE=ON
if [ -n "$PORTABLE_DEST" ]; then
    build portable "$PORTABLE_DEST" -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
        -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF
fi
