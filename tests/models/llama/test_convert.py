"""HF Llama / SmolLM / Mistral checkpoints convert to GGUF "llama" files that compute what transformers does.

Also the pipeline's own duties, shown here once for all architectures: sharded checkpoints,
F16 output, and a one-line error for each kind of folder that cannot be converted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import numpy as np
import pytest

from models.tinyhf import (
    TOLERANCE, Case, assert_tokenizer_matches, bpe_tokenizer, build_case, convert, hf_greedy, hf_ids, hf_logits,
    max_logit_diff, our_greedy, our_logits, read_gguf, torch, transformers,
)
from pollama.create.convert import ConvertError, convert_hf
from pollama.fs.safetensors import SafetensorsError, SafetensorsFile, open_folder
from pollama.tokenizer import load_tokenizer
from pollama.tokenizer.convert import PRE_BY_SPLIT_REGEX

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def llama(tmp) -> Case:
    # GQA, Llama 3.1 RoPE scaling (frequency factors as a tensor), untied output, an ordinary
    # added token, and a vocabulary padded past the tokenizer (384 rows, 377 tokens).
    tok = bpe_tokenizer("llama-bpe", LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|end_of_text|>", add_bos=True,
                        added=("<think>",))
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    config = transformers.LlamaConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_parameters=rope, rms_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    return build_case(tmp, transformers.LlamaForCausalLM, config, tok)


def smollm(tmp) -> Case:
    # SmolLM's layout: tied embeddings, digits split one by one, ChatML, one K/V head (MQA).
    tok = bpe_tokenizer("smollm", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos="<|im_end|>",
                        bos="<|im_start|>", chat_template=CHATML)
    config = transformers.LlamaConfig(
        vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=128, rope_theta=100000.0, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    return build_case(tmp, transformers.LlamaForCausalLM, config, tok, seed=1)


def mistral(tmp) -> Case:
    # A head size that is not hidden/heads (32 vs 16), GQA, GPT-2's own pre-tokenizer.
    tok = bpe_tokenizer("gpt-2", ["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", add_bos=True)
    config = transformers.MistralConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rope_theta=1e6, sliding_window=None,
        bos_token_id=1, eos_token_id=2)
    return build_case(tmp, transformers.MistralForCausalLM, config, tok, seed=2)


BUILDERS = {"llama": llama, "smollm": smollm, "mistral": mistral}


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request, tmp_path_factory) -> Case:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_logits_match_transformers(case, backend):
    assert max_logit_diff(case, backend) < TOLERANCE


def test_ggml_with_its_f16_cache_is_off_only_by_the_cache_rounding(case):
    # The default cache rounds K and V to F16: measured 2.3e-3 to 3.9e-3 on these models (2e-6 with F32).
    assert max_logit_diff(case, "ggml", f32_cache=False) < 8e-3


@pytest.mark.parametrize("backend", ["ggml", "torch"])
def test_greedy_tokens_match_generate(case, backend):
    assert our_greedy(case.gguf, backend, case.ids) == hf_greedy(case.model, case.ids)


def test_tokenizer_matches_hf(case):
    assert_tokenizer_matches(case)


def test_llama_metadata_and_tensors(tmp_path):
    c = llama(tmp_path)
    md, tensors = read_gguf(c.gguf)
    assert md["general.architecture"] == "llama" and md["general.file_type"] == 0
    assert md["llama.attention.head_count"] == 4 and md["llama.attention.head_count_kv"] == 2
    assert md["llama.rope.freq_base"] == 500000.0 and md["llama.rope.dimension_count"] == 16
    assert "llama.rope.scaling.type" not in md  # llama3 scaling travels as rope_freqs.weight
    assert tensors["rope_freqs.weight"] == ("F32", (8,))
    assert tensors["blk.1.attn_k.weight"] == ("F32", (32, 64)) and "output.weight" in tensors
    assert md["tokenizer.ggml.pre"] == "llama-bpe" and md["tokenizer.ggml.add_bos_token"] is True
    types = md["tokenizer.ggml.token_type"]
    think = md["tokenizer.ggml.tokens"].index("<think>")
    assert types[0] == 3 and types[think] == 4 and md["tokenizer.ggml.tokens"][-1] == "[PAD383]" and types[-1] == 5


def test_smollm_ties_output_and_keeps_chat_template(tmp_path):
    c = smollm(tmp_path)
    md, tensors = read_gguf(c.gguf)
    assert "output.weight" not in tensors
    assert md["tokenizer.ggml.pre"] == "smollm" and md["tokenizer.ggml.add_bos_token"] is False
    assert md["tokenizer.chat_template"] == CHATML
    assert md["tokenizer.ggml.eos_token_id"] == 2


def test_f16_by_default(tmp_path):
    c = mistral(tmp_path)
    out = tmp_path / "f16.gguf"
    convert_hf(c.folder, out)
    md, tensors = read_gguf(out)
    assert md["general.file_type"] == 1
    assert tensors["blk.0.attn_q.weight"] == ("F16", (128, 64)) and tensors["token_embd.weight"][0] == "F16"
    assert tensors["blk.0.attn_norm.weight"] == ("F32", (64,))
    # Rounding weights to F16 moves these logits by 2.2e-3 (measured); the model is the same.
    assert np.abs(our_logits(out, "torch", c.ids) - hf_logits(c.model, c.ids)).max() < 5e-3


def test_sharded_checkpoint_converts_to_the_same_file(tmp_path):
    c = mistral(tmp_path / "one")
    sharded = tmp_path / "sharded" / "tiny"  # the same folder name: general.name comes from it
    c.model.save_pretrained(sharded, max_shard_size="100KB")
    c.tokenizer.save_pretrained(sharded)
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 2
    out = convert(sharded, tmp_path / "sharded.gguf")
    assert out.read_bytes() == c.gguf.read_bytes()


def test_bf16_checkpoint_converts(tmp_path):
    c = mistral(tmp_path / "f32")
    bf16 = tmp_path / "bf16" / "tiny"
    inv_freq = c.model.model.rotary_emb.inv_freq.clone()
    c.model.to(torch.bfloat16).save_pretrained(bf16)  # (in place: c.model is bf16 now)
    c.tokenizer.save_pretrained(bf16)
    out = convert(bf16, tmp_path / "bf16.gguf")
    md, tensors = read_gguf(out)
    assert md["general.file_type"] == 0 and tensors["blk.0.attn_q.weight"][0] == "F32"
    # The bf16 values, exactly: the same model in float32 computes what we compute. Its RoPE
    # frequencies stay float32, as ours are: .to(bfloat16) rounded that buffer too (9.2e-4 off).
    model = c.model.to(torch.float32)
    model.model.rotary_emb.inv_freq = inv_freq
    assert np.abs(our_logits(out, "torch", c.ids) - hf_logits(model, c.ids)).max() < TOLERANCE


def test_split_regexes_are_the_ones_ollama_knows():
    # Ollama names pre-tokenizers by the sha256 of their Split regexes: ours must be those strings.
    digests = {name: hashlib.sha256(regex.encode()).hexdigest() for regex, name in PRE_BY_SPLIT_REGEX.items()}
    assert digests == {
        "llama-bpe": "d98f9631be1e9607a9848c26c1f9eac1aa9fc21ac6ba82a2fc0741af9780a48f",
        "qwen2": "1ff7f41064896984db5d1bb6ff64fa4bc29007d08c1b439e505b7392777a319e",
        "qwen35": "00431aed57e696b747435f734d1e3b9b1bfd931a121fb5cac7129e97c181e9ba",
        "tekken": "1d64a9a8eaf9f1bd80331984d81fdd514e7feafe8df83a525dd31472f275699a",  # (not in Ollama's list)
        # o200k (gpt-oss), llama.cpp's name; not in Ollama's list, which converts gpt-oss apart.
        "gpt-4o": "2d1b8dc11e89af71459b36004f698ab3693f59fd84f63e8ec2b49564ab857420",
    }


def test_tekken_tokenizers_convert_as_tekken(tmp_path):
    # Mistral's Tekken regex (case-aware words, single digits): named "tekken", split as HF does.
    tok = bpe_tokenizer("tekken", ["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", add_bos=True)
    config = transformers.MistralConfig(
        vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    case = build_case(tmp_path, transformers.MistralForCausalLM, config, tok)
    md, _ = read_gguf(case.gguf)
    assert md["tokenizer.ggml.pre"] == "tekken"
    assert_tokenizer_matches(case)
    ours = load_tokenizer(md)
    for text in ("HTTPServer parseJSON iPhone XMLHttpRequest ÉCOLE élève", "a/b/c\n\npath/to/file 12345"):
        assert ours.encode(text, add_special=True, parse_special=True) == hf_ids(case.tokenizer, text), text


# -- errors: one line, naming what is at fault -----------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A convertible folder, to copy and break."""
    tmp = tmp_path_factory.mktemp("base")
    c = mistral(tmp)
    return c.folder


def broken(folder, tmp_path, name="broken"):
    out = tmp_path / name
    shutil.copytree(folder, out)
    return out


def convert_error(folder, tmp_path) -> str:
    with pytest.raises(ConvertError) as e:
        convert_hf(folder, tmp_path / "out.gguf")
    message = str(e.value)
    assert "\n" not in message and message
    assert not (tmp_path / "out.gguf").exists()
    return message


def test_error_no_weights(folder, tmp_path):
    f = broken(folder, tmp_path)
    (f / "model.safetensors").unlink()
    assert "no .safetensors weights" in convert_error(f, tmp_path)


def test_error_unknown_architecture(folder, tmp_path):
    f = broken(folder, tmp_path)
    config = json.loads((f / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (f / "config.json").write_text(json.dumps(config))
    assert "unsupported architecture 'FalconForCausalLM'" in convert_error(f, tmp_path)


def test_bert_folders_go_to_the_bert_converter(folder, tmp_path):
    f = broken(folder, tmp_path)
    config = json.loads((f / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (f / "config.json").write_text(json.dumps(config))
    assert "silu" in convert_error(f, tmp_path)  # refused by the BERT converter, as a ConvertError


def test_error_no_config(folder, tmp_path):
    f = broken(folder, tmp_path)
    (f / "config.json").unlink()
    assert "no config.json" in convert_error(f, tmp_path)


def write_safetensors(path, tensors: dict[str, tuple[str, list[int], bytes]], raw_header: bytes | None = None):
    """A safetensors file written by hand (dtypes and headers the library would refuse to write)."""
    header, data = {}, b""
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


def test_error_unsupported_dtype(folder, tmp_path):
    f = broken(folder, tmp_path)
    write_safetensors(f / "extra.safetensors", {"model.layers.0.mlp.up_proj.scale": ("F8_E4M3", [4], bytes(4))})
    message = convert_error(f, tmp_path)
    assert "'model.layers.0.mlp.up_proj.scale'" in message and "F8_E4M3" in message


def test_error_duplicate_tensor_across_files(folder, tmp_path):
    f = broken(folder, tmp_path)
    write_safetensors(f / "more.safetensors", {"model.norm.weight": ("F32", [64], bytes(256))})
    message = convert_error(f, tmp_path)
    assert "duplicate tensor name 'model.norm.weight'" in message


def test_error_duplicate_tensor_in_one_header(folder, tmp_path):
    f = broken(folder, tmp_path)
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    write_safetensors(f / "more.safetensors", {}, raw_header=f'{{"x.weight": {entry}, "x.weight": {entry}}}'.encode())
    (f / "more.safetensors").write_bytes((f / "more.safetensors").read_bytes() + bytes(4))
    assert "duplicate tensor name 'x.weight'" in convert_error(f, tmp_path)


def test_error_unmappable_tensor(folder, tmp_path):
    f = broken(folder, tmp_path)
    write_safetensors(f / "more.safetensors", {"model.layers.0.mlp.experts.weight": ("F32", [1], bytes(4))})
    assert "'model.layers.0.mlp.experts.weight' has no place in a llama GGUF" in convert_error(f, tmp_path)


def test_error_missing_tokenizer(folder, tmp_path):
    f = broken(folder, tmp_path)
    (f / "tokenizer.json").unlink()
    assert "no tokenizer" in convert_error(f, tmp_path)


def test_error_truncated_weights(folder, tmp_path):
    f = broken(folder, tmp_path)
    data = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "lie outside" in convert_error(f, tmp_path)


def test_error_index_names_a_missing_shard(folder, tmp_path):
    f = broken(folder, tmp_path)
    (f / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": "model-00002.safetensors"}}))
    assert "lists model-00002.safetensors, which is missing" in convert_error(f, tmp_path)


# -- the safetensors reader on its own -------------------------------------------------------------

def test_reader_gives_zero_copy_views_and_bf16_values(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    write_safetensors(tmp_path / "a.safetensors", {
        "f32": ("F32", [3], values.tobytes()), "bf16": ("BF16", [3, 1], bf16), "i32": ("I32", [1], bytes(4))})
    with SafetensorsFile(tmp_path / "a.safetensors") as f:
        t = f["f32"]
        assert not t.raw.flags.owndata and np.array_equal(t.numpy(), values)
        assert np.array_equal(f["bf16"].numpy(), values.reshape(3, 1))
        with pytest.raises(SafetensorsError, match="dtype I32"):
            f["i32"]


@pytest.mark.parametrize("header", [b"not json", b"[]", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}',
                                    b'{"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 4]}}'])
def test_reader_refuses_bad_headers(tmp_path, header):
    write_safetensors(tmp_path / "bad.safetensors", {}, raw_header=header)
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "bad.safetensors").read_bytes() + bytes(8))
    with pytest.raises(SafetensorsError):
        SafetensorsFile(tmp_path / "bad.safetensors")


def test_reader_refuses_a_header_longer_than_the_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(SafetensorsError, match="does not fit"):
        open_folder(tmp_path)


def test_reader_sees_what_the_safetensors_library_sees(tmp_path):
    from safetensors.numpy import load_file

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    expected = load_file(tmp_path / "model.safetensors")
    with open_folder(tmp_path) as f:
        assert sorted(f) == sorted(expected)
        for name, array in expected.items():
            assert np.array_equal(f[name].numpy(), array)
