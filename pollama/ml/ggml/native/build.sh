#!/usr/bin/env bash
# Builds ggml's CPU backend (libggml-base, libggml-cpu) for pollama's ctypes layer
# (pollama/ml/ggml/lib.py) into DEST.
#
#   build.sh DEST [PORTABLE_DEST]
#   build.sh --vulkan DEST
#
# DEST gets a native build: ggml compiled for this machine's CPU (-march=native), the way a
# user's own llama.cpp build runs. It is made here, on the user's machine, and never cached
# where another machine could read it; lib.py refuses it on a CPU that lacks its features.
# PORTABLE_DEST, if given, gets a second build for a baseline every x86-64 CPU of the last
# decade has (AVX2/FMA/F16C), the flags llama.cpp's reference outputs in ../shared were made
# with: the tests check logits exactly against them there.
#
# --vulkan builds a full set into DEST instead: the native CPU libraries as above plus
# libggml-vulkan (GPUs of every vendor; Mesa's lavapipe on a machine without one). It needs the
# Vulkan headers and loader, glslc and SPIR-V headers (Debian: libvulkan-dev glslc
# spirv-headers; ./setup.sh --vulkan installs them), and compiles with
# vk_layer_settings_compat.h force-included, which lets ggml's Vulkan code build against
# Vulkan headers older than 1.3.261 (Debian 12's); read it for why. The BUILD file then says
# `backends: vulkan`, and lib.py loads the Vulkan library beside the CPU ones.
#
# No AMX code in either: ggml's AMX kernels crash on batched prompts on these VMs.
#
# The source is ggml 0.25.3 as vendored by llama.cpp in the llama-cpp-python 0.3.36 sdist on
# PyPI (the registry is the only network this project may assume), checked by its sha256.
set -euo pipefail

VULKAN=""
if [ "${1:-}" = "--vulkan" ]; then VULKAN=1; shift; fi
DEST=${1:?usage: build.sh DEST [PORTABLE_DEST] | build.sh --vulkan DEST}
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

build() {  # build NAME DEST CMAKE_ARGS... (GPU backends: the GPU_BACKENDS array)
    local name=$1 dest=$2
    shift 2
    local targets=(ggml-base ggml-cpu) files=(-name 'libggml-base.so*' -o -name 'libggml-cpu.so*')
    local backend
    for backend in "${GPU_BACKENDS[@]}"; do
        targets+=("ggml-$backend")
        files+=(-o -name "libggml-$backend.so*")
    done
    CFLAGS="$NO_AMX" CXXFLAGS="$NO_AMX ${EXTRA_CXXFLAGS:-}" cmake -S "$src" -B "$work/build-$name" "${COMMON[@]}" "$@" >/dev/null
    cmake --build "$work/build-$name" -j"$JOBS" --target "${targets[@]}" >/dev/null
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    find "$work/build-$name" \( "${files[@]}" \) -exec cp -a {} "$dest.tmp/" \;
    printf 'version: 0.25.3\nvariant: %s\nfeatures: %s\nbackends: %s\n' "$name" "$("$PY" "$here/../cpu.py" "$name")" \
        "${GPU_BACKENDS[*]}" > "$dest.tmp/BUILD"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
}

GPU_BACKENDS=()
if [ -n "$VULKAN" ]; then
    GPU_BACKENDS=(vulkan)
    EXTRA_CXXFLAGS="-include $here/vk_layer_settings_compat.h" build native "$DEST" -DGGML_NATIVE=ON -DGGML_VULKAN=ON
    exit 0
fi
build native "$DEST" -DGGML_NATIVE=ON
if [ -n "$PORTABLE_DEST" ]; then
    build portable "$PORTABLE_DEST" -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
        -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF
fi
