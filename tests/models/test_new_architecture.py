"""Adding an architecture touches only its folder (docs/adding-a-model.md): a copy of
pollama/models/_template, in a folder that POLLAMA_ARCH_PATH names, is found by `create` (its
converter) and by `run` (its model) with no other edit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cliproc import pollama
from models.llama.test_convert import smollm

import pollama as package

TEMPLATE = Path(package.__file__).parent / "models" / "_template"
# No server may answer: run loads the model in its own process, which must find the folder too.
NO_SERVER = "127.0.0.1:9"


def test_a_copied_template_is_created_and_run_with_no_other_edit(tmp_path):
    plugins = tmp_path / "architectures"
    shutil.copytree(TEMPLATE, plugins / "mymodel", ignore=shutil.ignore_patterns("__pycache__"))
    c = smollm(tmp_path)  # a tiny Llama checkpoint, which the template computes as it stands
    folder = tmp_path / "tiny-mymodel"
    shutil.copytree(c.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["MyModelForCausalLM"]  # the class the template's converter takes
    (folder / "config.json").write_text(json.dumps(config))
    (tmp_path / "Modelfile.mymodel").write_text(f"FROM {folder}\n")
    (tmp_path / "Modelfile.llama").write_text(f"FROM {c.folder}\n")

    env = {"OLLAMA_MODELS": str(tmp_path / "store"), "OLLAMA_HOST": NO_SERVER, "POLLAMA_ARCH_PATH": str(plugins)}
    for name in ("mymodel", "llama"):
        created = pollama("create", f"tiny-{name}", "-f", str(tmp_path / f"Modelfile.{name}"), env=env, timeout=300)
        assert created.returncode == 0, created.stderr
    shown = pollama("show", "tiny-mymodel", env=env, timeout=300)
    assert shown.returncode == 0 and "mymodel" in shown.stdout, shown

    runs = [pollama("run", f"tiny-{name}", "Hello world", "--temperature", "0", "--num-predict", "8", env=env,
                    timeout=300)
            for name in ("mymodel", "llama")]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.strip()  # the template is Llama's decoder

    # Without the path the architecture is unknown, in one line.
    unknown = pollama("run", "tiny-mymodel", "Hello", env={**env, "POLLAMA_ARCH_PATH": ""}, timeout=300)
    assert unknown.returncode != 0 and "unknown model architecture 'mymodel'" in unknown.stderr, unknown.stderr
