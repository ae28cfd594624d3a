"""create picks a named template for a GGUF's Jinja chat_template, as Ollama does, and
capabilities come out of the metadata and the template as Ollama derives them."""

from __future__ import annotations

import pytest

from pollama.create.capabilities import model_capabilities
from pollama.create.pipeline import create_model
from pollama.fs.gguf import GGUFFile
from pollama.store.manifest import MediaType
from pollama.store.store import Store
from pollama.template import named_template
from realmodels import real_model


@pytest.fixture()
def store(tmp_path):
    return Store(tmp_path / "models")


def test_smollm2_gets_chatml_and_its_stop_strings(store):
    lines: list[str] = []
    create_model(store, "smol", f"FROM {real_model('smollm2')}\n", status=lines.append)
    assert "using autodetected template chatml" in lines
    model = store.resolve("smol")
    chatml = named_template("chatml")
    assert model.template == chatml.template
    assert model.params == chatml.params and model.params["stop"]  # the stop strings came along
    assert [layer.media_type for layer in model.manifest.layers] == [MediaType.MODEL, MediaType.TEMPLATE, MediaType.PARAMS]


def test_modelfile_template_and_parameters_win_per_key(store):
    modelfile = f'FROM {real_model("smollm2")}\nTEMPLATE "{{{{ .Prompt }}}}"\nPARAMETER temperature 0.5\n'
    create_model(store, "custom", modelfile)
    model = store.resolve("custom")
    assert model.template == "{{ .Prompt }}"
    # Ollama keeps the detected stop strings under the Modelfile's own parameters.
    assert model.params == {**named_template("chatml").params, "temperature": 0.5}
    create_model(store, "stops", f'FROM {real_model("smollm2")}\nPARAMETER stop "END"\n')
    assert store.resolve("stops").params == {"stop": ["END"]}  # a list is replaced whole


def test_parser_and_renderer_are_kept_in_the_config_and_inherited(store):
    create_model(store, "oss", f"FROM {real_model('smollm2')}\nPARSER harmony\nRENDERER some-renderer\n")
    assert {k: store.resolve("oss").config.get(k) for k in ("parser", "renderer")} == {
        "parser": "harmony", "renderer": "some-renderer"}
    create_model(store, "oss2", "FROM oss\nSYSTEM hi\n")  # as Ollama: the base's stay
    assert store.resolve("oss2").config.get("parser") == "harmony"
    create_model(store, "oss3", "FROM oss\nPARSER qwen3\n")
    assert store.resolve("oss3").config.get("parser") == "qwen3"


def test_no_chat_template_means_no_template_layer(store):
    lines: list[str] = []
    create_model(store, "base", f"FROM {real_model('gemma3-270m')}\n", status=lines.append)
    assert not any("autodetected" in line for line in lines)
    model = store.resolve("base")
    assert model.template is None and not model.params


def test_capabilities_of_the_real_models():
    with GGUFFile(real_model("smollm2")) as gguf:
        assert model_capabilities(gguf.metadata, named_template("chatml").template) == ["completion"]
    with GGUFFile(real_model("qwen2.5-coder-0.5b")) as gguf:
        # No named template matches Qwen 2.5's (it writes tools into the system turn), so its
        # own Jinja template is used, and that one takes tools.
        assert model_capabilities(gguf.metadata, None) == ["completion", "tools"]
    with GGUFFile(real_model("gemma3-270m")) as gguf:
        assert model_capabilities(gguf.metadata, None) == ["completion"]


@pytest.mark.parametrize(
    ("metadata", "template", "projector", "want"),
    [
        ({"general.architecture": "bert", "bert.pooling_type": 1}, None, False, ["embedding"]),
        ({"general.architecture": "gemma3", "gemma3.pooling_type": 1}, "{{ .Tools }}", False, ["embedding"]),
        ({"general.architecture": "llama"}, "{{ .Prompt }}", False, ["completion"]),
        ({"general.architecture": "llama"}, "{{ if .Tools }}{{ .Tools }}{{ end }}{{ .Prompt }}", False, ["completion", "tools"]),
        ({"general.architecture": "llama"}, "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>", False, ["completion", "insert"]),
        ({"general.architecture": "mllama", "mllama.vision.block_count": 32}, "{{ .Prompt }}", False, ["completion", "vision"]),
        ({"general.architecture": "llama"}, "{{ .Prompt }}", True, ["completion", "vision"]),
        (
            {"general.architecture": "qwen3"},
            "{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}{{ end }}"
            "{{ if .Tools }}{{ .Tools }}{{ end }}",
            False,
            ["completion", "tools", "thinking"],
        ),
        ({"general.architecture": "llama"}, "{{ if .Prompt }", False, ["completion"]),  # does not parse
        ({"general.architecture": "llama", "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}, None, False, ["completion"]),
        (
            {"general.architecture": "llama", "tokenizer.chat_template": "{% if tools %}{{ tools | tojson }}{% endif %}<think>\n</think>"},
            None,
            False,
            ["completion", "tools", "thinking"],
        ),
    ],
)
def test_capability_rules(metadata, template, projector, want):
    assert model_capabilities(metadata, template, projector=projector) == want


def test_harmony_capabilities():
    from pathlib import Path

    gpt_oss = (Path(__file__).parents[1] / "template" / "data" / "gpt_oss_chat_template.jinja").read_text("utf-8")
    md = {"general.architecture": "gpt-oss", "tokenizer.chat_template": gpt_oss}
    # gpt-oss's GGUF as it comes: its Jinja template reads tools; its family thinks.
    assert model_capabilities(md, None, family="gpt-oss") == ["completion", "tools", "thinking"]
    # Harmony found in the Jinja template alone still thinks (llama.cpp's gpt-oss format).
    assert model_capabilities({**md, "general.architecture": "llama"}, None) == ["completion", "tools", "thinking"]
    # Ollama: PARSER harmony adds what its parser supports, whatever the template shows.
    assert model_capabilities({"general.architecture": "llama"}, "{{ .Prompt }}", parser="harmony") == [
        "completion", "tools", "thinking"]
    assert model_capabilities({"general.architecture": "llama"}, "{{ .Prompt }}", parser="qwen3") == ["completion"]
