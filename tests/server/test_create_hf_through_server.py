"""Creating from a Hugging Face folder through a server gives the model a create without one
gives: the client uploads every file the converter reads, chat_template.jinja included (where
transformers 5 saves the chat template, leaving it out of tokenizer_config.json)."""

from __future__ import annotations

import json

import transformers  # a dependency of the tests: missing, this fails rather than skips
from cliproc import pollama
from models.tinyhf import bpe_tokenizer, save_tiny

from pollama.create.pipeline import create_model
from pollama.fs.gguf import GGUFFile
from pollama.store.store import Store

# A template no built-in one renders like, so the GGUF keeps it as it is (no TEMPLATE layer).
JINJA = ("{% for message in messages %}[{{ message['role'] }}] {{ message['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}[assistant] {% endif %}")


def test_a_template_only_in_chat_template_jinja_survives_a_create_through_the_server(server, tmp_path):
    tok = bpe_tokenizer("llama-bpe", ["<s>", "</s>"], bos="<s>", eos="</s>", chat_template=JINJA)
    config = transformers.LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=0, eos_token_id=1)
    folder = tmp_path / "hf"
    save_tiny(transformers.LlamaForCausalLM, config, tok, folder)
    assert (folder / "chat_template.jinja").read_text() == JINJA  # where transformers put it...
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())  # ...and only there
    (tmp_path / "Modelfile").write_text(f"FROM {folder}\n")

    created = pollama("create", "jinja-tiny", "-f", str(tmp_path / "Modelfile"), env={"OLLAMA_HOST": server.host},
                      timeout=300)
    assert created.returncode == 0, created.stderr
    here = Store(tmp_path / "store")
    create_model(here, "jinja-tiny", (tmp_path / "Modelfile").read_text(), tmp_path)

    templates = []
    for store in (Store(server.models), here):
        resolved = store.resolve("jinja-tiny")
        assert resolved.template is None  # no Go template: the Jinja one is used at chat time
        with GGUFFile(resolved.model_path) as gguf:
            templates.append(gguf.metadata.get("tokenizer.chat_template"))
    assert templates == [JINJA, JINJA]
