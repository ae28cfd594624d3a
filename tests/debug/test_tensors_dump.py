"""`pollama tensors --json` (the dump step) lists what Ollama's guide's extraction snippet lists.

The snippet (Ollama's model/README.md, step 3) loads a .safetensors file with
safetensors.torch.load_file, or anything else with torch.load(weights_only=True), and prints
every tensor's name and shape in the state dict's order. The same, re-done here, is the oracle.
"""

from __future__ import annotations

import argparse
import json

import pytest
from models.llama.test_convert import smollm

from pollama.cli.models import cmd_tensors

import torch  # noqa: E402


def seed_snippet_graph(path) -> list[dict]:
    """[{"name", "shape"}] as the guide's extract_graph() lists them."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, weights_only=True)
    return [{"name": name, "shape": list(t.shape)} for name, t in state.items() if isinstance(t, torch.Tensor)]


def pollama_tensors_json(path, capsys) -> list[dict]:
    assert cmd_tensors(argparse.Namespace(path=str(path), json=True)) == 0
    return [{"name": row["name"], "shape": row["shape"]} for row in json.loads(capsys.readouterr().out)]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return smollm(tmp_path_factory.mktemp("smollm"))


def test_safetensors_listing_equals_the_snippet(case, capsys):
    path = case.folder / "model.safetensors"
    assert pollama_tensors_json(path, capsys) == seed_snippet_graph(path)


def test_pytorch_checkpoint_listing_equals_the_snippet(case, tmp_path, capsys):
    path = tmp_path / "pytorch_model.bin"
    torch.save(case.model.state_dict(), path)
    assert pollama_tensors_json(path, capsys) == seed_snippet_graph(path)
