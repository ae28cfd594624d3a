"""Real GGUF models on the ggml backend against llama.cpp's own outputs.

The reference was made by llama.cpp on ggml 0.25.3 built for AVX2 (../shared/reference). On
the same ggml built the same way (setup.sh --test builds that portable copy beside the native
one) our logits are llama.cpp's to the 4 decimals it recorded, at every step of all 12
prompts, and every greedy token is its token: test_portable_build_is_exact runs that check in
a child process on the portable libraries.

The native build with flash attention (what pollama runs by default, as llama.cpp does) uses
other kernels for the quantized matmuls (AVX-512 VNNI dot products over differently quantized
activations) and attention, as a llama.cpp built natively would: logits move by up to 1.11
and a greedy choice may differ at a near-tie, a step where llama.cpp's own top two logits are
closer than NEAR_TIE; after it nothing more can be compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from realmodels import REFERENCE_MODELS, real_model
from pollama.debug.steps import StepEngine
from pollama.runner.generation import Done, GenerateOptions
from pollama.runner.parallel import ParallelEngine
from pollama.sample import SamplerOptions

# Measured on the native build: the widest llama.cpp top-2 gap where our greedy choice
# differs is 0.089 (Qwen2.5, "The capital of France is", step 2).
NEAR_TIE = 0.15
# Measured on the native AVX-512 build: worst top-5 logit difference per prompt 0.18-0.87
# without flash attention reading cells in blocks of 32, up to 1.11 (Gemma 3) in blocks of 64
# (kvcache KV_READ_PAD), 0.21-0.93 with flash attention: native rounding, either way.
LOGIT_TOLERANCE = 1.25
# The reference records logits to 4 decimals, so an exact match is within 5e-5 of it.
EXACT_TOLERANCE = 1e-4
GREEDY = SamplerOptions(temperature=0.0, repeat_penalty=1.0)
PORTABLE_LIB_DIR = Path(sys.prefix) / "lib" / "pollama-ggml-portable"


@pytest.fixture(scope="module", params=list(REFERENCE_MODELS))
def engine_and_reference(request, llamacpp_reference):
    path = real_model(request.param)
    with StepEngine(path, backend="ggml", num_ctx=256) as engine:
        yield engine, llamacpp_reference["models"][REFERENCE_MODELS[request.param]]


def compare_greedy(ours: list[int], case: dict, near_tie: float = NEAR_TIE) -> int:
    """Number of steps compared; fails at the first difference that is not a near-tie."""
    for step, (token, top5) in enumerate(zip(ours, case["top5"])):
        if token == top5[0][0]:
            continue
        gap = top5[0][1] - top5[1][1]
        assert gap < near_tie, (
            f"{case['prompt']!r}: step {step} chose {token}, llama.cpp {top5[0][0]} "
            f"(its top-2 gap {gap:.3f} is not a near-tie); ours so far {ours[: step + 1]}, llama.cpp {case['ids']}"
        )
        return step
    assert len(ours) == len(case["ids"]), f"{case['prompt']!r}: {len(ours)} tokens, llama.cpp {len(case['ids'])}"
    return len(ours)


def test_tokenization_matches_llamacpp(engine_and_reference):
    engine, reference = engine_and_reference
    tok = engine.tokenizer
    for case in reference["tokenize"]:
        assert tok.encode(case["text"], add_special=True, parse_special=True) == case["ids_special"], case["text"]
        assert tok.encode(case["text"], add_special=False, parse_special=False) == case["ids_plain"], case["text"]
    for case in reference["generate"]:
        assert tok.encode(case["prompt"]) == case["prompt_ids"], case["prompt"]


def greedy(path: str, reference: dict) -> list[list[int]]:
    """Each prompt's greedy continuation, generated as the server does (the one decode loop,
    drafting by prompt lookup: exact by design), from an empty cache as llama.cpp ran it."""
    out = []
    with ParallelEngine(path, backend="ggml", num_ctx=256) as served:
        for case in reference["generate"]:
            served.forget()
            done = list(served.submit(case["prompt_ids"], GenerateOptions(num_predict=len(case["ids"]), sampler=GREEDY)))[-1]
            assert isinstance(done, Done) and done.prompt_cached == 0
            out.append(done.tokens[len(case["prompt_ids"]) :])
    return out


def test_greedy_continuations_match_llamacpp(engine_and_reference):
    engine, reference = engine_and_reference
    compared = []
    for ours, case in zip(greedy(engine.gguf.path, reference), reference["generate"]):
        compared.append(compare_greedy(ours, case))
    # Near-ties are rare: most steps of most prompts must have been compared.
    assert sum(compared) >= 0.6 * sum(len(c["ids"]) for c in reference["generate"]), compared


def test_logits_close_to_llamacpp_at_every_step(engine_and_reference):
    """Step by step as llama.cpp ran (prefill, then one token at a time), its top-5 logits agree."""
    engine, reference = engine_and_reference
    worst = 0.0
    for case in reference["generate"]:
        engine.reset()  # no prefix reuse: evaluate the prompt in one batch, as llama.cpp did
        logits, _ = engine.prefill(case["prompt_ids"])
        for token, top5 in zip(case["ids"], case["top5"]):
            worst = max(worst, *(abs(float(logits[i]) - value) for i, value in top5))
            logits = engine.decode(token)
    assert worst < LOGIT_TOLERANCE, worst


def measure(path: str, reference: dict) -> list[dict]:
    """Per prompt: the worst top-5 logit difference, steps whose argmax is not llama.cpp's
    token, each run as llama.cpp ran it (prefill, then decode), and the greedy continuation."""
    results = []
    with StepEngine(path, backend="ggml", num_ctx=256) as engine:
        for case in reference["generate"]:
            engine.reset()
            logits, _ = engine.prefill(case["prompt_ids"])
            worst, other_argmax = 0.0, []
            for step, (token, top5) in enumerate(zip(case["ids"], case["top5"])):
                worst = max(worst, *(abs(float(logits[i]) - value) for i, value in top5))
                if int(logits.argmax()) != token:
                    other_argmax.append(step)
                logits = engine.decode(token)
            results.append({"prompt": case["prompt"], "worst": worst, "other_argmax": other_argmax,
                            "reference": case["ids"]})
    for result, tokens in zip(results, greedy(path, reference)):
        result["greedy"] = tokens
    return results


@pytest.mark.parametrize("model", list(REFERENCE_MODELS))
def test_portable_build_is_exact(model, llamacpp_reference):
    """On ggml built as llama.cpp was for the reference, logits agree to 1e-4 at every step of
    every prompt and greedy decoding gives llama.cpp's tokens, every one."""
    assert (PORTABLE_LIB_DIR / "BUILD").is_file(), f"no portable ggml build in {PORTABLE_LIB_DIR}: run ./setup.sh --test"
    tests_dir = str(Path(__file__).resolve().parents[1])
    # llama.cpp made the reference without flash attention. The checkout's own pollama (a
    # worktree's, not the one the venv was installed from).
    env = dict(os.environ, POLLAMA_GGML_LIB_DIR=str(PORTABLE_LIB_DIR), OLLAMA_FLASH_ATTENTION="0",
               PYTHONPATH=os.pathsep.join([tests_dir, str(Path(tests_dir).parent)]))
    proc = subprocess.run(
        [sys.executable, __file__, model], env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    variant, results = json.loads(proc.stdout.splitlines()[-1])
    assert variant == "portable"
    assert len(results) == len(llamacpp_reference["models"][REFERENCE_MODELS[model]]["generate"])
    for r in results:
        assert r["worst"] <= EXACT_TOLERANCE, r
        assert r["other_argmax"] == [], r
        assert r["greedy"] == r["reference"], r


if __name__ == "__main__":  # the child process of test_portable_build_is_exact
    from conftest import LLAMACPP_REFERENCE
    from pollama.ml.ggml.lib import ggml

    name = sys.argv[1]
    reference = json.loads(LLAMACPP_REFERENCE.read_text())["models"][REFERENCE_MODELS[name]]
    print(json.dumps([ggml.variant, measure(real_model(name), reference)]))
