"""One generation or embedding, from a checked request to the runner's answers.

Shared by the native routes and the OpenAI ones: the scheduler hands out the runner, the
prompt is assembled once the runner (and so its tokenizer) is there, and the runner's lines
come back with Ollama's durations added to the final one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pollama.runner import limits
from pollama.server.errors import APIError
from pollama.server.models import ModelRef
from pollama.server.options import RequestOptions
from pollama.server.runner import RunnerClient
from pollama.server.scheduler import Scheduler

# Builds the prompt text, and the images its [img-N] tags stand for (base64), with the loaded
# runner at hand (for token counts).
PromptBuilder = Callable[[RunnerClient, int], Awaitable[tuple[str, list[str]]]]
# Makes the output parser (thinking, tool calls) for a rendered prompt: it needs the prompt
# to know whether the model starts inside a thinking block.
ParserFactory = Callable[[str], Any]


@dataclass
class Completion:
    """What a generation needs once the request is checked."""

    model: ModelRef
    options: RequestOptions
    keep_alive: float | None
    build_prompt: PromptBuilder
    logprobs: bool = False
    top_logprobs: int = 0
    render_only: bool = False
    format: Any = None  # Ollama's `format`: "json" or a JSON schema, enforced by the runner
    make_parser: ParserFactory | None = None
    # A prompt longer than the context is cut to fit, and a full context shifts, unless told
    # not to (Ollama's `truncate` and `shift`, both on by default).
    truncate: bool = True
    shift: bool = True
    started: int = field(default_factory=time.perf_counter_ns)


def _nonempty(delta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in delta.items() if v}


def constrain_after(parser, prompt: str) -> str | None:
    """Where structured output starts: after the thinking block's closing tag when the prompt
    leaves the model inside that block, else at once (a model that is not inside one may not
    open one; the format rules from its first token). A harmony answer is constrained in its
    final message (pollama.template.harmony.HarmonyParser.format_after)."""
    from pollama.template.thinking import GO_SPACE

    harmony = getattr(parser, "harmony", None)
    if harmony is not None:
        return harmony.format_after()
    thinking = getattr(parser, "thinking", None)
    if thinking is None:
        return None
    return thinking.closing if prompt.strip(GO_SPACE).endswith(thinking.opening) else None


async def run_completion(scheduler: Scheduler, job: Completion) -> AsyncIterator[dict[str, Any]]:
    """Runner lines ({"content", "logprobs"?} ..., then {"done": true, ...}).

    With render_only, one line {"rendered": prompt, "image_count"} and nothing is generated. The final line
    gains load_duration and total_duration (nanoseconds).

    With a parser (job.make_parser), each piece is split into "thinking", "content" and
    "tool_calls" (only the non-empty ones are kept); pieces empty in all of them are skipped,
    as Ollama skips them, and the final line carries what the parser held back to the end.
    """
    async with scheduler.use(job.model, job.options.spec, job.keep_alive) as loaded:
        load_duration = time.perf_counter_ns() - job.started
        runner = loaded.runner
        prompt, images = await job.build_prompt(runner, runner.num_ctx)
        if job.render_only:
            yield {"rendered": prompt, "image_count": len(images)}
            return
        # A raw prompt, a context: not sent if it could not fit (nor be cut to fit).
        check_length("the input length", prompt, runner, job.truncate)
        parser = job.make_parser(prompt) if job.make_parser is not None else None
        request = {"op": "completion", "prompt": prompt, "options": job.options.predict,
                   "logprobs": job.logprobs, "top_logprobs": job.top_logprobs,
                   "truncate": job.truncate, "shift": job.shift}
        if images:
            request["images"] = images
        if job.format not in (None, ""):
            request["format"] = job.format
            request["constrain_after"] = constrain_after(parser, prompt)
        async for message in runner.stream(request):
            if message.get("done"):
                message["load_duration"] = load_duration
                message["total_duration"] = time.perf_counter_ns() - job.started
                message["prompt"] = prompt
                if parser is not None:
                    message.update(_nonempty(parser.finish()))
            elif parser is not None:
                piece = _nonempty(parser.add(message.pop("content", "")))
                if "logprobs" in message:
                    piece["logprobs"] = message["logprobs"]
                if not piece:
                    continue  # held back by the parser (a possible tag): nothing to send yet
                message = piece
            yield message


def char_limit(runner: RunnerClient, truncate: bool = False) -> int:
    """Characters beyond which a text cannot fit in the runner's context, or be cut to fit
    (runner/limits.py)."""
    return limits.prompt_char_limit(runner.num_ctx, runner.max_token_chars, truncate)


def check_length(what: str, text: str, runner: RunnerClient, truncate: bool = False) -> None:
    """A 400, before the runner sees (and tokenizes) a text that cannot fit in its context."""
    if len(text) > char_limit(runner, truncate):
        raise APIError(400, limits.too_long_message(what, len(text), runner.num_ctx, runner.max_token_chars,
                                                    truncate))


async def tokenize(runner: RunnerClient, content: str) -> list[int]:
    """/api/tokenize's tokens (a content that cannot fit in the context is refused untokenized)."""
    check_length("the content", content, runner)
    return (await runner.call({"op": "tokenize", "content": content}))["tokens"]


async def detokenize(runner: RunnerClient, tokens: list[int]) -> str:
    """The text of tokens (/api/detokenize, a generate request's `context`); more tokens than
    any text that fits the context could give are refused without being sent."""
    if len(tokens) > char_limit(runner):
        raise APIError(400, f"too many tokens: {len(tokens)} (at most {char_limit(runner)} for a context of "
                            f"{runner.num_ctx} tokens)")
    return (await runner.call({"op": "detokenize", "tokens": tokens}))["content"]


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run blocking work (store reads, prompt assembly that counts tokens) off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def embed(scheduler: Scheduler, model: ModelRef, options: RequestOptions, keep_alive: float | None,
                texts: list[str], *, truncate: bool = True, normalize: bool = True, dimensions: int = 0) -> dict[str, Any]:
    """{"embeddings", "prompt_eval_count", "load_duration", "total_duration"} for texts."""
    if "embedding" not in model.capabilities:
        raise APIError(400, f'"{model.name}" does not support embeddings')
    started = time.perf_counter_ns()
    async with scheduler.use(model, options.spec, keep_alive) as loaded:
        load_duration = time.perf_counter_ns() - started
        if not texts:
            return {"embeddings": [], "prompt_eval_count": 0, "load_duration": load_duration,
                    "total_duration": time.perf_counter_ns() - started}
        # A text that cannot fit: refused without truncation, else only its start is sent (twice
        # what could fit; the runner cuts what it tokenizes the same way, see runner/embed.py).
        limit = char_limit(loaded.runner)
        if not truncate:
            for text in texts:
                check_length("the input length", text, loaded.runner)
        texts = [t[: 2 * limit] for t in texts]
        answer = await loaded.runner.call({"op": "embed", "input": texts, "truncate": truncate,
                                           "normalize": normalize, "dimensions": dimensions})
    answer["load_duration"] = load_duration
    answer["total_duration"] = time.perf_counter_ns() - started
    return answer
