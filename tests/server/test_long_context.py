"""Prompts longer than the context and generations past it, through a real server, as Ollama
answers them: a long prompt is cut to its first num_keep tokens and its end (truncate, on by
default), a full context shifts and generation goes on (shift, on by default)."""

from __future__ import annotations

import re

import ollama

NUM_CTX = 128
# Words that tokenize to several tokens each, every one different: a cut shows where it was.
LONG_PROMPT = " ".join(f"item{i}" for i in range(400))
COUNTING = "Count from 1 to 500: 1, 2, 3, 4, 5,"


def _generate(http, **body):
    options = {"temperature": 0, "num_ctx": NUM_CTX, "num_predict": 2, **body.pop("options", {})}
    return http.post("/api/generate", json={"model": "smollm2", "stream": False, "options": options, **body})


def test_a_prompt_of_three_contexts_keeps_its_start_and_its_end(server):
    with server.http() as http:
        rendered = _generate(http, prompt=LONG_PROMPT, _debug_render_only=True).json()["_debug_info"]
        full = http.post("/api/tokenize", json={"model": "smollm2", "content": rendered["rendered_template"],
                                                "options": {"num_ctx": NUM_CTX}}).json()["tokens"]
        assert len(full) >= 3 * NUM_CTX
        r = _generate(http, prompt=LONG_PROMPT, options={"num_keep": 6})
    assert r.status_code == 200, r.text
    done = r.json()
    # SmolLM2 adds no BOS: 6 tokens kept; then Ollama's limit, num_ctx - (num_ctx - keep) / 2.
    keep, kept = 6, NUM_CTX - (NUM_CTX - 6) // 2
    assert done["prompt_eval_count"] == kept <= NUM_CTX
    prompt = done["context"][:kept]  # the tokens the model saw, then the ones it generated
    # The system prompt's start, then the end of the user's message and the assistant's header.
    assert prompt[:keep] == full[:keep] and prompt[keep:] == full[-(kept - keep):]


def test_truncate_false_or_shift_false_refuse_a_long_prompt_as_ollama(server):
    with server.http() as http:
        r = _generate(http, prompt=LONG_PROMPT, raw=True, truncate=False)
        assert r.status_code == 400 and "exceeds the context length" in r.json()["error"], r.text
        r = _generate(http, prompt=LONG_PROMPT, raw=True, shift=False)
        assert r.status_code == 400 and r.json()["error"].startswith(
            "the prompt is longer than the context length currently available to the model"), r.text
        r = _generate(http, prompt=LONG_PROMPT, raw=True, truncate="yes")
        assert r.status_code == 400


def test_a_chat_whose_last_message_is_too_long_is_cut_to_fit(server):
    client = ollama.Client(host=server.url)
    answer = client.chat(model="smollm2", messages=[{"role": "user", "content": LONG_PROMPT}],
                         options={"temperature": 0, "num_ctx": NUM_CTX, "num_predict": 2})
    assert 0 < answer.prompt_eval_count <= NUM_CTX and answer.eval_count == 2


def test_generation_goes_on_past_the_context_with_shift(server):
    client = ollama.Client(host=server.url)
    options = {"temperature": 0, "repeat_penalty": 1.0, "num_ctx": NUM_CTX, "num_predict": 4 * NUM_CTX}
    answer = client.generate(model="smollm2", prompt=COUNTING, raw=True, options=options)
    assert answer.done_reason == "length" and answer.eval_count == 4 * NUM_CTX
    numbers = [int(n) for n in re.findall(r"\d+", answer.response)]
    assert numbers == list(range(6, 6 + len(numbers))) and numbers[-1] > 100  # counting on, through 3 shifts
    with server.http() as http:
        r = _generate(http, prompt=COUNTING, raw=True, shift=False, options=options)
    assert r.json()["done_reason"] == "length" and r.json()["eval_count"] < NUM_CTX
