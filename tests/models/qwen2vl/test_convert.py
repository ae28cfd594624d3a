"""The Qwen-VL GGUF layout: Ollama's keys and tensor names (convert_qwen25vl.go), the fused HF
tensors split exactly, and what the converter refuses. The checkpoints are conftest.py's."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from models.tinyhf import read_gguf, torch
from pollama.create.convert import ConvertError, convert_hf, supported_architectures
from pollama.fs.gguf import GGUFFile
from pollama.debug.steps import StepEngine

from PIL import Image  # noqa: E402


def vision_names(arch: str) -> set[str]:
    names = {"v.patch_embd_0.weight", "v.patch_embd_1.weight", "v.merger.ln_q.weight"}
    names |= {f"v.merger.mlp.{i}.{s}" for i in (0, 2) for s in ("weight", "bias")}
    ffn = ("ffn_gate", "ffn_up", "ffn_down") if arch == "qwen25vl" else ("ffn_up", "ffn_down")
    norms = ("weight",) if arch == "qwen25vl" else ("weight", "bias")  # RMSNorm / LayerNorm
    if arch == "qwen2vl":
        names.add("v.merger.ln_q.bias")
    for i in range(2):
        linear = ("attn_q", "attn_k", "attn_v", "attn_out", *ffn)
        names |= {f"v.blk.{i}.{n}.{s}" for n in linear for s in ("weight", "bias")}
        names |= {f"v.blk.{i}.{n}.{s}" for n in ("ln1", "ln2") for s in norms}
    return names


def test_metadata_and_tensor_names(case):
    md, tensors = read_gguf(case.gguf)
    a = case.arch
    assert md["general.architecture"] == a
    assert md[f"{a}.block_count"] == 2 and md[f"{a}.embedding_length"] == 64
    assert md[f"{a}.attention.head_count"] == 4 and md[f"{a}.attention.head_count_kv"] == 2
    assert md[f"{a}.rope.mrope_section"] == [2, 3, 3] and md[f"{a}.rope.dimension_count"] == 16
    assert md[f"{a}.rope.freq_base"] == 1e6
    assert md[f"{a}.vision.block_count"] == 2 and md[f"{a}.vision.embedding_length"] == 32
    assert md[f"{a}.vision.attention.head_count"] == 4 and md[f"{a}.vision.patch_size"] == 14
    assert md[f"{a}.vision.spatial_merge_size"] == 2 and md[f"{a}.vision.temporal_patch_size"] == 2
    assert md[f"{a}.vision.rope.freq_base"] == 10000.0
    if a == "qwen25vl":
        assert md[f"{a}.vision.window_size"] == 56 and md[f"{a}.vision.fullatt_block_indexes"] == [1]
    assert {n for n in tensors if n.startswith("v.")} == vision_names(a)
    assert not any(n.startswith("mm.") for n in tensors)
    assert tensors["v.patch_embd_0.weight"] == ("F32", (32, 3, 14, 14))
    assert tensors["v.blk.0.attn_k.weight"] == ("F32", (32, 32))
    assert tensors["output.weight"] == ("F32", (384, 64)) and "blk.1.attn_q.bias" in tensors


def test_fused_tensors_are_split_exactly(case):
    state = case.model.state_dict()
    qkv = state["model.visual.blocks.1.attn.qkv.weight"].numpy()
    qkv_bias = state["model.visual.blocks.1.attn.qkv.bias"].numpy()
    kernel = state["model.visual.patch_embed.proj.weight"].numpy()  # [32, 3, 2, 14, 14]
    with GGUFFile(case.gguf) as f:
        def tensor(name):
            t = f.tensors[name]
            return f.tensor_bytes(name).view(np.float32).reshape(t.shape)

        for i, part in enumerate(("attn_q", "attn_k", "attn_v")):
            assert np.array_equal(tensor(f"v.blk.1.{part}.weight"), qkv[32 * i : 32 * (i + 1)])
            assert np.array_equal(tensor(f"v.blk.1.{part}.bias"), qkv_bias[32 * i : 32 * (i + 1)])
        for frame in range(2):
            assert np.array_equal(tensor(f"v.patch_embd_{frame}.weight"), kernel[:, :, frame])


def test_the_registry_sends_qwen_vl_folders_to_the_splitting_converter(case):
    from pollama.models.qwen2vl.convert import Qwen2VLConverter, Qwen25VLConverter

    converters = supported_architectures()
    assert converters["Qwen2VLForConditionalGeneration"] is Qwen2VLConverter
    assert converters["Qwen2_5_VLForConditionalGeneration"] is Qwen25VLConverter


@pytest.mark.parametrize("backend", ["torch", "ggml"])
def test_f16_file(case, tmp_path_factory, backend):
    # F16 matrices (the 4-D patch kernels too): the logits move by F16's rounding only.
    # Measured max |ours - transformers|: 2e-3 to 4e-3.
    out = tmp_path_factory.mktemp("f16") / "tiny-f16.gguf"
    convert_hf(case.folder, out, outtype="f16")
    assert read_gguf(out)[1]["v.patch_embd_1.weight"] == ("F16", (32, 3, 14, 14))
    inputs = dict(case.processor(text=["Look:<|vision_start|><|image_pad|><|vision_end|>"],
                                 images=[Image.open(io.BytesIO(case.pngs["wide"]))], return_tensors="pt"))
    with torch.no_grad():
        ref = case.model(**inputs).logits[0].numpy()
    with StepEngine(out, backend=backend, num_ctx=64, kv_cache_type="f32") as engine:
        ours = engine.logits(engine.prompt_items("Look:[img-0]", [case.pngs["wide"]]))
    assert np.abs(ours - ref).max() < 2e-2


def edited(case, tmp_path, change) -> object:
    folder = tmp_path / "edited"
    shutil.copytree(case.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_refuses_mrope_sections_that_do_not_fit(case, tmp_path):
    folder = edited(case, tmp_path, lambda c: c["text_config"]["rope_parameters"].update(mrope_section=[2, 3, 2]))
    with pytest.raises(ConvertError, match=r"mrope_section \[2, 3, 2\] must split the 8 rotary frequencies"):
        convert_hf(folder, tmp_path / "out.gguf")


def test_refuses_another_vision_activation(case, tmp_path):
    folder = edited(case, tmp_path, lambda c: c["vision_config"].update(hidden_act="gelu"))
    with pytest.raises(ConvertError, match="vision_config.hidden_act='gelu'"):
        convert_hf(folder, tmp_path / "out.gguf")


def test_reads_hub_style_flat_configs(case, tmp_path):
    # Hub configs keep the text keys at the top and M-RoPE in rope_scaling (type "mrope").
    def flatten(c):
        text = c.pop("text_config")
        rope = text.pop("rope_parameters")
        scaling = {"type": "mrope", "mrope_section": rope["mrope_section"]}
        c.update(text, rope_theta=rope["rope_theta"], rope_scaling=scaling)

    folder = edited(case, tmp_path, flatten)
    convert_hf(folder, tmp_path / "flat.gguf", outtype="f32")
    with GGUFFile(tmp_path / "flat.gguf") as flat, GGUFFile(case.gguf) as nested:
        assert list(flat.tensors) == list(nested.tensors)
        assert all(np.array_equal(flat.tensor_bytes(n), nested.tensor_bytes(n)) for n in nested.tensors)
    md, _ = read_gguf(tmp_path / "flat.gguf")
    assert md[f"{case.arch}.rope.mrope_section"] == [2, 3, 3] and md[f"{case.arch}.rope.freq_base"] == 1e6


def test_pixel_limits_come_from_the_image_processors_config(case, tmp_path):
    # transformers 5 saves them as size.shortest_edge / longest_edge, older folders as
    # min_pixels / max_pixels; the model then resizes within them (smart resize).
    folder = edited(case, tmp_path, lambda c: None)
    (folder / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 784, "longest_edge": 28 * 28 * 2}}))
    convert_hf(folder, tmp_path / "limited.gguf", outtype="f32")
    md, _ = read_gguf(tmp_path / "limited.gguf")
    assert (md[f"{case.arch}.vision.min_pixels"], md[f"{case.arch}.vision.max_pixels"]) == (784, 1568)
    with StepEngine(tmp_path / "limited.gguf", backend="torch", num_ctx=64) as engine:
        image = engine.model.preprocess(case.pngs["wide"])  # 90x60 would be 84x56; at most 2 cells of 28x28 now
        assert image.grid_thw[1] * image.grid_thw[2] * 14 * 14 <= 1568

    (folder / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 5000, "max_pixels": 100}))
    with pytest.raises(ConvertError, match="min_pixels 5000 is above max_pixels 100"):
        convert_hf(folder, tmp_path / "bad.gguf", outtype="f32")
    (folder / "preprocessor_config.json").write_text(json.dumps({"max_pixels": "lots"}))
    with pytest.raises(ConvertError, match="max_pixels must be a positive integer"):
        convert_hf(folder, tmp_path / "bad.gguf", outtype="f32")
