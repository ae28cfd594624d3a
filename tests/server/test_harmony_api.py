"""gpt-oss's harmony answers parsed into thinking, tool calls and content, through a real server.

No gpt-oss weights are at hand and a small model does not write harmony by itself, so SmolLM2
is made to answer in harmony's structure by its prompt and by the server's own machinery:
- the model is created with PARSER harmony (as an Ollama Modelfile selects the built-in parser)
  and a Go TEMPLATE that writes harmony and leaves the assistant's message open where the
  request leads: on the analysis channel when thinking, on the final channel when not, and in
  a call header (`<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>`) when
  tools are given. Whatever SmolLM2 writes there is thinking, content, or a call's arguments.
- for a call, `format` holds the model to the tool's argument schema, so its text is JSON;
- for thinking then an answer, `format` makes the runner end the thinking after its token
  budget by writing harmony's `<|end|><|start|>assistant<|channel|>final<|message|>` (the
  text Ollama forces there), then JSON: the parser must find the channel change in the
  streamed text and split the answer there.
What this proves: the server picks the harmony parser for the model, starts it where the
prompt left the model, and turns the streamed text into `thinking`, `tool_calls` and
`content` on /api/chat, /api/generate and /v1/chat/completions, streamed and not, with the
channel markers never leaking into the answer. What it cannot prove: that gpt-oss itself is
read right (tests/template/test_harmony.py covers real harmony outputs at every split).

The last tests take the path of a real gpt-oss GGUF: no Go template, gpt-oss's own Jinja
chat template, harmony's special tokens in the vocabulary. There the model is a tiny one
built to write a known harmony token sequence (a one-layer llama whose attention and FFN are
zero, so each next token follows from the current one alone): the special tokens come out of
the token stream as text, <|call|> and <|return|> end the answer, and the server finds
harmony from the chat template alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import ollama
import openai
import pytest

from pollama.fs.ggml_types import GGMLType
from pollama.fs.writer import write_gguf
from pollama.tokenizer.pretokenize import byte_encode

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 8}},
          "required": ["answer"], "additionalProperties": False}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
OPTIONS = {"temperature": 0, "num_predict": 40}
MARKERS = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|constrain|>")

HARMONY_TEMPLATE = """<|start|>system<|message|>Reasoning: {{ if .ThinkLevel }}{{ .ThinkLevel }}{{ else }}medium{{ end }}<|end|>
{{- range .Messages }}<|start|>{{ .Role }}<|message|>{{ .Content }}<|end|>{{ end -}}
<|start|>assistant
{{- if .Tools }}{{ range .Tools }}<|channel|>commentary to=functions.{{ .Function.Name }} <|constrain|>json<|message|>{{ end }}
{{- else if .Think }}<|channel|>analysis<|message|>
{{- else }}<|channel|>final<|message|>{{ end }}"""


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=300)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="ollama", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def harmony(server, client, smollm2_path):
    digest = client.create_blob(smollm2_path)
    with server.http() as http:
        r = http.post("/api/create", json={"model": "smol-harmony", "files": {"m.gguf": digest},
                                           "template": HARMONY_TEMPLATE, "parser": "harmony", "stream": False})
        assert r.status_code == 200, r.text
    return "smol-harmony"


def clean(*texts):
    return all(not any(m in t for m in MARKERS) for t in texts)


def test_show_has_the_parser_and_its_capabilities(server, client, harmony):
    assert client.show(harmony).capabilities == ["completion", "tools", "thinking"]
    with server.http() as http:
        assert http.post("/api/show", json={"model": harmony}).json()["parser"] == "harmony"


def test_thinking_on_the_analysis_channel(client, harmony):
    r = client.chat(model=harmony, messages=QUESTION, think=True, options=OPTIONS)
    assert r.message.thinking and r.message.content == "" and not r.message.tool_calls
    parts = list(client.chat(model=harmony, messages=QUESTION, think=True, options=OPTIONS, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == r.message.thinking
    assert all(p.message.content == "" for p in parts) and clean(r.message.thinking)


def test_content_on_the_final_channel(client, harmony):
    r = client.chat(model=harmony, messages=QUESTION, think=False, options=OPTIONS)
    assert r.message.content and not r.message.thinking and clean(r.message.content)
    parts = list(client.chat(model=harmony, messages=QUESTION, think=False, options=OPTIONS, stream=True))
    assert "".join(p.message.content for p in parts) == r.message.content


def test_thinking_then_final_answer_split_where_the_channel_changes(client, harmony):
    options = {"temperature": 0.8, "seed": 3, "num_predict": 100}
    r = client.chat(model=harmony, messages=QUESTION, think=True, format=ANSWER, options=options)
    assert r.message.thinking and clean(r.message.thinking, r.message.content)
    jsonschema.validate(json.loads(r.message.content), ANSWER)
    parts = list(client.chat(model=harmony, messages=QUESTION, think=True, format=ANSWER, options=options, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == r.message.thinking
    assert "".join(p.message.content for p in parts) == r.message.content


def test_tool_call_native_streamed_and_not(client, harmony):
    args = WEATHER["function"]["parameters"]
    r = client.chat(model=harmony, messages=QUESTION, tools=[WEATHER], format=args, options=OPTIONS)
    (call,) = r.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(call.function.arguments["city"], str)
    assert r.message.content == "" and not r.message.thinking
    parts = list(client.chat(model=harmony, messages=QUESTION, tools=[WEATHER], format=args, options=OPTIONS,
                             stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", call.function.arguments)]
    assert all(p.message.content == "" for p in parts)


def test_tool_names_harmony_cannot_write_are_renamed_and_mapped_back(server, client, harmony):
    # As Ollama: the Go template is shown "get_weather", the call is answered as "get-weather".
    dashed = {"type": "function", "function": {**WEATHER["function"], "name": "get-weather"}}
    with server.http() as http:
        r = http.post("/api/chat", json={"model": harmony, "messages": QUESTION, "tools": [dashed],
                                         "_debug_render_only": True, "stream": False})
        assert r.json()["_debug_info"]["rendered_template"].endswith(
            "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>")
    r = client.chat(model=harmony, messages=QUESTION, tools=[dashed], format=WEATHER["function"]["parameters"],
                    options=OPTIONS)
    assert [c.function.name for c in r.message.tool_calls] == ["get-weather"]


def test_openai_chat_completions(oai, harmony):
    # reasoning_effort "low" is think "low": the template opens the analysis channel.
    r = oai.chat.completions.create(model=harmony, messages=QUESTION, reasoning_effort="low", temperature=0, max_tokens=40)
    message = r.choices[0].message
    assert message.reasoning and message.content == "" and clean(message.reasoning)
    chunks = list(oai.chat.completions.create(model=harmony, messages=QUESTION, reasoning_effort="low", temperature=0,
                                              max_tokens=40, stream=True))
    assert "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks if c.choices) == message.reasoning
    # reasoning_effort "none" is think false: the final channel, so content.
    r = oai.chat.completions.create(model=harmony, messages=QUESTION, reasoning_effort="none", temperature=0, max_tokens=20)
    assert r.choices[0].message.content and not getattr(r.choices[0].message, "reasoning", None)


def test_openai_tool_call_streamed_and_not(oai, harmony):
    fmt = {"type": "json_schema", "json_schema": {"name": "args", "schema": WEATHER["function"]["parameters"]}}
    r = oai.chat.completions.create(model=harmony, messages=QUESTION, tools=[WEATHER], response_format=fmt,
                                    temperature=0, max_tokens=40)
    choice = r.choices[0]
    (call,) = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str)
    chunks = list(oai.chat.completions.create(model=harmony, messages=QUESTION, tools=[WEATHER], response_format=fmt,
                                              temperature=0, max_tokens=40, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(d.function.name, json.loads(d.function.arguments)) for d in deltas] == [("get_weather", arguments)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_generate_splits_thinking_from_the_response(client, harmony):
    r = client.generate(model=harmony, prompt="Hi", think=True, options=OPTIONS)
    assert r.thinking and r.response == "" and clean(r.thinking)
    parts = list(client.generate(model=harmony, prompt="Hi", think=True, options=OPTIONS, stream=True))
    assert "".join(p.thinking or "" for p in parts) == r.thinking
    r = client.generate(model=harmony, prompt="Hi", think=False, options=OPTIONS)
    assert r.response and not r.thinking and clean(r.response)


def test_think_levels_reach_the_template(server, harmony):
    with server.http() as http:
        for think, level in ((True, "medium"), ("low", "low"), ("high", "high"), ("max", "high")):
            r = http.post("/api/chat", json={"model": harmony, "messages": QUESTION, "think": think,
                                             "_debug_render_only": True, "stream": False})
            rendered = r.json()["_debug_info"]["rendered_template"]
            # "max" is "high" for harmony, whose Reasoning knows low, medium and high (as Ollama).
            assert rendered.startswith(f"<|start|>system<|message|>Reasoning: {level}<|end|>"), (think, rendered)
            assert rendered.endswith("<|start|>assistant<|channel|>analysis<|message|>")


# -- gpt-oss's path: its Jinja template, its special tokens, a model that writes harmony ------------
GPT_OSS_TEMPLATE = (Path(__file__).parents[1] / "template" / "data" / "gpt_oss_chat_template.jinja").read_text("utf-8")
SPECIALS = ["<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", "<|return|>", "<|call|>"]
# What each model writes after gpt-oss's generation prompt ("<|start|>assistant"): special
# tokens by their text, the other pieces one new ordinary token each (a repeated marker sits in
# an ordinary token's text: each token may come once in a chain).
ANSWERS = ["<|channel|>", "analysis", "<|message|>", "The user asks about Paris.", "<|end|>", "<|start|>",
           "assistant", "<|channel|>final", "<|message|>It is sunny.", "<|return|>"]
CALLS = ["<|channel|>", "commentary to=functions.get_weather ", "<|constrain|>", "json", "<|message|>",
         '{"city": "Paris", "days": 2}', "<|call|>"]


def harmony_gguf(path: Path, chain: list[str]) -> Path:
    """A one-layer llama with byte tokens, gpt-oss's special tokens (typed control, as in its
    GGUF) and gpt-oss's chat template, that answers `chain` to any prompt ending in "t"."""
    tokens = [byte_encode(chr(b)) for b in range(256)]
    types = [1] * 256 + [3] * len(SPECIALS)
    tokens += SPECIALS
    chain_ids = [tokens.index(byte_encode("t"))]
    for piece in chain:
        if piece not in SPECIALS:
            tokens.append(byte_encode(piece))
            types.append(1)
        chain_ids.append(tokens.index(piece) if piece in SPECIALS else len(tokens) - 1)
    n, ff = len(tokens), 64
    dim = 64 * -(-n // 64)
    # Token i is e_i and stays so through the block (attention and FFN weights are zero); the
    # output layer maps each token of the chain to the next one.
    out = np.zeros((n, dim), np.float32)
    for a, b in zip(chain_ids, chain_ids[1:]):
        out[b, a] = 1.0
    ones, zeros = (lambda *s: np.ones(s, np.float32)), (lambda *s: np.zeros(s, np.float32))
    arrays = {"token_embd.weight": np.eye(n, dim, dtype=np.float32), "output.weight": out, "output_norm.weight": ones(dim),
              "blk.0.attn_norm.weight": ones(dim), "blk.0.ffn_norm.weight": ones(dim),
              "blk.0.attn_q.weight": zeros(dim, dim), "blk.0.attn_k.weight": zeros(dim, dim),
              "blk.0.attn_v.weight": zeros(dim, dim), "blk.0.attn_output.weight": zeros(dim, dim),
              "blk.0.ffn_gate.weight": zeros(ff, dim), "blk.0.ffn_up.weight": zeros(ff, dim),
              "blk.0.ffn_down.weight": zeros(dim, ff)}
    meta = {"general.architecture": "llama", "llama.block_count": 1, "llama.embedding_length": dim,
            "llama.attention.head_count": 2, "llama.attention.head_count_kv": 2, "llama.feed_forward_length": ff,
            "llama.context_length": 8192, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": [],
            "tokenizer.ggml.eos_token_id": tokens.index("<|return|>"), "tokenizer.ggml.add_bos_token": False,
            "tokenizer.chat_template": GPT_OSS_TEMPLATE}
    write_gguf(path, meta, [(k, v.view(np.uint8).ravel(), GGMLType.F32, v.shape) for k, v in arrays.items()])
    return path


@pytest.fixture(scope="module")
def gpt_oss_like(server, client, tmp_path_factory):
    folder = tmp_path_factory.mktemp("harmony")
    for name, chain in (("oss-answers", ANSWERS), ("oss-calls", CALLS)):
        digest = client.create_blob(harmony_gguf(folder / f"{name}.gguf", chain))
        client.create(model=name, files={"m.gguf": digest})
    return "oss-answers", "oss-calls"


def test_gpt_oss_template_model_is_harmony(server, client, gpt_oss_like):
    # No PARSER and a llama family: the Jinja template's <|channel|> says harmony.
    assert client.show(gpt_oss_like[0]).capabilities == ["completion", "tools", "thinking"]
    with server.http() as http:
        for think, level in ((None, "medium"), (True, "medium"), (False, "medium"), ("low", "low"), ("max", "high")):
            r = http.post("/api/chat", json={"model": gpt_oss_like[0], "messages": QUESTION, "think": think,
                                             "_debug_render_only": True, "stream": False})
            rendered = r.json()["_debug_info"]["rendered_template"]
            assert f"\n\nReasoning: {level}\n\n" in rendered and rendered.endswith("<|start|>assistant"), think


def test_gpt_oss_template_answer_native_and_openai(client, oai, gpt_oss_like):
    answers = gpt_oss_like[0]
    options = {"temperature": 0, "num_predict": 30}
    # Raw, nothing parses it: the special tokens came out as text, and <|return|> ended it.
    raw = client.generate(model=answers, prompt="<|start|>assistant", raw=True, options=options)
    assert raw.response == "".join(ANSWERS[:-1]) and raw.done_reason == "stop"
    for think in (None, "low", False):  # gpt-oss cannot stop thinking: its analysis is thinking still
        r = client.chat(model=answers, messages=QUESTION, think=think, options=options)
        assert (r.message.thinking, r.message.content, r.done_reason) == ("The user asks about Paris.", "It is sunny.", "stop")
    parts = list(client.chat(model=answers, messages=QUESTION, options=options, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "The user asks about Paris."
    assert "".join(p.message.content for p in parts) == "It is sunny."
    r = client.generate(model=answers, prompt="Hi", options=options)
    assert (r.thinking, r.response) == ("The user asks about Paris.", "It is sunny.")
    o = oai.chat.completions.create(model=answers, messages=QUESTION, temperature=0, max_tokens=30)
    assert (o.choices[0].message.reasoning, o.choices[0].message.content) == ("The user asks about Paris.", "It is sunny.")
    chunks = list(oai.chat.completions.create(model=answers, messages=QUESTION, temperature=0, max_tokens=30, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "It is sunny."
    assert "".join(getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks if c.choices) == \
        "The user asks about Paris."


def test_gpt_oss_template_tool_call_native_and_openai(client, oai, gpt_oss_like):
    calls = gpt_oss_like[1]
    options = {"temperature": 0, "num_predict": 30}
    for stream in (False, True):
        parts = client.chat(model=calls, messages=QUESTION, tools=[WEATHER], options=options, stream=stream)
        parts = list(parts) if stream else [parts]
        found = [c for p in parts for c in (p.message.tool_calls or [])]
        assert [(c.function.name, c.function.arguments) for c in found] == [("get_weather", {"city": "Paris", "days": 2})]
        assert "".join(p.message.content for p in parts) == "" and parts[-1].done_reason == "stop"
    o = oai.chat.completions.create(model=calls, messages=QUESTION, tools=[WEATHER], temperature=0, max_tokens=30)
    (call,) = o.choices[0].message.tool_calls
    assert (o.choices[0].finish_reason, call.function.name, json.loads(call.function.arguments)) == (
        "tool_calls", "get_weather", {"city": "Paris", "days": 2})
    chunks = list(oai.chat.completions.create(model=calls, messages=QUESTION, tools=[WEATHER], temperature=0,
                                              max_tokens=30, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(d.function.name, json.loads(d.function.arguments)) for d in deltas] == [("get_weather", {"city": "Paris", "days": 2})]
