"""A tiny vision model (Gemma 3 + SigLIP, random weights, converted from transformers) served by a
real `pollama serve`: /api/chat with an image through the official `ollama` client, and
/v1/chat/completions with a data-URL image through the official `openai` client, each answer
token for token what the engine gives for the same prompt and image when called directly."""

from __future__ import annotations

import base64

import pytest

from models.gemma3.test_vision import _config, _png, _tokenizer
from models.tinyhf import convert, save_tiny, transformers
from pollama.runner.parallel import ParallelEngine
from pollama.runner.generation import Done, GenerateOptions

import anthropic  # noqa: E402
import ollama  # noqa: E402
import openai  # noqa: E402

STEPS = 8
QUESTION = "What is in this picture?"


@pytest.fixture(scope="module")
def vision_gguf(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny-vlm")
    tok = _tokenizer()
    save_tiny(transformers.Gemma3ForConditionalGeneration, _config(tok), tok, tmp / "hf", seed=3)
    return convert(tmp / "hf", tmp / "tiny-vlm.gguf")


@pytest.fixture(scope="module")
def vlm(server, vision_gguf):
    client = ollama.Client(host=server.url, timeout=300)
    client.create(model="tiny-vlm", files={"tiny-vlm.gguf": client.create_blob(vision_gguf)})
    return client


def engine_answer(gguf, prompt: str, image: bytes) -> tuple[str, int, list[list[int]]]:
    """Greedy text, prompt length and each token's bytes from the engine itself, for the
    server's rendered prompt."""
    with ParallelEngine(gguf, num_ctx=4096) as engine:
        items = engine.prompt_items(prompt, [image])
        text, tokens = [], []
        for event in engine.submit(items, GenerateOptions(num_predict=STEPS, logprobs=True)):
            if not isinstance(event, Done):
                text.append(event.text)
                tokens += [entry["bytes"] for entry in event.logprobs or []]
        assert len(tokens) == STEPS
        return "".join(text), len(items), tokens


def test_show_says_vision(vlm):
    assert "vision" in vlm.show("tiny-vlm").capabilities


def test_chat_with_an_image_answers_as_the_engine_does(server, vlm, vision_gguf):
    png = _png()
    message = {"role": "user", "content": QUESTION, "images": [png]}  # the client base64-encodes bytes
    with server.http() as http:
        rendered = http.post("/api/chat", json={
            "model": "tiny-vlm", "messages": [{**message, "images": [base64.b64encode(png).decode()]}],
            "_debug_render_only": True}).json()["_debug_info"]
    assert rendered["image_count"] == 1 and "[img-0]" in rendered["rendered_template"]
    want, prompt_len, want_tokens = engine_answer(vision_gguf, rendered["rendered_template"], png)

    r = vlm.chat(model="tiny-vlm", messages=[message], options={"temperature": 0, "num_predict": STEPS})
    assert r.message.content == want
    assert r.prompt_eval_count == prompt_len
    # Token for token (the text of a tiny random model is mostly partial UTF-8).
    with server.http() as http:
        lines = http.post("/api/chat", json={"model": "tiny-vlm", "messages": [{**message, "images": [base64.b64encode(png).decode()]}],
                                             "options": {"temperature": 0, "num_predict": STEPS}, "logprobs": True,
                                             "stream": False}).json()
    assert [entry["bytes"] for entry in lines["logprobs"]] == want_tokens
    # The same again (the image comes from the runner's encoded images this time).
    again = vlm.chat(model="tiny-vlm", messages=[message], options={"temperature": 0, "num_predict": STEPS})
    assert again.message.content == want

    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    answer = oai.chat.completions.create(model="tiny-vlm", temperature=0, max_tokens=STEPS, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}])
    assert answer.choices[0].message.content == want
    assert answer.usage.prompt_tokens == prompt_len  # (a sliding window of 8 leaves no prefix to reuse)


def test_generate_with_an_image_and_the_image_changes_the_answer(server, vlm, vision_gguf):
    png = _png()
    with server.http() as http:
        a = http.post("/api/generate", json={"model": "tiny-vlm", "prompt": QUESTION, "images": [base64.b64encode(png).decode()],
                                             "stream": False, "options": {"temperature": 0, "num_predict": STEPS}}).json()
        rendered = http.post("/api/generate", json={"model": "tiny-vlm", "prompt": QUESTION, "images": ["eA=="],
                                                    "_debug_render_only": True}).json()["_debug_info"]
        bad = http.post("/api/generate", json={"model": "tiny-vlm", "prompt": QUESTION, "images": ["bm90IGFuIGltYWdl"],
                                               "stream": False})
    assert rendered["rendered_template"].startswith("[img-0]") and rendered["image_count"] == 1
    want, _, _ = engine_answer(vision_gguf, "[img-0]" + QUESTION, png)
    assert a["response"] == want
    assert bad.status_code == 400 and "image" in bad.json()["error"]


def test_two_images_in_one_message(server, vlm):
    png = base64.b64encode(_png()).decode()
    body = {"model": "tiny-vlm", "stream": False, "options": {"num_predict": 2, "temperature": 0},
            "messages": [{"role": "user", "content": "compare", "images": [png, png]}]}
    with server.http() as http:
        rendered = http.post("/api/chat", json={**body, "_debug_render_only": True}).json()["_debug_info"]
        answer = http.post("/api/chat", json=body)
    assert rendered["image_count"] == 2 and "[img-0][img-1]compare" in rendered["rendered_template"]
    assert answer.status_code == 200 and answer.json()["done"], answer.text


def test_interactive_chat_reads_an_image_path(server, vlm, vision_gguf, tmp_path):
    # As Ollama's REPL: a path to an image in the typed line is read and sent with the message.
    import os
    import sys

    import pexpect
    image = tmp_path / "my picture.png"
    image.write_bytes(_png())
    typed = str(image).replace(" ", "\\ ")
    with server.http() as http:
        rendered = http.post("/api/chat", json={
            "model": "tiny-vlm", "_debug_render_only": True,
            "messages": [{"role": "user", "content": "describe", "images": [base64.b64encode(_png()).decode()]}],
        }).json()["_debug_info"]["rendered_template"]
    want, _, _ = engine_answer(vision_gguf, rendered, _png())

    env = {**os.environ, "OLLAMA_HOST": server.host, "HOME": str(tmp_path), "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, ["-m", "pollama.cli.main", "run", "tiny-vlm", "--temperature", "0",
                                           "--num-predict", str(STEPS)], env=env, encoding="utf-8", timeout=120)
    try:
        child.expect_exact(">>> ")
        child.sendline(f"describe {typed}")
        child.expect_exact(f"Added image '{image}'")
        child.expect_exact(">>> ")
        answer = child.before
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert want.strip() and want.replace("\r", "") in answer.replace("\r\n", "\n").replace("\r", "")


def test_responses_and_messages_take_an_image(server, vlm, vision_gguf):
    """OpenAI's input_image and Anthropic's image block reach the same prompt and image as
    /api/chat's images, so they answer as the engine does for them."""
    png = _png()
    encoded = base64.b64encode(png).decode()
    with server.http() as http:
        rendered = http.post("/api/chat", json={
            "model": "tiny-vlm", "messages": [{"role": "user", "content": QUESTION, "images": [encoded]}],
            "_debug_render_only": True}).json()["_debug_info"]["rendered_template"]
    want, prompt_len, _ = engine_answer(vision_gguf, rendered, png)

    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=300, max_retries=0)
    r = oai.responses.create(model="tiny-vlm", temperature=0, max_output_tokens=STEPS, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64," + encoded, "detail": "auto"},
        {"type": "input_text", "text": QUESTION}]}])
    assert r.output_text == want and r.usage.input_tokens == prompt_len

    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", timeout=300, max_retries=0)
    m = claude.messages.create(model="tiny-vlm", max_tokens=STEPS, extra_body={"temperature": 0}, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": encoded}},
        {"type": "text", "text": QUESTION}]}])
    assert m.content[0].text == want and m.usage.input_tokens == prompt_len
