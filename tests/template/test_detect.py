"""A HF Jinja chat_template maps to the named Go template that renders the same prompts."""

from __future__ import annotations

import pytest
from realmodels import real_model

from pollama.template.detect import detect_from_gguf_metadata, detect_named
from pollama.template.jinja import render_chat_template
from pollama.template.named import named_template
from pollama.template.prompt import execute

# Hand-written Jinja templates in the styles the model cards document.
LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
    "{{ m.content | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

MISTRAL_STYLE = """{{ bos_token }}
{%- if messages[0].role == 'system' %}
    {%- set system = messages[0].content + '\\n\\n' %}
    {%- set rest = messages[1:] %}
{%- else %}
    {%- set system = '' %}
    {%- set rest = messages %}
{%- endif %}
{%- for m in rest %}
    {%- if (m.role == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('roles must alternate user/assistant') }}
    {%- endif %}
    {%- if m.role == 'user' %}
        {{- '[INST] ' + (system if loop.first else '') + m.content + '[/INST]' }}
    {%- else %}
        {{- ' ' + m.content + eos_token }}
    {%- endif %}
{%- endfor %}"""

ZEPHYR_STYLE = """{% for m in messages %}
{{ '<|' + m.role + '|>\\n' + m.content + eos_token }}
{% endfor %}
{% if add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}"""

GEMMA_STYLE = """{{ bos_token }}
{%- for m in messages %}
    {%- if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}
    {%- set role = 'model' if m.role == 'assistant' else m.role %}
    {{- '<start_of_turn>' + role + '\\n' + m.content | trim + '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"""

# Gemma 3's documented format: the system text opens the first user turn, then a blank line.
GEMMA3_STYLE = """{{ bos_token }}
{%- if messages[0].role == 'system' %}
    {%- set prefix = messages[0].content + '\\n\\n' %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set prefix = '' %}
    {%- set turns = messages %}
{%- endif %}
{%- for m in turns %}
    {%- set role = 'model' if m.role == 'assistant' else m.role %}
    {{- '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + m.content | trim + '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"""

PHI3_STYLE = (
    "{% for m in messages %}{{ '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

CHATML_STYLE = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama 2's model-card format: <<SYS>> only inside the first instruction, "[INST] q [/INST] a </s>".
LLAMA2_CARD_STYLE = """{%- for m in messages if m.role != 'system' %}
    {%- if m.role == 'user' %}
        {%- set sys = messages[0].content if (loop.first and messages[0].role == 'system') else none %}
        {{- bos_token + '[INST] ' + ('<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' if sys else '') + m.content + ' [/INST]' }}
    {%- else %}
        {{- ' ' + m.content + ' ' + eos_token }}
    {%- endif %}
{%- endfor %}"""

UNRELATED = "{% for m in messages %}### {{ m.role | upper }} >> {{ m.content }}\n{% endfor %}>> "


@pytest.mark.parametrize("template,name", [
    (LLAMA3_STYLE, "llama3-instruct"),
    (MISTRAL_STYLE, "mistral-instruct"),
    (ZEPHYR_STYLE, "zephyr"),
    (GEMMA_STYLE, "gemma-instruct"),
    (GEMMA3_STYLE, "gemma3-instruct"),
    (PHI3_STYLE, "phi-3"),
    (CHATML_STYLE, "chatml"),
], ids=["llama3", "mistral", "zephyr", "gemma", "gemma3", "phi-3", "chatml"])
def test_styles_map_to_their_names(template, name):
    found = detect_named(template, bos_token="<s>", eos_token="</s>")
    assert found is not None and found.name == name


def test_gemma3_named_template_renders_as_gemma3_jinja():
    # Our gemma3-instruct against a Jinja template written from Gemma 3's documented format.
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    jinja = render_chat_template(GEMMA3_STYLE, conv, add_generation_prompt=True, bos_token="<bos>")
    go = execute(named_template("gemma3-instruct").template, messages=conv)
    assert jinja == "<bos>" + go


def test_unrelated_template_maps_to_nothing():
    assert detect_named(UNRELATED) is None


def test_invalid_or_hostile_template_maps_to_nothing():
    assert detect_named("{% for m in messages %}") is None
    assert detect_named("{{ ''.__class__.__mro__ }}") is None


def test_llama2_card_format_is_not_ollamas_llama2_chat():
    # Ollama's llama2-chat always writes an (empty) <<SYS>> block; the model card's format
    # does not, so the prompts differ and the Jinja template is kept as it is.
    assert detect_named(LLAMA2_CARD_STYLE, bos_token="<s>", eos_token="</s>") is None


def test_near_miss_within_a_few_characters():
    # An extra blank line after the system turn: one edit on each of the 3 system probes.
    near = CHATML_STYLE.replace("{% endfor %}", "{% if m.role == 'system' %}{{ '\\n' }}{% endif %}{% endfor %}")
    assert detect_named(near).name == "chatml"
    # A space in the generation prompt: one edit on every one of the 6 probes is too many.
    far = CHATML_STYLE.replace("'<|im_start|>assistant\\n'", "'<|im_start|> assistant\\n'")
    assert far != CHATML_STYLE
    assert detect_named(far) is None


def _gguf(name: str):
    from pollama.fs.gguf import GGUFFile

    md = GGUFFile(real_model(name)).metadata
    tokens = md["tokenizer.ggml.tokens"]
    return (md["tokenizer.chat_template"], tokens[md["tokenizer.ggml.bos_token_id"]],
            tokens[md["tokenizer.ggml.eos_token_id"]])


def test_smollm2_gguf_template_is_chatml():
    # SmolLM2's template adds a default system prompt when there is none; otherwise it is
    # ChatML (Ollama's index also maps it to chatml: Levenshtein distance 41).
    template, bos, eos = _gguf("smollm2")
    assert detect_named(template, bos_token=bos, eos_token=eos).name == "chatml"
    from pollama.fs.gguf import GGUFFile

    assert detect_from_gguf_metadata(GGUFFile(real_model("smollm2")).metadata).name == "chatml"


def test_metadata_without_chat_template():
    assert detect_from_gguf_metadata({}) is None
    assert detect_from_gguf_metadata({"tokenizer.chat_template": "  "}) is None


def test_qwen25_coder_gguf_template_is_not_a_named_template():
    # Qwen 2.5 writes tools into the system turn (and answers tool calls in <tool_call> tags),
    # which chatml does not: no named template renders its prompts. Ollama agrees: its
    # index has no entry within distance 100 of this template (the nearest is 1662 away),
    # so such a model keeps its own template.
    template, bos, eos = _gguf("qwen2.5-coder-0.5b")
    assert detect_named(template, bos_token=bos, eos_token=eos) is None
