"""HF Llama 3.2 Vision checkpoints convert to one GGUF "mllama" that computes what transformers does.

A tiny random MllamaForConditionalGeneration (two cross-attention layers, a 3 + 2 layer tiled
ViT) is converted with our converter; its logits on a prompt with one image, with text before
and after the image, are compared with transformers' on the same pixel values, on both
backends, for an image filling all four tiles and one filling a single tile (the other three
masked). Greedy decoding then reads the image's cross-attention K/V from the encoder cache.

The reference is transformers put back to Meta's model (llama-models' multimodal/model.py,
which the released weights were trained with) in two places where transformers 5.24 departs
from it:
- its MllamaVisionEncoder returns each layer's *output* as hidden_states[i], so
  `intermediate_layers_indices` pick states one layer later than Meta's `return_intermediate`
  (each listed layer's input; also transformers 4.x and Ollama);
- its cross-attention layers zero only the MLP output of text before the image, where Meta's
  also multiplies the attention output by `full_text_row_masked_out_mask`.
We compute Meta's model (`as_meta`, kept in pollama/models/mllama/reference.py for the compare tool
too). Against unpatched transformers 5.24 our logits differ by 1.57 (image of four tiles) and
1.91 (one tile); by the first departure alone 1.00 and 0.64, by the second alone 1.38 and
1.56. Patched, by 2e-6 to 4e-6 (torch, ggml, ggml with flash attention).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from models.tinyhf import TOLERANCE, bpe_tokenizer, randomize_, read_gguf, torch, transformers
from pollama.create.convert import convert_hf, supported_architectures
# The reference's two corrections live with the compare tool's adapter (`pollama compare --image`
# must compare against the same Meta model these tests do): one definition for both.
from pollama.models.mllama.reference import as_meta
from pollama.models.base import architectures
from pollama.models.mllama.convert import MllamaConverter
from pollama.models import imageproc
from pollama.models.multimodal import Image as MImage
from pollama.models.multimodal import ImageToken, token_ids
from pollama.runner.engine import make_backend
from pollama.debug.steps import StepEngine

from PIL import Image  # noqa: E402  (after tinyhf, which sets the offline environment)
from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil  # noqa: E402

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|python_tag|>"]
TILE = 56
PROMPT = "<|begin_of_text|>Look: <|image|>The quick brown fox jumps"
GREEDY_STEPS = 8


def _png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# 90x60 fills a 2x2 canvas (aspect ratio id 6, four tiles); 40x50 one tile (three masked).
IMAGES = {"four-tiles": _png(90, 60, 1), "one-tile": _png(40, 50, 2)}


class Case:
    def __init__(self, tmp):
        tok = bpe_tokenizer("llama-bpe", SPECIALS, bos="<|begin_of_text|>", eos="<|end_of_text|>", add_bos=True,
                            trained_size=384)
        tok.add_special_tokens({"additional_special_tokens": ["<|image|>"]})  # id 384: the text vocabulary's end
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_global_layers=2,
                      attention_heads=4, image_size=TILE, patch_size=14, max_num_tiles=4,
                      intermediate_layers_indices=[0, 2], vision_output_dim=96)
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        text = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=5,
                    cross_attention_layers=[1, 3], num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=256, rms_norm_eps=1e-5, rope_parameters=rope,
                    bos_token_id=0, eos_token_id=1, pad_token_id=None)
        config = transformers.MllamaConfig(vision_config=vision, text_config=text, image_token_index=384)
        config._attn_implementation = "eager"
        torch.manual_seed(0)
        model = transformers.MllamaForConditionalGeneration(config).to(torch.float32).eval()
        with torch.no_grad():  # HF starts most gates at 0, where the image changes nothing
            for name, p in model.named_parameters():
                if name.endswith("gate"):
                    p.fill_(0.7)
        randomize_(model)
        self.folder = tmp / "tiny"
        model.save_pretrained(self.folder)
        tok.save_pretrained(self.folder)
        self.gguf = tmp / "tiny.gguf"
        convert_hf(self.folder, self.gguf, outtype="f32", converter=MllamaConverter)
        self.model, self.tokenizer = model, tok
        self.processor = transformers.MllamaProcessor(
            MllamaImageProcessorPil(size={"height": TILE, "width": TILE}, max_image_tiles=4,
                                    image_mean=list(imageproc.CLIP_MEAN), image_std=list(imageproc.CLIP_STD),
                                    resample=Image.Resampling.BILINEAR),
            tok)

    def inputs(self, image: str, prompt: str = PROMPT) -> dict:
        pil = Image.open(io.BytesIO(IMAGES[image]))
        return self.processor(images=[[pil]], text=[prompt], add_special_tokens=False, return_tensors="pt")

    def hf_logits(self, inputs) -> np.ndarray:
        with torch.no_grad(), as_meta():
            return self.model(**inputs).logits[0].numpy()

    def hf_greedy(self, inputs) -> list[int]:
        n = inputs["input_ids"].shape[1]
        with torch.no_grad(), as_meta():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=GREEDY_STEPS,
                                      min_new_tokens=GREEDY_STEPS)
        return out[0, n:].tolist()


def our_items(engine: StepEngine, inputs) -> list:
    """The processor's ids with its <|image|> replaced by our image item, encoded from the SAME pixels."""
    model = engine.model
    pixels = inputs["pixel_values"][0, 0].numpy()
    image = model.encode_pixels(engine.backend, pixels, int(inputs["aspect_ratio_ids"][0, 0]),
                                int(inputs["aspect_ratio_mask"][0, 0].sum()), digest=pixels_digest(pixels))
    ids = inputs["input_ids"][0].tolist()
    return [item for t in ids for item in (model.image_items(image) if t == model.image_token else [t])]


def pixels_digest(pixels: np.ndarray) -> str:
    return MImage.digest_of(pixels.tobytes())


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Case:
    return Case(tmp_path_factory.mktemp("mllama"))


BACKENDS = ["torch", "ggml", "ggml-flash"]


def engine(case: Case, backend: str, **kwargs) -> StepEngine:
    if backend == "ggml-flash":
        backend = make_backend("ggml", flash_attention=True)
    return StepEngine(case.gguf, backend=backend, num_ctx=64, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("image", list(IMAGES))
def test_logits_match_transformers(case, backend, image):
    inputs = case.inputs(image)
    with engine(case, backend, kv_cache_type="f32") as e:
        ours = e.logits(our_items(e, inputs))
    ref = case.hf_logits(inputs)
    assert ours.shape == ref.shape
    assert float(np.abs(ours - ref).max()) < TOLERANCE


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_image_changes_logits(case, backend):
    # The gates are open: the image reaches the text, and which image matters.
    with engine(case, backend, kv_cache_type="f32") as e:
        a = e.logits(our_items(e, case.inputs("four-tiles")))
        b = e.logits(our_items(e, case.inputs("one-tile")))
    image_at = case.inputs("four-tiles")["input_ids"][0].tolist().index(384)
    assert np.abs(a[image_at:] - b[image_at:]).max() > 0.1


@pytest.mark.parametrize("backend", ["torch", "ggml"])
@pytest.mark.parametrize("num_batch", [5, 10])
def test_batches_before_and_after_the_image(case, backend, num_batch):
    # The image is at position 7. Batches of 10: the first reaches it and stores its K/V, the
    # second reads them from the encoder cache. Batches of 5: the first has no image yet and
    # skips the cross layers, which for text before the image is exact.
    inputs = case.inputs("four-tiles")
    assert inputs["input_ids"][0].tolist().index(384) == 7 and inputs["input_ids"].shape[1] > 10
    with engine(case, backend, kv_cache_type="f32", num_batch=num_batch) as e:
        ours = e.logits(our_items(e, inputs))
    assert float(np.abs(ours - case.hf_logits(inputs)).max()) < TOLERANCE


def test_text_only_prompt_skips_cross_layers(case):
    ids = case.tokenizer("<|begin_of_text|>The quick brown fox jumps", add_special_tokens=False).input_ids
    with torch.no_grad():
        ref = case.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    for backend in ("torch", "ggml"):
        with engine(case, backend, kv_cache_type="f32") as e:
            assert float(np.abs(e.logits(ids) - ref).max()) < TOLERANCE


@pytest.mark.parametrize("backend", ["torch", "ggml"])
@pytest.mark.parametrize("image", list(IMAGES))
def test_greedy_tokens_match_generate(case, backend, image):
    inputs = case.inputs(image)
    with engine(case, backend) as e:
        logits, _ = e.prefill(our_items(e, inputs))
        out = []
        for _ in range(GREEDY_STEPS):
            out.append(int(np.argmax(logits)))
            logits = e.decode(out[-1])
    assert out == case.hf_greedy(inputs)


def test_image_items_give_the_processors_ids(case):
    # The prompt laid out from image bytes (our preprocessing) is the processor's ids.
    hf_ids = case.inputs("four-tiles")["input_ids"][0].tolist()
    with engine(case, "ggml") as e:
        items = e.prompt_items(PROMPT.replace("<|image|>", "[img-0]"), [IMAGES["four-tiles"]], add_special=False)
    assert token_ids(items) == hf_ids
    images = [item for item in items if isinstance(item, ImageToken)]
    assert len(images) == 1 and images[0].row is None and images[0].token == 384


@pytest.mark.parametrize("image", list(IMAGES))
def test_encode_image_from_bytes_matches_transformers(case, image):
    # Our decode + tiling (proven equal to transformers' in test_image_processing) and tower.
    inputs = case.inputs(image)
    with torch.no_grad(), as_meta():
        m = case.model.model
        states = m.vision_model(pixel_values=inputs["pixel_values"], aspect_ratio_ids=inputs["aspect_ratio_ids"],
                                aspect_ratio_mask=inputs["aspect_ratio_mask"]).last_hidden_state
        ref = m.multi_modal_projector(states).reshape(-1, 64).numpy()
    with engine(case, "ggml") as e:
        ours = e.encode_image(IMAGES[image])
    assert ours.embeds.shape == ref.shape == (4 * 17, 64)
    assert float(np.abs(ours.embeds - ref).max()) < TOLERANCE
    assert ours.meta["num_tiles"] == int(inputs["aspect_ratio_mask"][0, 0].sum())


def test_metadata_and_tensors(case):
    md, tensors = read_gguf(case.gguf)
    assert md["general.architecture"] == "mllama"
    assert md["mllama.attention.cross_attention_layers"] == [1, 3]
    assert md["mllama.block_count"] == 5 and md["mllama.vocab_size"] == 384
    assert md["mllama.vision.block_count"] == 3 and md["mllama.vision.global.block_count"] == 2
    assert md["mllama.vision.intermediate_layers_indices"] == [0, 2]
    assert md["mllama.vision.image_size"] == TILE and md["mllama.vision.patch_size"] == 14
    assert md["mllama.vision.max_num_tiles"] == 4 and md["mllama.vision.embedding_length"] == 32
    assert md["tokenizer.ggml.tokens"][384] == "<|image|>"
    assert tensors["token_embd.weight"][1] == (392, 64) and tensors["output.weight"][1] == (384, 64)
    assert tensors["v.patch_embd.weight"][1] == (32, 3, 14, 14)
    assert tensors["v.tile_position_embd.weight"][1] == (9, 4 * 17 * 32)
    assert tensors["mm.0.weight"][1] == (64, 96) and "mm.0.bias" in tensors
    for name in ("blk.1.cross_attn_q_proj.weight", "blk.1.cross_attn_k_norm.weight", "blk.3.cross_attn_attn_gate",
                 "blk.3.cross_attn_mlp_gate", "blk.1.ffn_gate.weight", "v.global.blk.1.attn_gate",
                 "v.global.blk.0.ffn_gate", "v.blk.2.attn_output.weight", "v.pre_ln.bias", "v.post_ln.weight",
                 "v.class_embd", "v.position_embd.weight", "v.position_embd.gate",
                 "v.pre_tile_position_embd.gate", "v.post_tile_position_embd.weight", "rope_freqs.weight"):
        assert name in tensors, name
    assert "blk.1.attn_q.weight" not in tensors and "blk.2.attn_q.weight" in tensors

    # Vision gates are stored as Ollama stores them: tanh(gate), the position one as 1 - tanh.
    from pollama.fs.gguf import GGUFFile

    vm = case.model.model.vision_model
    with GGUFFile(case.gguf) as f:
        def value(name):
            return float(f.tensor_bytes(name).view(np.float32)[0])

        assert value("v.position_embd.gate") == pytest.approx(1 - np.tanh(vm.gated_positional_embedding.gate.item()))
        # One HF gate, two GGUF tensors, as Ollama writes them (its model reads the second).
        assert value("v.tile_position_embd.gate") == pytest.approx(np.tanh(vm.gated_positional_embedding.gate.item()))
        assert value("v.global.blk.1.ffn_gate") == pytest.approx(np.tanh(vm.global_transformer.layers[1].gate_ffn.item()))
        # The text model's gates stay raw (the model applies tanh), as in Ollama's files.
        text_gate = case.model.model.language_model.layers[3].cross_attn_attn_gate.item()
        assert value("blk.3.cross_attn_attn_gate") == pytest.approx(text_gate)


def _last_logits_fresh(case: Case, backend: str, items) -> np.ndarray:
    with engine(case, backend, kv_cache_type="f32") as e:
        return e.prefill(items)[0]


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_chat_turns_keep_replace_or_drop_the_image(case, backend):
    # One engine through a chat: each prefill reuses what it can of the cache, and must give
    # what a fresh engine gives for the same prompt.
    with engine(case, backend, kv_cache_type="f32") as e:
        a = our_items(e, case.inputs("four-tiles"))
        b = our_items(e, case.inputs("one-tile"))
        text = case.tokenizer(" and then it sleeps", add_special_tokens=False).input_ids
        before = a[: a.index(next(i for i in a if isinstance(i, ImageToken)))]
        turns = [
            a,  # the image's K/V made
            a + text,  # the next turn: the image (and its K/V) kept, only the new text evaluated
            b + text,  # another image at the same place: replaces the first
            before + text,  # no image any more: the cross layers are skipped again
            b,  # and back
        ]
        for items in turns:
            logits, evaluated = e.prefill(items)
            assert float(np.abs(logits - _last_logits_fresh(case, backend, items)).max()) < 1e-5
        assert evaluated == len(b) - len(before)


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_decode_graphs_are_not_shared_between_text_and_image(case, backend):
    # Decode graphs are reused; one built without the image must not serve a step with one.
    ids = case.tokenizer("<|begin_of_text|>The quick brown", add_special_tokens=False).input_ids
    with engine(case, backend, kv_cache_type="f32") as e:
        e.prefill(ids)
        e.decode(5)
        e.decode(6)
        items = our_items(e, case.inputs("four-tiles"))
        e.prefill(items)
        logits = [e.decode(5), e.decode(6)]
    with engine(case, backend, kv_cache_type="f32") as fresh:
        fresh.prefill(items)
        expected = [fresh.decode(5), fresh.decode(6)]
    for ours, ref in zip(logits, expected):
        assert float(np.abs(ours - ref).max()) < 1e-5


def test_a_file_without_the_tile_gate_tensor_derives_it(case, tmp_path):
    # Ollama's converter and ours write v.tile_position_embd.gate (tanh of the shared gate);
    # a file without it (an older converter's) gets it as 1 - v.position_embd.gate.
    from pollama.fs.gguf import GGUFFile
    from pollama.fs.writer import write_gguf

    out = tmp_path / "no-tile-gate.gguf"
    with GGUFFile(case.gguf) as f:
        assert "v.tile_position_embd.gate" in f.tensors
        tensors = [(t.name, np.array(f.tensor_bytes(t.name)), t.type, t.shape) for t in f.tensors.values()
                   if t.name != "v.tile_position_embd.gate"]
        write_gguf(out, f.metadata, tensors, f.value_types, array_types=f.array_types)
    inputs = case.inputs("four-tiles")
    with StepEngine(out, backend="ggml", num_ctx=64, kv_cache_type="f32") as e:
        ours = e.logits(our_items(e, inputs))
    assert float(np.abs(ours - case.hf_logits(inputs)).max()) < TOLERANCE


def test_registered():
    assert "mllama" in architectures()
    assert supported_architectures()["MllamaForConditionalGeneration"] is MllamaConverter


def test_f16_and_quantized_files_run(case, tmp_path):
    # What `create` makes: F16 weights (vision and projector stay F16 when quantized), then a
    # quantized text model. Measured max |ours - transformers|: F16 2.8e-3 (torch), 3.4e-3
    # (ggml); Q8_0 0.071 (torch), 0.087 (ggml, which also rounds activations to 8 bits).
    from pollama.create.quantize import quantize_gguf

    inputs = case.inputs("one-tile")
    ref = case.hf_logits(inputs)
    f16 = tmp_path / "f16.gguf"
    convert_hf(case.folder, f16, outtype="f16", converter=MllamaConverter)
    q8 = tmp_path / "q8_0.gguf"
    summary = quantize_gguf(f16, q8, "q8_0")
    assert summary.tensor_types["blk.1.cross_attn_k_proj.weight"].name == "Q8_0"
    assert summary.tensor_types["v.patch_embd.weight"].name == "F16"
    for path, backend, bound in ((f16, "torch", 1e-2), (f16, "ggml", 1e-2), (q8, "ggml", 0.25)):
        with StepEngine(path, backend=backend, num_ctx=64, kv_cache_type="f32") as e:
            assert float(np.abs(e.logits(our_items(e, inputs)) - ref).max()) < bound, (path.name, backend)


def test_parallel_engine_generates_from_image_bytes(case):
    # The server's path: the prompt laid out from PNG bytes, generation in the parallel engine
    # (which runs mllama one sequence at a time), greedy tokens as transformers'.
    from pollama.runner.generation import Done, GenerateOptions
    from pollama.runner.parallel import ParallelEngine
    from pollama.sample.options import SamplerOptions

    inputs = case.inputs("four-tiles")
    with ParallelEngine(case.gguf, num_parallel=2, num_ctx=64) as pe:
        assert pe.num_parallel == 1
        text = PROMPT.replace("<|image|>", "[img-0]").removeprefix("<|begin_of_text|>")  # the tokenizer adds BOS
        prompt = pe.prompt_items(text, [IMAGES["four-tiles"]])
        assert token_ids(prompt) == inputs["input_ids"][0].tolist()
        greedy = SamplerOptions(temperature=0.0, repeat_penalty=1.0)
        events = list(pe.submit(prompt, GenerateOptions(num_predict=GREEDY_STEPS, sampler=greedy)))
    done = events[-1]
    assert isinstance(done, Done)
    generated = done.tokens[len(prompt):]
    assert generated == case.hf_greedy(inputs)


@pytest.mark.parametrize("key,value,message", [
    ("mllama.vision.max_num_tiles", 2, "v.pre_tile_position_embd.weight has shape"),
    ("mllama.vision.max_num_tiles", 1000, "max_num_tiles 1000 is over"),
    ("mllama.vision.image_size", 70, "v.position_embd.weight has shape"),
    ("mllama.vision.intermediate_layers_indices", [0, 7], "outside the 3 layers"),
    ("mllama.attention.cross_attention_layers", [1, 9], "outside the 5 layers"),
])
def test_a_file_that_disagrees_with_itself_is_refused(case, tmp_path, key, value, message):
    from pollama.fs.gguf import GGUFFile
    from pollama.fs.writer import write_gguf
    from pollama.errors import ModelError

    out = tmp_path / "bad.gguf"
    with GGUFFile(case.gguf) as f:
        tensors = [(t.name, np.array(f.tensor_bytes(t.name)), t.type, t.shape) for t in f.tensors.values()]
        write_gguf(out, {**f.metadata, key: value}, tensors, f.value_types, array_types=f.array_types)
    with pytest.raises(ModelError, match=message):
        StepEngine(out, backend="ggml", num_ctx=64)


def test_a_text_only_file_runs_without_images(case, tmp_path):
    # Ollama's registry has split some vision models into a text file and a projector: the
    # text file alone is a text model (images refused with a clear message).
    from pollama.fs.gguf import GGUFFile
    from pollama.fs.writer import write_gguf

    out = tmp_path / "text.gguf"
    with GGUFFile(case.gguf) as f:
        tensors = [(t.name, np.array(f.tensor_bytes(t.name)), t.type, t.shape) for t in f.tensors.values()
                   if not t.name.startswith(("v.", "mm."))]
        write_gguf(out, f.metadata, tensors, f.value_types, array_types=f.array_types)
    ids = case.tokenizer("<|begin_of_text|>The quick brown fox jumps", add_special_tokens=False).input_ids
    with torch.no_grad():
        ref = case.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    with StepEngine(out, backend="ggml", num_ctx=64, kv_cache_type="f32") as e:
        assert not e.model.vision
        assert float(np.abs(e.logits(ids) - ref).max()) < TOLERANCE
        with pytest.raises(ValueError, match="does not support images"):
            e.prompt_items("[img-0] hi", [IMAGES["one-tile"]])


TWO_IMAGES = "<|begin_of_text|>Look: <|image|>The quick brown fox jumps. And this: <|image|>it sleeps"


def our_items_of_images(engine: StepEngine, inputs) -> list:
    """The processor's ids with its k-th <|image|> replaced by our item for its k-th image (same pixels)."""
    model, images = engine.model, []
    for k in range(inputs["pixel_values"].shape[1]):
        pixels = inputs["pixel_values"][0, k].numpy()
        images.append(model.encode_pixels(engine.backend, pixels, int(inputs["aspect_ratio_ids"][0, k]),
                                          int(inputs["aspect_ratio_mask"][0, k].sum()), digest=pixels_digest(pixels)))
    out, seen = [], 0
    for t in inputs["input_ids"][0].tolist():
        if t == model.image_token:
            out += model.image_items(images[seen])
            seen += 1
        else:
            out.append(t)
    return out


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_an_image_per_message_each_read_by_the_text_after_it(case, backend):
    # As the processor's cross-attention mask has it: text after the first image reads the
    # first, text after the second reads the second (the engine starts a batch at each image,
    # and the encoder cache then holds the later one).
    pils = [Image.open(io.BytesIO(IMAGES[name])) for name in ("four-tiles", "one-tile")]
    inputs = case.processor(images=[pils], text=[TWO_IMAGES], add_special_tokens=False, return_tensors="pt")
    want = case.hf_logits(inputs)
    with engine(case, backend, kv_cache_type="f32") as e:
        items = our_items_of_images(e, inputs)
        assert float(np.abs(e.logits(items) - want).max()) < TOLERANCE
        # A chat: the first turn, then the whole with its second image: the reused prefix reads
        # the first image's K/V, the new text the second's.
        first, second = [i for i, item in enumerate(items) if isinstance(item, ImageToken)]
        e.reset()
        e.prefill(items[:second])
        logits, evaluated = e.prefill(items)
        assert evaluated == len(items) - second
        assert float(np.abs(logits - want[-1]).max()) < TOLERANCE
        # And back to the first turn's prompt (the held image is now the second: the first's
        # K/V are made again from its token on).
        logits, evaluated = e.prefill(items[:second - 2])
        assert evaluated == second - 2 - first
        assert float(np.abs(logits - want[second - 3]).max()) < TOLERANCE


def test_two_images_in_one_message_are_refused(case):
    with engine(case, "torch") as e:
        items = e.prompt_items("[img-0][img-1] compare", [IMAGES["four-tiles"], IMAGES["one-tile"]])
        with pytest.raises(ValueError, match="only supports one image while more than one image requested"):
            e.check_items(items)
        e.check_items(e.prompt_items("[img-0] one, [img-1] two", [IMAGES["four-tiles"], IMAGES["one-tile"]]))
