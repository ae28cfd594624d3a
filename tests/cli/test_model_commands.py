"""create, show, list, cp and rm have one implementation, the server's client: without a server
they go through the same server started in the CLI's process, so they print what they print
through a real `pollama serve` on the same store, and say in one stderr line where they ran."""

from __future__ import annotations

import json

import pytest
import transformers  # a dependency of the tests: missing, this fails rather than skips
from cliproc import assert_one_line_error, dead_host, no_server_note, pollama
from models.tinyhf import bpe_tokenizer, save_tiny
from realmodels import real_model
from server.conftest import start_server, stop_server

from pollama.create.pipeline import create_model
from pollama.fs.gguf import GGUFFile
from pollama.store.store import Store

MODELFILE = '''FROM {gguf}
TEMPLATE """{{{{ if .System }}}}<|im_start|>system
{{{{ .System }}}}<|im_end|>
{{{{ end }}}}<|im_start|>user
{{{{ .Prompt }}}}<|im_end|>
<|im_start|>assistant
"""
PARAMETER temperature 0
PARAMETER stop "<|im_end|>"
PARAMETER stop "<|endoftext|>"
SYSTEM """You are terse.
You answer in one word."""
MESSAGE user Hi
MESSAGE assistant Hello!
LICENSE """Apache License 2.0"""
LICENSE """Second license
of two lines"""
'''


def note(host: str, command: str) -> str:
    return no_server_note(host, f"{command} on the store")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    real_model("smollm2")
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    stop_server(srv)


def test_show_list_cp_rm_print_the_same_with_and_without_a_server(server, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text(MODELFILE.format(gguf=real_model("smollm2")))
    served_env = {"OLLAMA_HOST": server.host}
    created = pollama("create", "showme", "-f", str(mf), env=served_env)
    assert created.returncode == 0, created.stderr
    host = dead_host()
    here_env = {"OLLAMA_HOST": host, "OLLAMA_MODELS": str(server.models)}  # the server's store, no server

    for flags in ([], ["--modelfile"], ["--parameters"], ["--template"], ["--system"], ["--license"], ["-v"]):
        served = pollama("show", "showme", *flags, env=served_env)
        here = pollama("show", "showme", *flags, env=here_env)
        assert served.returncode == 0 and served.stderr == "", (flags, served.stderr)
        assert here.returncode == 0 and here.stderr == note(host, "show"), (flags, here.stderr)
        assert here.stdout == served.stdout and served.stdout.strip(), flags
    # What Ollama's show prints for them: strings quoted, every stop value, both licenses.
    parameters = pollama("show", "showme", "--parameters", env=here_env).stdout.splitlines()
    assert [line.split(None, 1) for line in parameters] == [
        ["stop", '"<|im_end|>"'], ["stop", '"<|endoftext|>"'], ["temperature", "0"]]
    assert pollama("show", "showme", "--license", env=here_env).stdout == (
        "Apache License 2.0\nSecond license\nof two lines\n")

    served_list = pollama("list", env=served_env).stdout.splitlines()
    here_list = pollama("list", env=here_env).stdout.splitlines()
    assert [row.split()[:4] for row in here_list] == [row.split()[:4] for row in served_list]  # not MODIFIED

    copied = pollama("cp", "showme", "team/showme:v2", env=here_env)
    assert (copied.returncode, copied.stdout, copied.stderr) == (
        0, "copied 'showme' to 'team/showme:v2'\n", note(host, "cp"))
    with server.http() as http:  # the server sees what the command did to its store
        names = {m["name"] for m in http.get("/api/tags").json()["models"]}
    assert {"showme:latest", "team/showme:v2"} <= names

    removed = pollama("rm", "showme", "team/showme:v2", env=here_env)
    assert (removed.returncode, removed.stdout, removed.stderr) == (
        0, "deleted 'showme'\ndeleted 'team/showme:v2'\n", note(host, "rm"))
    assert not Store(server.models).list()
    # An error is its one line: no note before or after it.
    assert_one_line_error(pollama("rm", "showme", env=here_env), "model 'showme' not found")
    assert_one_line_error(pollama("show", "showme", env=here_env), "model 'showme' not found")
    assert_one_line_error(pollama("cp", "showme", "other", env=here_env), 'model "showme" not found')


# A template no built-in one renders like, so the GGUF keeps it as it is (no TEMPLATE layer).
JINJA = ("{% for message in messages %}[{{ message['role'] }}] {{ message['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}[assistant] {% endif %}")


def test_create_from_a_folder_without_a_server_uploads_it_and_keeps_only_the_model(tmp_path):
    """The checkpoint's files go to the in-process server through /api/blobs, as Ollama's client
    sends them; the model is the one create_model makes of the folder directly, RENDERER and
    PARSER included, and the uploaded files leave the store with the server."""
    tok = bpe_tokenizer("llama-bpe", ["<s>", "</s>"], bos="<s>", eos="</s>", chat_template=JINJA)
    config = transformers.LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=0, eos_token_id=1)
    save_tiny(transformers.LlamaForCausalLM, config, tok, tmp_path / "hf")
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM ./hf\nRENDERER some-renderer\nPARSER qwen3\nPARAMETER num_ctx 64\n")  # FROM relative to it
    root = tmp_path / "models"
    host = dead_host()
    created = pollama("create", "tiny", "-f", str(mf), env={"OLLAMA_HOST": host, "OLLAMA_MODELS": str(root)},
                      timeout=300)
    assert created.returncode == 0, created.stderr
    assert created.stderr == note(host, "create")
    lines = created.stdout.splitlines()
    assert lines[0] == "gathering model components" and "converting model" in lines
    assert lines[-2:] == ["writing manifest", "success"]

    store = Store(root)
    manifest = store.read_manifest("tiny")
    kept = {layer.digest for layer in manifest.all_layers()}
    assert {p.name.replace("-", ":", 1) for p in (root / "blobs").iterdir()} == kept  # no safetensors, no json
    config_blob = json.loads(store.blob_path(manifest.config.digest).read_bytes())
    assert (config_blob["renderer"], config_blob["parser"]) == ("some-renderer", "qwen3")

    direct = Store(tmp_path / "direct")
    create_model(direct, "tiny", mf.read_text(), tmp_path)
    ours, theirs = store.resolve("tiny"), direct.resolve("tiny")
    assert ours.params == theirs.params == {"num_ctx": 64}
    # The same GGUF but for general.name, which the converter takes from the folder's name: the
    # server converts the uploaded files from a staging folder of its own.
    with GGUFFile(ours.model_path) as a, GGUFFile(theirs.model_path) as b:
        assert {**a.metadata, "general.name": "hf"} == b.metadata
        assert [(t.name, t.type, list(t.ne)) for t in a.tensors.values()] == \
            [(t.name, t.type, list(t.ne)) for t in b.tensors.values()]
    assert ours.model_path.stat().st_size == theirs.model_path.stat().st_size


def test_a_missing_adapter_is_named_in_one_line(tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {real_model('smollm2')}\nADAPTER ./lora.gguf\n")
    result = pollama("create", "bad", "-f", str(mf), env={"OLLAMA_HOST": dead_host(), "OLLAMA_MODELS": str(tmp_path / "m")})
    assert_one_line_error(result, "ADAPTER ./lora.gguf: no such file")
    assert not (tmp_path / "m" / "blobs").exists() or not any((tmp_path / "m" / "blobs").iterdir())


def test_a_create_error_names_the_file_as_the_user_gave_it(tmp_path):
    """Not by the folder where the server staged the upload; the upload leaves with the server."""
    (tmp_path / "notes.gguf").write_text("not a model")
    (tmp_path / "Modelfile").write_text("FROM ./notes.gguf\n")
    root = tmp_path / "m"
    result = pollama("create", "bad", "-f", str(tmp_path / "Modelfile"), env={"OLLAMA_HOST": dead_host(), "OLLAMA_MODELS": str(root)})
    line = assert_one_line_error(result)
    assert line.startswith("Error: notes.gguf: not a GGUF file"), line
    assert not any((root / "blobs").iterdir())  # it was uploaded, and is gone
