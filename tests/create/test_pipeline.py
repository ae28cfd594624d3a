"""create → list → show → cp → rm through the real command, on a store of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cliproc import assert_one_line_error, pollama
from pollama.create.modelfile import parse_modelfile
from pollama.store.store import Store
from realmodels import real_model


@pytest.fixture()
def store_env(tmp_path):
    root = tmp_path / "models"
    return root, {"OLLAMA_MODELS": str(root), "POLLAMA_CACHE": str(tmp_path / "cache")}


def write_modelfile(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_create_list_show_run_copy_remove(tmp_path, store_env):
    root, env = store_env
    gguf = real_model("smollm2")
    mf = write_modelfile(tmp_path / "Modelfile", f'''FROM {gguf}
PARAMETER temperature 0
PARAMETER repeat_penalty 1
PARAMETER stop "<|im_end|>"
PARAMETER num_predict 4
SYSTEM """You are terse."""
MESSAGE user Hi
MESSAGE assistant Hello!
LICENSE """Apache License 2.0"""
''')
    result = pollama("create", "smol", "-f", str(mf), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "gathering model components" and lines[-2:] == ["writing manifest", "success"]
    assert any(line.startswith("creating new layer sha256:") for line in lines)

    listed = pollama("list", env=env).stdout.splitlines()
    assert listed[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"] and listed[1].startswith("smol:latest")

    shown = pollama("show", "smol", env=env).stdout
    for needle in ("architecture        llama", "parameters          134.52M", "quantization        Q4_1", "completion", "You are terse."):
        assert needle in shown, shown

    # show --modelfile parses back to the same model.
    text = pollama("show", "smol", "--modelfile", env=env).stdout
    again = parse_modelfile(text)
    original = parse_modelfile(mf.read_text())
    assert again.parameters == original.parameters and again.system == original.system
    assert again.messages == original.messages and again.license == original.license

    # run answers through the stored model: its autodetected chatml template with the SYSTEM
    # and MESSAGEs, and its parameters (greedy, 4 tokens, stop) — what the same steps give here.
    ran = pollama("run", "smol", "The capital of France is", env=env)
    assert ran.returncode == 0, ran
    assert ran.stdout == _greedy_chat(gguf, [("system", "You are terse."), ("user", "Hi"), ("assistant", "Hello!"),
                                             ("user", "The capital of France is")], 4) + "\n"

    assert pollama("cp", "smol", "team/smol:v2", env=env).returncode == 0
    store = Store(root)
    assert {m.name.display for m in store.list()} == {"smol:latest", "team/smol:v2"}
    assert pollama("rm", "smol", env=env).returncode == 0
    blobs_left = set((root / "blobs").iterdir())
    assert blobs_left, "blobs still used by team/smol:v2 must stay"
    assert pollama("rm", "team/smol:v2", env=env).returncode == 0
    assert not any((root / "blobs").iterdir()) and store.list() == []


def _greedy_chat(gguf: Path, turns: list[tuple[str, str]], n: int) -> str:
    """The greedy answer of SmolLM2 to a conversation in hand-written ChatML."""
    from pollama.runner.generation import GenerateOptions
    from pollama.runner.parallel import ParallelEngine
    from pollama.sample import SamplerOptions

    prompt = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"
    with ParallelEngine(gguf, num_ctx=512) as engine:
        events = engine.submit(engine.tokenizer.encode(prompt), GenerateOptions(
            num_predict=n, stop=["<|im_end|>"], sampler=SamplerOptions(temperature=0.0, repeat_penalty=1.0)))
        return "".join(e.text for e in events if hasattr(e, "text"))


def test_from_an_existing_model_reuses_layers_and_merges_parameters(tmp_path, store_env):
    root, env = store_env
    base = write_modelfile(tmp_path / "Modelfile.base", f'FROM {real_model("smollm2")}\nPARAMETER stop a\nPARAMETER stop b\nPARAMETER top_k 5\n')
    assert pollama("create", "base", "-f", str(base), env=env).returncode == 0
    child = write_modelfile(tmp_path / "Modelfile.child", "FROM base\nPARAMETER stop c\nPARAMETER temperature 0.5\n")
    result = pollama("create", "child", "-f", str(child), env=env)
    assert result.returncode == 0, result.stderr
    assert "using existing layer" in result.stdout
    store = Store(root)
    b, c = store.resolve("base"), store.resolve("child")
    assert b.model_path == c.model_path  # the same weights blob
    assert c.params == {"stop": ["c"], "top_k": 5, "temperature": 0.5}  # per key; the list replaced whole


@pytest.mark.parametrize(
    "modelfile, needle",
    [
        ("FROM ./nowhere.gguf\n", "nowhere.gguf"),
        ("FROM no-such-model\n", "not found"),
        ("FROM x\nPARAMETER not_an_option 1\n", "line 2"),
        ("PARAMETER temperature 1\n", "FROM"),
        ("FROM x\nFLY away\n", "line 2"),
    ],
)
def test_bad_modelfiles_are_one_line_errors(tmp_path, store_env, modelfile, needle):
    _, env = store_env
    mf = write_modelfile(tmp_path / "Modelfile", modelfile)
    assert_one_line_error(pollama("create", "bad", "-f", str(mf), env=env), needle)


def test_folder_without_weights_and_quantizing_a_quantized_model(tmp_path, store_env):
    root, env = store_env
    empty = tmp_path / "empty"
    empty.mkdir()
    mf = write_modelfile(tmp_path / "Modelfile", f"FROM {empty}\n")
    assert_one_line_error(pollama("create", "bad", "-f", str(mf), env=env))
    mf = write_modelfile(tmp_path / "Modelfile", f"FROM {real_model('smollm2')}\n")
    assert_one_line_error(pollama("create", "bad", "-f", str(mf), "-q", "q8_0", env=env), "F16")
    assert not Store(root).list()  # nothing half-made is visible


def test_missing_model_in_store_commands(store_env):
    _, env = store_env
    assert_one_line_error(pollama("show", "ghost", env=env), "not found")
    assert_one_line_error(pollama("rm", "ghost", env=env), "not found")
    assert_one_line_error(pollama("run", "ghost", "hi", env=env), "not found")
    assert_one_line_error(pollama("create", "../evil", "-f", "/dev/null", env=env))


def test_tensors_lists_gguf_and_checkpoints(tmp_path):
    gguf = real_model("smollm2")
    rows = json.loads(pollama("tensors", str(gguf), "--json").stdout)
    assert len(rows) == 272 and rows[0] == {"name": "token_embd.weight", "shape": [49152, 576], "dtype": "Q8_0"}
    import torch
    from safetensors.torch import save_file

    save_file({"a.weight": torch.zeros(3, 4), "b": torch.zeros(2, dtype=torch.float16)}, tmp_path / "m.safetensors")
    torch.save({"c": torch.zeros(5, 6, dtype=torch.bfloat16)}, tmp_path / "pytorch_model.bin")
    st = json.loads(pollama("tensors", str(tmp_path / "m.safetensors"), "--json").stdout)
    assert st == [{"name": "a.weight", "shape": [3, 4], "dtype": "F32"}, {"name": "b", "shape": [2], "dtype": "F16"}]
    pt = pollama("tensors", str(tmp_path / "pytorch_model.bin"))
    assert pt.stdout.split("\n")[1].split() == ["c", "[5,", "6]", "BF16"]
