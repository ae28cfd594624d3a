"""`create` from PyTorch checkpoints (pytorch_model.bin, shards with their index, consolidated.pth).

The checkpoints are written as transformers lays them out (torch.save of the state dict;
transformers 5 itself saves only safetensors) and proven readable by transformers itself,
which must load them back to the same logits. Our conversion of each must equal the
conversion of the same weights as safetensors, tensor for tensor, and compute transformers'
logits. Hostile or broken checkpoints are one-line errors that leave nothing behind.
"""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cliproc import assert_one_line_error, pollama
from models.tinyhf import (
    PROMPT,
    bpe_tokenizer,
    hf_ids,
    hf_logits,
    our_logits,
    save_tiny,
    torch,
    transformers,
)

from pollama.models.checkpoint import find_weights
from pollama.create.pipeline import create_model
from pollama.fs.gguf import GGUFFile
from pollama.store.store import Store


def save_bin(model, folder: Path, shards: int = 1) -> None:
    """The model's state dict as pytorch_model.bin, or as N shards with pytorch_model.bin.index.json."""
    state = model.state_dict()  # tied weights stay two names of one storage, as in HF's files
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    names = list(state)
    weight_map = {}
    for i in range(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def without_safetensors(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    return dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama with tied embeddings, as safetensors (tmp/st/tiny); the model and its prompt ids."""
    tmp = tmp_path_factory.mktemp("torch-ckpt")
    tok = bpe_tokenizer("llama-bpe", ["<|begin_of_text|>", "<|end_of_text|>"], bos="<|begin_of_text|>",
                        eos="<|end_of_text|>", add_bos=True)
    config = transformers.LlamaConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=1, tie_word_embeddings=True)
    folder = tmp / "st" / "tiny"
    model = save_tiny(transformers.LlamaForCausalLM, config, tok, folder)
    store = Store(tmp / "store")
    create_model(store, "st", f"FROM {folder}\n", tmp)
    ids = hf_ids(transformers.AutoTokenizer.from_pretrained(folder), PROMPT)
    return model, folder, ids, store.resolve("st").model_path, tmp


def assert_same_gguf(a: Path, b: Path) -> None:
    with GGUFFile(a) as x, GGUFFile(b) as y:
        assert x.metadata == y.metadata
        assert list(x.tensors) == list(y.tensors)
        for name in x.tensors:
            assert np.array_equal(x.tensor_bytes(name), y.tensor_bytes(name)), name


@pytest.mark.parametrize("shards", [1, 3], ids=["pytorch_model.bin", "sharded"])
def test_bin_checkpoint_creates_the_safetensors_model(tiny, shards):
    model, st_folder, ids, st_gguf, tmp = tiny
    folder = without_safetensors(st_folder, tmp / f"bin{shards}" / "tiny")
    save_bin(model, folder, shards)
    assert find_weights(folder)[0] == "torch"
    # transformers reads our checkpoint back to the same weights.
    loaded = transformers.LlamaForCausalLM.from_pretrained(folder, use_safetensors=False).eval()
    want = model.state_dict()
    assert set(loaded.state_dict()) == set(want)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, want[name]), name

    store = Store(tmp / f"store-bin{shards}")
    create_model(store, "bin", f"FROM {folder}\n", tmp)
    gguf = store.resolve("bin").model_path
    assert_same_gguf(gguf, st_gguf)
    err = float(np.abs(our_logits(gguf, "ggml", ids) - hf_logits(loaded, ids)).max())
    assert err < 0.03, err  # F16 weights, as create writes them (test_quantized_create's F16 bound)


def test_consolidated_pth_and_the_order_of_sources(tiny):
    model, st_folder, _, st_gguf, tmp = tiny
    folder = without_safetensors(st_folder, tmp / "pth" / "tiny")
    torch.save(model.state_dict(), folder / "consolidated.00.pth")
    assert find_weights(folder) == ("torch", [folder / "consolidated.00.pth"])
    store = Store(tmp / "store-pth")
    create_model(store, "pth", f"FROM {folder}\n", tmp)
    assert_same_gguf(store.resolve("pth").model_path, st_gguf)

    # Ollama's order: safetensors, pytorch_model*.bin, consolidated*.pth, *.gguf, then a GGUF *.bin.
    zeros = {n: torch.zeros_like(t) for n, t in model.state_dict().items()}
    torch.save(zeros, folder / "pytorch_model.bin")
    assert find_weights(folder) == ("torch", [folder / "pytorch_model.bin"])
    shutil.copy(st_folder / "model.safetensors", folder / "model.safetensors")
    assert find_weights(folder)[0] == "safetensors"
    create_model(store, "both", f"FROM {folder}\n", tmp)  # the safetensors weights, not the zeros
    assert_same_gguf(store.resolve("both").model_path, st_gguf)

    only_gguf = tmp / "gguf-only"
    only_gguf.mkdir()
    shutil.copy(st_folder / "config.json", only_gguf)
    shutil.copy(st_gguf, only_gguf / "ggml-model.bin")
    assert find_weights(only_gguf) == ("gguf", [only_gguf / "ggml-model.bin"])
    shutil.copy(st_gguf, only_gguf / "model.gguf")
    assert find_weights(only_gguf) == ("gguf", [only_gguf / "model.gguf"])
    (only_gguf / "pytorch_model.bin").write_text("version https://git-lfs.github.com/spec/v1\n")  # not a zip
    assert find_weights(only_gguf)[0] == "gguf"
    create_model(store, "gguf", f"FROM {only_gguf}\n", tmp)
    assert store.resolve("gguf").model_path.read_bytes() == st_gguf.read_bytes()


def hostile_pickle(marker: Path) -> bytes:
    # GLOBAL os.system, called on a shell command: what unpickling a hostile .bin would run.
    command = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nq\x00X" + len(command).to_bytes(4, "little") + command + b"\x85R."


@pytest.mark.parametrize("damage", ["os.system", "truncated", "lfs pointer"])
def test_bad_checkpoints_are_one_line_errors_and_create_nothing(tiny, damage):
    model, st_folder, _, _, tmp = tiny
    folder = without_safetensors(st_folder, tmp / f"bad-{damage.replace(' ', '-')}" / "tiny")
    marker = folder / "pwned"
    if damage == "os.system":
        with zipfile.ZipFile(folder / "pytorch_model.bin", "w") as z:
            z.writestr("archive/data.pkl", hostile_pickle(marker))
            z.writestr("archive/version", "3\n")
        control = folder / "control"
        pickle.loads(hostile_pickle(control))  # the payload is real: plain pickle runs it (a harmless touch)
        assert control.exists()
        needle = "os.system"
    elif damage == "truncated":
        save_bin(model, folder)
        data = (folder / "pytorch_model.bin").read_bytes()
        (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
        needle = "pytorch_model.bin"
    else:
        (folder / "pytorch_model.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
        needle = "pytorch_model.bin"
    root = tmp / f"store-bad-{damage.replace(' ', '-')}"
    mf = tmp / f"Modelfile-{damage.replace(' ', '-')}"
    mf.write_text(f"FROM {folder}\n")
    result = pollama("create", "bad", "-f", str(mf), env={"OLLAMA_MODELS": str(root)}, timeout=300)
    assert_one_line_error(result, needle)
    assert not marker.exists()
    assert Store(root).list() == []
    blobs = root / "blobs"
    assert not blobs.exists() or not any(blobs.iterdir())
