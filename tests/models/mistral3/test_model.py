"""HF Mistral3ForConditionalGeneration (Pixtral vision) converts to one GGUF "mistral3" file that
computes what transformers does on a prompt with an image.

The tiny model: a 2-layer Mistral decoder (GQA, untied head), a 2-layer Pixtral tower
(head_dim 16, so 2-D RoPE with quarters of 4 pairs), the 2x2 patch merger and projector. The
image is 90x60: resized to 112x84, 8x6 patches, 4x3 [IMG] tokens in 3 rows. transformers'
PixtralProcessor needs torchvision (not installed here), so its token expansion is run from
its own source (see hf_replace_image_token); the pixel values fed to transformers are ours,
which tests/models/test_image_processing.py proves equal to its PIL image processor's.
"""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models.tinyhf import TOLERANCE, bpe_tokenizer, read_gguf, save_tiny, torch, transformers
from pollama.create.convert import ConvertError, convert_hf
from pollama.models import imageproc
from pollama.models.mistral3 import process_image as pixtral_image
from pollama.models.mistral3.convert import Mistral3Converter
from pollama.models.multimodal import ImageToken, token_ids
from pollama.debug.steps import StepEngine

# Tekken's special ids: [IMG] 10, [IMG_BREAK] 12, [IMG_END] 13, as in Mistral Small 3.1.
SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]"]
LONGEST_EDGE = 112
PROMPT = "[INST]What is in this picture? [IMG] Tell me.[/INST]"
GREEDY_STEPS = 8


def drawn_png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([width // 5, height // 5, width // 2, height // 2], fill=(255, 0, 0))
    draw.ellipse([width // 3, height // 3, width - 1, height - 1], fill=(0, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def hf_replace_image_token():
    """PixtralProcessor.replace_image_token, compiled from transformers' own source: the module
    imports torchvision at its top, so the class cannot be imported here."""
    path = Path(transformers.__file__).parent / "models" / "pixtral" / "processing_pixtral.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PixtralProcessor")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "replace_image_token")
    fn.decorator_list = []
    namespace: dict = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace["replace_image_token"]


def hf_prompt_ids(tokenizer, image_size: tuple[int, int]) -> list[int]:
    """The ids PixtralProcessor gives PROMPT for an image resized to image_size (height, width)."""
    processor = SimpleNamespace(patch_size=14, spatial_merge_size=2, image_token="[IMG]",
                                image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]")
    expansion = hf_replace_image_token()(processor, {"image_sizes": [list(image_size)]}, 0)
    return tokenizer(PROMPT.replace("[IMG]", expansion)).input_ids


MISTRAL_TEXT = dict(model_type="mistral", rope_theta=1e9, sliding_window=None)
# Ministral 3's text: YaRN, and Llama 4's attention temperature past the original context
# (16 here, so the prompt's later positions get it).
MINISTRAL_TEXT = dict(model_type="ministral3", max_position_embeddings=64, rope_parameters={
    "rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 16,
    "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1})
CASES = {
    # Mistral Small 3.1's layout: untied head; a wide image (90x60 -> 112x84: 3 rows of 4 [IMG]).
    "mistral-small-3.1": dict(text=MISTRAL_TEXT, tie=False, image=(90, 60)),
    # Ministral 3's: tied embeddings; a tall image scaled down (60x150 -> 56x112: 4 rows of 2).
    "ministral-3": dict(text=MINISTRAL_TEXT, tie=True, image=(60, 150)),
}


def build(tmp: Path, text: dict, tie: bool, image: tuple[int, int]) -> SimpleNamespace:
    tok = bpe_tokenizer("llama-bpe", SPECIALS, bos="<s>", eos="</s>", pad="<pad>", add_bos=True)
    config = transformers.Mistral3Config(
        text_config={**dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                            max_position_embeddings=256, tie_word_embeddings=tie), **text},
        vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, head_dim=16, image_size=LONGEST_EDGE, patch_size=14,
                           rope_theta=1e4, hidden_act="silu"),
        spatial_merge_size=2, vision_feature_layer=-1, projector_hidden_act="gelu",
        multimodal_projector_bias=False, image_token_index=10, tie_word_embeddings=tie)
    folder = tmp / "tiny"
    model = save_tiny(transformers.Mistral3ForConditionalGeneration, config, tok, folder)
    gguf = tmp / "tiny.gguf"
    convert_hf(folder, gguf, outtype="f32", converter=Mistral3Converter)
    png = drawn_png(*image, seed=3)
    pre = pixtral_image.process_image(imageproc.decode_image(png), longest_edge=LONGEST_EDGE)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return SimpleNamespace(model=model, tokenizer=tokenizer, folder=folder, gguf=gguf, png=png, pre=pre,
                           ids=hf_prompt_ids(tokenizer, pre.image_size))


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, SimpleNamespace]:
    return {name: build(tmp_path_factory.mktemp(name), **spec) for name, spec in CASES.items()}


@pytest.fixture(params=list(CASES))
def case(request, cases) -> SimpleNamespace:
    return cases[request.param]


def hf_inputs(case) -> dict:
    return dict(
        input_ids=torch.tensor([case.ids]),
        pixel_values=torch.from_numpy(case.pre.pixel_values[None]),
        image_sizes=torch.tensor([list(case.pre.image_size)]),
    )


def hf_logits(case) -> np.ndarray:
    with torch.no_grad():
        return case.model(**hf_inputs(case)).logits[0].numpy()


def hf_greedy(case) -> list[int]:
    with torch.no_grad():
        out = case.model.generate(**hf_inputs(case), attention_mask=torch.ones(1, len(case.ids), dtype=torch.long),
                                  do_sample=False, max_new_tokens=GREEDY_STEPS, min_new_tokens=GREEDY_STEPS)
    return out[0, len(case.ids):].tolist()


def our_items(engine: StepEngine, png: bytes) -> list:
    """Our prompt items: the prompt's text tokenized around the image's items."""
    return engine.prompt_items(PROMPT.replace("[IMG]", "[img-0]"), [png])


def engine(case, backend: str) -> StepEngine:
    # F32 K/V cache: rounding K/V to F16 alone would move the logits by about 1e-3 (tinyhf.py).
    return StepEngine(case.gguf, backend=backend, num_ctx=128, kv_cache_type="f32")


def test_image_items_are_the_processors_ids(case):
    with engine(case, "torch") as e:
        items = our_items(e, case.png)
    assert token_ids(items) == case.ids
    n = case.pre.rows * case.pre.cols
    rows = [i.row for i in items if isinstance(i, ImageToken)]
    assert rows == list(range(n))  # every [IMG] position takes its own embedding row, in order
    assert case.ids.count(10) == n and case.ids.count(12) == case.pre.rows - 1 and case.ids.count(13) == 1


def test_pixel_values_are_the_pil_processors(case):
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    hf = PixtralImageProcessorPil(size={"longest_edge": LONGEST_EDGE}, patch_size={"height": 28, "width": 28})(
        images=[Image.open(io.BytesIO(case.png))], return_tensors="np")
    assert np.array_equal(hf["pixel_values"][0], case.pre.pixel_values)
    assert [int(v) for v in hf["image_sizes"][0]] == list(case.pre.image_size)


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_logits_with_an_image_match_transformers(case, backend, request):
    with engine(case, backend) as e:
        ours = e.logits(our_items(e, case.png))
    ref = hf_logits(case)
    assert ours.shape == ref.shape
    diff = float(np.abs(ours - ref).max())
    print(f"{request.node.callspec.params['case']} {backend}: max |ours - transformers| = {diff:.3g}")
    assert diff < TOLERANCE


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_greedy_tokens_with_an_image_match_generate(case, backend):
    with engine(case, backend) as e:
        logits, _ = e.prefill(our_items(e, case.png))
        out = []
        for _ in range(GREEDY_STEPS):
            out.append(int(np.argmax(logits)))
            logits = e.decode(out[-1])
    assert out == hf_greedy(case)


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_decoded_logits_match_transformers(case, backend):
    # Decoding goes through the cache and reused graphs; for Ministral 3 its positions (43..50)
    # cross 48, where the attention temperature steps up.
    generated = hf_greedy(case)
    with torch.no_grad():
        inputs = hf_inputs(case)
        inputs["input_ids"] = torch.tensor([case.ids + generated])
        ref = case.model(**inputs).logits[0].numpy()[len(case.ids) - 1:]
    with engine(case, backend) as e:
        logits, _ = e.prefill(our_items(e, case.png))
        ours = [logits] + [e.decode(token) for token in generated]
    assert float(np.abs(np.stack(ours) - ref).max()) < TOLERANCE


def test_an_image_split_across_batches_matches_transformers(case):
    # Each [IMG] position carries its own embedding row, so batches may cut an image anywhere.
    with StepEngine(case.gguf, backend="ggml", num_ctx=128, num_batch=5, kv_cache_type="f32") as e:
        ours = e.logits(our_items(e, case.png))
    assert float(np.abs(ours - hf_logits(case)).max()) < TOLERANCE


def test_image_changes_the_logits(case):
    # The image must matter (a projector that zeroed it would pass the comparisons above only
    # if transformers' did too): the same prompt with a different image gives other logits.
    other = drawn_png(*Image.open(io.BytesIO(case.png)).size, seed=4)
    with engine(case, "torch") as e:
        a = e.logits(our_items(e, case.png))
        b = e.logits(our_items(e, other))
    assert np.abs(a - b).max() > 1e-2


def test_metadata_and_tensor_names(cases):
    md, tensors = read_gguf(cases["mistral-small-3.1"].gguf)
    assert md["general.architecture"] == "mistral3"
    assert md["mistral3.vision.block_count"] == 2 and md["mistral3.vision.embedding_length"] == 32
    assert md["mistral3.vision.attention.key_length"] == 16 and md["mistral3.vision.patch_size"] == 14
    assert md["mistral3.image_token_index"] == 10 and md["mistral3.spatial_merge_size"] == 2
    assert md["mistral3.attention.key_length"] == 16 and md["mistral3.rope.freq_base"] == 1e9
    assert tensors["v.patch_conv.weight"][1] == (32, 3, 14, 14)
    assert tensors["mm.patch_merger.merging_layer.weight"][1] == (32, 128)
    for name in ("token_embd.weight", "output.weight", "output_norm.weight", "blk.1.attn_q.weight",
                 "v.encoder_norm.weight", "v.blk.1.attn_q.weight", "v.blk.1.ffn_gate.weight",
                 "mm.norm.weight", "mm.linear_1.weight", "mm.linear_2.weight"):
        assert name in tensors, name
    assert not [n for n in tensors if not n.startswith(("token_embd", "output", "blk.", "v.", "mm."))]


def test_ministral_3_keys_are_ollamas(cases):
    md, tensors = read_gguf(cases["ministral-3"].gguf)
    assert md["mistral3.rope.scaling.type"] == "yarn" and md["mistral3.rope.scaling.factor"] == 4.0
    assert md["mistral3.rope.scaling.original_context_length"] == 16
    assert md["mistral3.rope.scaling.beta_fast"] == 32.0 and md["mistral3.rope.scaling.beta_slow"] == 1.0
    assert md["mistral3.rope.scaling.mscale"] == md["mistral3.rope.scaling.mscale_all_dim"] == 1.0
    assert abs(md["mistral3.rope.scaling_beta"] - 0.1) < 1e-7
    assert not [k for k in md if "yarn_beta" in k]
    assert "output.weight" not in tensors  # tied


def test_unsupported_configs_are_refused(cases, tmp_path):
    case = cases["mistral-small-3.1"]
    config = json.loads((case.folder / "config.json").read_text())
    for key, value, message in [("vision_feature_layer", 0, "vision_feature_layer"),
                                ("projector_hidden_act", "relu", "projector_hidden_act")]:
        broken = {**config, key: value}
        (case.folder / "config.json").write_text(json.dumps(broken))
        try:
            with pytest.raises(ConvertError, match=message):
                convert_hf(case.folder, tmp_path / "out.gguf", converter=Mistral3Converter)
        finally:
            (case.folder / "config.json").write_text(json.dumps(config))


def test_registered():
    from pollama.create.convert import supported_architectures
    from pollama.models.base import architectures

    assert supported_architectures()["Mistral3ForConditionalGeneration"] is Mistral3Converter
    assert "mistral3" in architectures()
