"""HF Gemma3ForConditionalGeneration (Gemma 3 text + SigLIP) converts to one GGUF "gemma3" whose
image prompts compute what transformers computes.

The tiny model: SigLIP of 2 layers on 56x56 images (4x4 patches of 14, pooled 2x2 to 4 soft
tokens), Gemma 3 text of 2 layers (one sliding window of 8, shorter than the prompt; one global
with linear RoPE scaling), head_dim 32 where hidden/heads is 16. Both sides get the same pixel
values: ours come from our decoder and process_image, asserted equal to the HF processor's, and
are fed to transformers. The prompt's ids are the HF Gemma3Processor's, checked item by item.

The byte-level BPE tokenizer has "\\n\\n" as an added token: Gemma's SentencePiece vocabulary has
it as one piece (108), which the processor's "\\n\\n" around an image and Ollama's fixed 108 both
rely on; a plain byte-level BPE would split "\\n\\nthe" after an image into two "\\n" tokens.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.tinyhf import TOLERANCE, GGMLGelu, bpe_tokenizer, convert, read_gguf, save_tiny, torch, transformers
from pollama.fs.gguf import GGUFFile
from pollama.models import imageproc
from pollama.models.gemma3.process_image import process_image
from pollama.models.multimodal import ImageToken, token_ids
from pollama.debug.steps import StepEngine

from PIL import Image, ImageDraw  # noqa: E402  (transformers' processors need PIL anyway)

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
            "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
SLIDING, FULL = "sliding_attention", "full_attention"
PROMPT = "Describe[img-0]the quick brown fox."  # ours: Ollama's image tag
HF_PROMPT = PROMPT.replace("[img-0]", "<start_of_image>")  # the processor's
TOKENS_PER_IMAGE = 4
GREEDY_STEPS = 8


@dataclass
class VisionCase:
    model: Any  # Gemma3ForConditionalGeneration, float32, eval
    folder: Path
    gguf: Path
    png: bytes
    inputs: dict  # the processor's output, pixel_values replaced by ours (equal, asserted)


def _png() -> bytes:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, size=(60, 90, 3), dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle([10, 10, 50, 40], fill=(255, 0, 0))
    draw.ellipse([40, 20, 89, 59], fill=(0, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _tokenizer():
    base = bpe_tokenizer("gpt-2", SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True, added=("\n\n",))
    # transformers 5 makes *_token kwargs named attributes (with *_id twins): Gemma3Processor reads these.
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>")


def _config(tok):
    rope = {SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
            FULL: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}
    text = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=8,
                layer_types=[SLIDING, FULL], rope_parameters=rope, max_position_embeddings=256,
                pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=56, patch_size=14, vision_use_head=False, layer_norm_eps=1e-5)
    boi, eoi, image = tok.convert_tokens_to_ids(["<start_of_image>", "<end_of_image>", "<image_soft_token>"])
    return transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=TOKENS_PER_IMAGE,
                                     boi_token_index=boi, eoi_token_index=eoi, image_token_index=image)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> VisionCase:
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tmp = tmp_path_factory.mktemp("gemma3-vision")
    tok = _tokenizer()
    folder = tmp / "tiny"
    # (save_tiny perturbs every weight: HF zero-inits mm_input_projection, which would hide the image.)
    model = save_tiny(transformers.Gemma3ForConditionalGeneration, _config(tok), tok, folder, seed=3)
    gguf = convert(folder, tmp / "tiny.gguf")

    png = _png()
    processor = transformers.Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 56, "width": 56}, do_pan_and_scan=False),
        tokenizer=tok, image_seq_length=TOKENS_PER_IMAGE)
    inputs = dict(processor(images=Image.open(io.BytesIO(png)), text=HF_PROMPT, return_tensors="pt"))
    ours = process_image(imageproc.decode_image(png), image_size=56)
    assert np.array_equal(inputs["pixel_values"][0].numpy(), ours)  # proven in test_image_processing too
    inputs["pixel_values"] = torch.from_numpy(ours)[None]
    return VisionCase(model, folder, gguf, png, inputs)


def _hf(case: VisionCase, run, ggml_gelu: bool = False):
    """run(model) under no_grad, with ggml's GELU (an F16 table) in every MLP, text and SigLIP, if asked."""
    lm, tower = case.model.model.language_model, case.model.model.vision_tower
    acts = [(layer.mlp, "act_fn") for layer in lm.layers] + [(layer.mlp, "activation_fn") for layer in tower.encoder.layers]
    saved = [getattr(m, a) for m, a in acts]
    try:
        if ggml_gelu:
            for m, a in acts:
                setattr(m, a, GGMLGelu())
        with torch.no_grad():
            return run(case.model)
    finally:
        for (m, a), act in zip(acts, saved):
            setattr(m, a, act)


def _hf_logits(case: VisionCase, ggml_gelu: bool = False, **overrides) -> np.ndarray:
    return _hf(case, lambda m: m(**{**case.inputs, **overrides}).logits[0].numpy(), ggml_gelu)


def _hf_image_embeds(case: VisionCase, ggml_gelu: bool = False) -> np.ndarray:
    run = lambda m: m.model.get_image_features(case.inputs["pixel_values"]).pooler_output[0].numpy()  # noqa: E731
    return _hf(case, run, ggml_gelu)


def _our_logits(case: VisionCase, backend: str, blocks: bool = True, exact_gelu: bool = False) -> np.ndarray:
    with StepEngine(case.gguf, backend=backend, num_ctx=64, kv_cache_type="f32", exact_gelu=exact_gelu) as engine:
        items = engine.prompt_items(PROMPT, [case.png])
        if not blocks:  # the soft tokens made causal, as if they did not see each other both ways
            items = [replace(i, block=None) if isinstance(i, ImageToken) else i for i in items]
        return engine.logits(items)


def test_items_are_the_processor_ids(case):
    ids = case.inputs["input_ids"][0].tolist()
    with StepEngine(case.gguf, backend="torch", num_ctx=64) as engine:
        items = engine.prompt_items(PROMPT, [case.png])
        assert token_ids(items) == ids
        soft = [i for i in items if isinstance(i, ImageToken)]
        # The processor's token_type_ids mark exactly the soft tokens, which see each other both ways.
        types = case.inputs["token_type_ids"][0].tolist()
        assert [isinstance(i, ImageToken) for i in items] == [t == 1 for t in types]
        assert [(i.row, i.block) for i in soft] == [(r, (r, TOKENS_PER_IMAGE)) for r in range(TOKENS_PER_IMAGE)]
        assert len(ids) > 8  # longer than the sliding window: it matters within the prompt


# By default ggml's CPU GELU is llama.cpp's F16 lookup table: up to 4e-3 off, relative, per value,
# here in SigLIP's MLPs as well as Gemma's. It stays within the bound on this model, and the rest
# agrees as closely once transformers uses that GELU too; with POLLAMA_EXACT_GELU (the formula in
# float32) ggml agrees as closely as torch. Measured, max |ours - transformers|:
#                                    image embeddings (|x| <= 1.6)   logits (|x| <= 3.9)
#   torch                            1.0e-6                          2.2e-6 (2.4e-6 in small batches)
#   ggml, exact GELU                 8.8e-7                          2.2e-6
#   ggml, F16-table GELU             2.5e-4                          8.3e-4
#   ggml vs HF with the table GELU   4.2e-5                          3.5e-4


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_image_embeddings_match_transformers(case, backend):
    # The vision tower and projector alone: Engine.encode_image against get_image_features.
    with StepEngine(case.gguf, backend=backend, num_ctx=64) as engine:
        ours = engine.model.encode_image(engine.backend, case.png).embeds
    ref = _hf_image_embeds(case)
    assert ours.shape == ref.shape == (TOKENS_PER_IMAGE, 64)
    if backend == "torch":
        assert np.abs(ours - ref).max() < TOLERANCE
    else:  # ggml's GELU table (measured above, x2)
        assert np.abs(ours - ref).max() < 5e-4
        assert np.abs(ours - _hf_image_embeds(case, ggml_gelu=True)).max() < 1e-4


def test_logits_match_transformers_on_torch(case):
    assert np.abs(_our_logits(case, "torch") - _hf_logits(case)).max() < TOLERANCE


def test_logits_match_transformers_on_ggml_with_exact_gelu(case):
    assert np.abs(_our_logits(case, "ggml", exact_gelu=True) - _hf_logits(case)).max() < TOLERANCE


def test_logits_match_transformers_on_ggml(case):
    ours = _our_logits(case, "ggml")
    # ggml's GELU table (measured above, x2)
    assert np.abs(ours - _hf_logits(case)).max() < 1.7e-3
    assert np.abs(ours - _hf_logits(case, ggml_gelu=True)).max() < 7e-4


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_small_batches_keep_the_image_whole(case, backend):
    # With 5 items a batch, the soft tokens (items 9..12) would straddle two batches: the engine
    # ends a batch before them instead, and later batches still see them through the cache.
    with StepEngine(case.gguf, backend=backend, num_ctx=64, num_batch=5, kv_cache_type="f32", exact_gelu=True) as engine:
        items = engine.prompt_items(PROMPT, [case.png])
        assert (5, 9) in list(engine.chunks(items, 0))
        assert np.abs(engine.logits(items) - _hf_logits(case)).max() < TOLERANCE


def test_soft_tokens_see_each_other(case):
    # Dropping the bidirectional block (causal soft tokens) must break the agreement: it matters.
    ref = _hf_logits(case)
    assert np.abs(_our_logits(case, "torch", blocks=False) - ref).max() > 0.1
    causal = _hf_logits(case, token_type_ids=None)  # transformers without it, likewise
    assert np.abs(causal - ref).max() > 0.1


def _hf_greedy(case: VisionCase) -> list[int]:
    n = case.inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = case.model.generate(**case.inputs, do_sample=False, max_new_tokens=GREEDY_STEPS,
                                  min_new_tokens=GREEDY_STEPS)
    return out[0, n:].tolist()


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_greedy_tokens_match_generate(case, backend):
    with StepEngine(case.gguf, backend=backend, num_ctx=64) as engine:
        logits, _ = engine.prefill(engine.prompt_items(PROMPT, [case.png]))
        out = []
        for _ in range(GREEDY_STEPS):
            out.append(int(np.argmax(logits)))
            logits = engine.decode(out[-1])
    assert out == _hf_greedy(case)


def test_metadata_and_tensors(case):
    md, tensors = read_gguf(case.gguf)
    assert md["general.architecture"] == "gemma3"
    assert {k: md[f"gemma3.{k}"] for k in (
        "vision.block_count", "vision.embedding_length", "vision.feed_forward_length", "vision.image_size",
        "vision.patch_size", "vision.num_channels", "vision.attention.head_count", "mm.tokens_per_image")} == {
        "vision.block_count": 2, "vision.embedding_length": 32, "vision.feed_forward_length": 64,
        "vision.image_size": 56, "vision.patch_size": 14, "vision.num_channels": 3,
        "vision.attention.head_count": 4, "mm.tokens_per_image": 4}
    assert md["gemma3.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert md["gemma3.attention.sliding_window_pattern"] == [True, False] and md["gemma3.embedding_length"] == 64
    # Ollama's names and PyTorch-order shapes (a GGUF shape reversed).
    assert tensors["v.patch_embedding.weight"] == ("F32", (32, 3, 14, 14))
    assert tensors["v.position_embedding.weight"] == ("F32", (16, 32))
    assert tensors["v.blk.1.attn_output.bias"] == ("F32", (32,)) and tensors["v.blk.0.mlp.fc1.weight"] == ("F32", (64, 32))
    assert tensors["mm.mm_input_projection.weight"] == ("F32", (32, 64))  # HF's [vision, text], as Ollama keeps it
    assert {n for n in tensors if n.startswith("blk.")} >= {"blk.1.attn_q_norm.weight", "blk.0.post_ffw_norm.weight"}
    assert "output.weight" not in tensors and len([n for n in tensors if n.startswith("v.")]) == 5 + 2 * 16
    hf = case.model.model
    with GGUFFile(case.gguf) as f:
        def tensor(name):
            return f.tensor_bytes(name).view(np.float32)
        # Gemma's RMSNorm (1 + w): the +1 goes into the text norms and the projector's, not SigLIP's LayerNorms.
        assert np.array_equal(tensor("mm.mm_soft_emb_norm.weight"),
                              hf.multi_modal_projector.mm_soft_emb_norm.weight.detach().numpy() + 1)
        assert np.array_equal(tensor("blk.0.ffn_norm.weight"),
                              hf.language_model.layers[0].pre_feedforward_layernorm.weight.detach().numpy() + 1)
        assert np.array_equal(tensor("v.post_layernorm.weight"), hf.vision_tower.post_layernorm.weight.detach().numpy())
        assert np.array_equal(tensor("mm.mm_input_projection.weight"),
                              hf.multi_modal_projector.mm_input_projection_weight.detach().numpy().reshape(-1))


def test_hub_checkpoint_layout_converts_the_same(case, tmp_path):
    # google/gemma-3-* checkpoints nest the tower as vision_tower.vision_model.*; transformers 5
    # saves tiny ones flat. The same weights under either name give the same GGUF.
    from safetensors.numpy import load_file, save_file

    hub = tmp_path / "hub"
    shutil.copytree(case.folder, hub)
    weights = load_file(hub / "model.safetensors")
    renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in weights.items()}
    assert renamed.keys() != weights.keys()
    save_file(renamed, hub / "model.safetensors", metadata={"format": "pt"})
    out = convert(hub, tmp_path / "hub.gguf")
    with GGUFFile(case.gguf) as a, GGUFFile(out) as b:
        assert sorted(a.tensors) == sorted(b.tensors)
        for name in a.tensors:
            assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name
