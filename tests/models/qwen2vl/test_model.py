"""HF Qwen2-VL / Qwen2.5-VL checkpoints convert to one GGUF ("qwen2vl" / "qwen25vl") whose image
prompts compute what transformers computes.

The tiny models: Qwen2 text of 2 layers with M-RoPE (sections [2, 3, 3] of head_dim 16), GQA;
a vision tower of 2 blocks, width 32, 4 heads, 14-pixel patches merged 2x2. Qwen2-VL's tower has
LayerNorm and a quick-GELU MLP; Qwen2.5-VL's RMSNorm, SwiGLU and windows of 2x2 merged cells
(window_size 56) in block 0, full attention in block 1. Two images: 90x60 (a 4x6 patch grid,
2x3 merged: one full window and one partial one) and 84x84 (6x6, 3x3 merged: one full window
and three partial ones).

Both sides get the same pixel values: ours come from our decoder and process_image, asserted
equal to the HF processor's, and the processor's go to transformers. The prompt's ids are the
HF Qwen2VLProcessor's (which transformers cannot build without torchvision unless its
video-processor check lets None through, as `processor()` arranges).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from models.tinyhf import TOLERANCE, torch
from pollama.models import multimodal
from pollama.models.multimodal import ImageToken
from pollama.debug.steps import StepEngine

from PIL import Image  # noqa: E402

# The tiny models and images are conftest.py's `case` fixture.
PROMPT = "Look:[img-0] what is it?"  # ours: Ollama's image tag
HF_PROMPT = PROMPT.replace("[img-0]", "<|vision_start|><|image_pad|><|vision_end|>")  # the processor's
GREEDY_STEPS = 8
IMAGES = ["wide", "square"]


def hf_inputs(case, image: str) -> dict:
    """The processor's tensors for HF_PROMPT with one image."""
    picture = Image.open(io.BytesIO(case.pngs[image]))
    return dict(case.processor(text=[HF_PROMPT], images=[picture], return_tensors="pt"))


def hf_logits(case, inputs: dict) -> np.ndarray:
    with torch.no_grad():
        return case.model(**inputs).logits[0].numpy()


@pytest.mark.parametrize("image", IMAGES)
def test_pixel_values_are_the_processors(case, image):
    with StepEngine(case.gguf, backend="torch", num_ctx=64) as engine:
        ours = engine.model.preprocess(case.pngs[image])
    inputs = hf_inputs(case, image)
    assert np.array_equal(ours.pixel_values, inputs["pixel_values"].numpy())
    assert list(ours.grid_thw) == inputs["image_grid_thw"][0].tolist()


@pytest.mark.parametrize("image", IMAGES)
def test_items_are_the_processors_ids(case, image):
    inputs = hf_inputs(case, image)
    with StepEngine(case.gguf, backend="torch", num_ctx=64) as engine:
        items = engine.prompt_items(PROMPT, [case.pngs[image]])
    assert multimodal.token_ids(items) == inputs["input_ids"][0].tolist()
    # One ImageToken per <|image_pad|> (mm_token_type_ids 1), taking the merged rows in order.
    where = [i for i, item in enumerate(items) if isinstance(item, ImageToken)]
    assert where == np.flatnonzero(inputs["mm_token_type_ids"][0].numpy() == 1).tolist()
    assert [items[i].row for i in where] == list(range(len(where)))
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert len(where) == t * h * w // 4 == len(items[where[0]].image.embeds)


@pytest.mark.parametrize("image", IMAGES)
def test_rope_positions_are_get_rope_index(case, image):
    inputs = hf_inputs(case, image)
    with StepEngine(case.gguf, backend="torch", num_ctx=64) as engine:
        items = engine.prompt_items(PROMPT, [case.pngs[image]])
    hf, delta = case.model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"])
    assert multimodal.rope_positions(items).T.tolist() == hf[:, 0].tolist()
    # Where the next token goes (a decode step's position), as transformers' rope delta says.
    assert multimodal.rope_end(items) == len(items) + int(delta[0, 0])


def test_image_embeddings_match_transformers(case):
    inputs = hf_inputs(case, "wide")
    with torch.no_grad():
        ref = case.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output[0]
    for backend in ("torch", "ggml"):
        with StepEngine(case.gguf, backend=backend, num_ctx=64) as engine:
            ours = engine.encode_image(case.pngs["wide"]).embeds
        assert ours.shape == tuple(ref.shape)
        assert np.abs(ours - ref.numpy()).max() < 1e-4, backend


# Measured max |ours - transformers| over every position (float32 weights and K/V cache):
# 2.4e-6 to 3.6e-6 for both models on both backends, both images. ggml's GELU table does
# not enter: the merger's GELU is the exact (erf) one, Qwen2-VL's quick-GELU is x * sigmoid(1.702 x).
@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_logits_match_transformers(case, backend, image):
    inputs = hf_inputs(case, image)
    with StepEngine(case.gguf, backend=backend, num_ctx=64, kv_cache_type="f32") as engine:
        ours = engine.logits(engine.prompt_items(PROMPT, [case.pngs[image]]))
    ref = hf_logits(case, inputs)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < TOLERANCE


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_greedy_tokens_match_generate(case, backend):
    inputs = hf_inputs(case, "wide")
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = case.model.generate(**inputs, do_sample=False, max_new_tokens=GREEDY_STEPS, min_new_tokens=GREEDY_STEPS)
    expected = out[0, n:].tolist()
    with StepEngine(case.gguf, backend=backend, num_ctx=64) as engine:
        logits, _ = engine.prefill(engine.prompt_items(PROMPT, [case.pngs["wide"]]))
        tokens = []
        for _ in range(GREEDY_STEPS):
            tokens.append(int(np.argmax(logits)))
            logits = engine.decode(tokens[-1])
    assert tokens == expected


def test_the_parallel_engine_generates_as_transformers(case):
    # Two requests at once, with different images, through the batched engine (each sequence's
    # M-RoPE positions carried from its own prompt into its decode steps).
    from pollama.runner.generation import Done, GenerateOptions
    from pollama.runner.parallel import ParallelEngine
    from pollama.sample import SamplerOptions

    greedy = GenerateOptions(num_predict=GREEDY_STEPS, sampler=SamplerOptions(temperature=0.0, repeat_penalty=1.0))

    expected = {}
    for name in ("wide", "square"):
        inputs = hf_inputs(case, name)
        n = inputs["input_ids"].shape[1]
        with torch.no_grad():
            out = case.model.generate(**inputs, do_sample=False, max_new_tokens=GREEDY_STEPS, min_new_tokens=GREEDY_STEPS)
        expected[name] = out[0, n:].tolist()
    with ParallelEngine(case.gguf, num_parallel=2, num_ctx=64, backend="torch") as engine:
        jobs = {name: engine.submit(engine.prompt_items(PROMPT, [case.pngs[name]]), greedy) for name in expected}
        for name, job in jobs.items():
            done = [event for event in job if isinstance(event, Done)][0]
            assert done.tokens[-GREEDY_STEPS:] == expected[name], name


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_text_only_logits_match_transformers(case, backend):
    ids = case.processor.tokenizer("The quick brown fox jumps").input_ids
    with torch.no_grad():
        ref = case.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    with StepEngine(case.gguf, backend=backend, num_ctx=64, kv_cache_type="f32") as engine:
        assert np.abs(engine.logits(ids) - ref).max() < TOLERANCE


def test_windows_full_and_partial(case):
    # The wide image's 2x3 merged grid: a window of 2x2 cells and one of 2x1 (16 and 8 patches);
    # only Qwen2.5-VL has windows, and only in block 0.
    with StepEngine(case.gguf, backend="torch", num_ctx=64) as engine:
        v = engine.model.v
        if case.arch == "qwen2vl":
            assert v.window == 0 and not v.full_blocks
            return
        seen = (v.window_mask(4, 6) == 0).sum(axis=1)
        assert sorted(set(seen.tolist())) == [8, 16] and v.full_blocks == {1}


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_two_images_match_transformers(case, backend):
    # The text between and after two images resumes where each image's grid ends.
    prompt = "A[img-0]then[img-1]end"
    hf_prompt = prompt.replace("[img-0]", "<|vision_start|><|image_pad|><|vision_end|>").replace(
        "[img-1]", "<|vision_start|><|image_pad|><|vision_end|>")
    pngs = [case.pngs["square"], case.pngs["wide"]]
    pictures = [Image.open(io.BytesIO(p)) for p in pngs]
    inputs = dict(case.processor(text=[hf_prompt], images=pictures, return_tensors="pt"))
    with StepEngine(case.gguf, backend=backend, num_ctx=128, kv_cache_type="f32") as engine:
        items = engine.prompt_items(prompt, pngs)
        assert multimodal.token_ids(items) == inputs["input_ids"][0].tolist()
        ours = engine.logits(items)
    assert np.abs(ours - hf_logits(case, inputs)).max() < TOLERANCE


def test_an_image_split_across_batches(case):
    # The image's rows need not share a batch (Qwen's image tokens attend causally): with
    # batches of 4 items the wide image's 6 rows straddle three of them.
    inputs = hf_inputs(case, "wide")
    with StepEngine(case.gguf, backend="ggml", num_ctx=64, num_batch=4, kv_cache_type="f32") as engine:
        ours = engine.logits(engine.prompt_items(PROMPT, [case.pngs["wide"]]))
    assert np.abs(ours - hf_logits(case, inputs)).max() < TOLERANCE
