"""A Qwen3 model made from a Hugging Face folder with Qwen3's own chat template thinks through a
real server: /api/chat with think true answers with `thinking` and `content` apart, with think
false without thinking, each from the prompt transformers renders for enable_thinking.

A random model would never write </think>. This one is a random Qwen3 whose every layer's
output projections are zeroed and whose embedding and output matrices are set by hand, so that
its next token depends on its last token only, along a chain chosen here:
"\\n" (the end of Qwen3's generation prompt) -> <think> -> " and" -> </think> -> "The" ->
<|im_end|>, and "\\n\\n" (the end of its think-false prompt, "<think>\\n\\n</think>\\n\\n") ->
"The". So what the model writes is known, and the test proves the server's part: the
template rendered with enable_thinking from `think`, the capabilities read off the template, and
the answer split by the thinking parser.
"""

from __future__ import annotations

import ollama
import pytest
from models.qwen3.chat_template import QWEN3_CHAT_TEMPLATE
from models.tinyhf import bpe_tokenizer, torch, transformers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QUESTION = [{"role": "user", "content": "Hi"}]
OPTIONS = {"temperature": 0, "num_predict": 24}


def one_token(tok, text: str) -> int:
    (token,) = tok(text, add_special_tokens=False).input_ids
    return token


def bigram_qwen3(folder):
    """A tiny Qwen3 checkpoint (with Qwen3's template) that writes the chain of the docstring."""
    # As Qwen3's tokenizer: <think> and </think> are added tokens, not special ones.
    tok = bpe_tokenizer("qwen2", SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", added=("<think>", "</think>"),
                        chat_template=QWEN3_CHAT_TEMPLATE)
    config = transformers.Qwen3Config(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    ids = [one_token(tok, t) for t in ("\n", "<think>", " and", "</think>", "The", "<|im_end|>")]
    chain = dict(zip(ids, ids[1:]))
    chain[one_token(tok, "\n\n")] = one_token(tok, "The")
    with torch.no_grad():
        for layer in model.model.layers:  # the residual stream stays the token's embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for slot, (token, following) in enumerate(chain.items()):
            embed[token] = 0.0
            embed[token, slot] = 1.0  # its own direction: RMS-normed to 8 there
            head[following, slot] = 10.0  # logit 80 for the next token of the chain, 0 for all others
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def qwen3(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3") / "tiny-qwen3"
    hf_tokenizer = bigram_qwen3(folder)
    client = ollama.Client(host=server.url, timeout=300)
    files = {p.name: client.create_blob(p) for p in sorted(folder.iterdir()) if p.is_file()}
    statuses = [p.status for p in client.create(model="tiny-qwen3", files=files, stream=True)]
    assert statuses[-1] == "success" and "converting model" in statuses
    return client, hf_tokenizer


def test_capabilities_come_from_qwen3s_template(qwen3):
    client, _ = qwen3
    shown = client.show("tiny-qwen3")
    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert shown.details.family == "qwen3" and not shown.template  # the model's own Jinja template is used


@pytest.mark.parametrize("think", [True, False])
def test_prompt_is_what_transformers_renders_for_enable_thinking(server, qwen3, think):
    _, hf_tokenizer = qwen3
    want = hf_tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True, enable_thinking=think)
    with server.http() as http:
        r = http.post("/api/chat", json={"model": "tiny-qwen3", "messages": QUESTION, "think": think,
                                         "_debug_render_only": True})
    assert r.status_code == 200, r.text
    assert r.json()["_debug_info"]["rendered_template"] == want


def test_think_true_separates_thinking_from_content(qwen3):
    client, _ = qwen3
    r = client.chat(model="tiny-qwen3", messages=QUESTION, think=True, options=OPTIONS)
    assert (r.message.thinking, r.message.content, r.done_reason) == ("and", "The", "stop")
    parts = list(client.chat(model="tiny-qwen3", messages=QUESTION, think=True, options=OPTIONS, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "and"
    assert "".join(p.message.content for p in parts) == "The"
    # A thinking model thinks when the request does not say (Ollama's rule).
    default = client.chat(model="tiny-qwen3", messages=QUESTION, options=OPTIONS)
    assert (default.message.thinking, default.message.content) == ("and", "The")


def test_think_false_answers_without_thinking(qwen3):
    client, _ = qwen3
    r = client.chat(model="tiny-qwen3", messages=QUESTION, think=False, options=OPTIONS)
    assert not r.message.thinking and r.message.content == "The" and r.done_reason == "stop"
