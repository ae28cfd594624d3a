"""A runner process: one loaded model, served to `pollama serve` over a Unix socket.

The server starts one of these per loaded model (as Ollama starts `ollama runner`), so native
code that crashes or aborts takes down this process only. The protocol is JSON lines:

- The process loads the model, then prints one line on stdout: {"ready": true, ...facts}
  or {"error": "..."} (and exits 1). It exits when its stdin closes, so a server that dies
  never leaves runners behind.
- Each request is one connection: the server sends one JSON object on one line and reads
  JSON lines back until the connection closes. Closing the connection early cancels the
  request (a completion frees its sequence slot within one step).

Requests ("op"):
  completion  {prompt, images?, options, logprobs, top_logprobs, format?, constrain_after?} -> {"content", "logprobs"?}... then
              {"done": true, "done_reason", counts and durations, "prompt_cached", "draft_count",
              "draft_accepted_count", "context"}
              `format` ("json" or a JSON schema) constrains the output; with `constrain_after`
              (a thinking block's closing tag; the prompt left the model inside that block)
              only the text after it, and the block is bounded (see sample/thinking_format.py).
              `images` (base64) are the images the prompt's `[img-N]` tags stand for.
  embed       {input: [str], truncate, normalize, dimensions} -> {"embeddings", "prompt_eval_count"}
  tokenize    {content, add_special?} -> {"tokens"}
  detokenize  {tokens} -> {"content"}
  health      {} -> {"status": "ok"}
Any failure is one line {"error": "...", "status": 400|500}.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import socket
import socketserver
import sys
import threading
from collections import OrderedDict
from typing import Any

from pollama import envconfig
from pollama.errors import ModelError
from pollama.runner import limits

log = logging.getLogger("pollama.runner")

MAX_REQUEST_BYTES = 64 << 20
TOKENIZED_KEPT = 8  # recent tokenizations kept, so a prompt the server counted is not tokenized again


class RequestError(Exception):
    """A request this model cannot serve as asked (the server answers it with `status`)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Model:
    """What a runner holds: a completion engine or an embedder, and its tokenizer."""

    def __init__(self, args: argparse.Namespace):
        self.kind = args.kind
        self.engine = None
        self.embedder = None
        if args.kind == "embedding":
            from pollama.runner.embed import Embedder

            self.embedder = Embedder(args.model, backend=args.backend, n_threads=args.num_thread,
                                     num_ctx=args.num_ctx, num_batch=args.num_batch)
            self.tokenizer = self.embedder.tokenizer
            self.num_ctx = self.embedder.num_ctx
            self.load_duration = 0
            # One encoder forward at a time; requests beyond it wait here.
            self.embed_lock = threading.Lock()
        else:
            from pollama.runner.parallel import ParallelEngine

            self.engine = ParallelEngine(
                args.model, num_parallel=args.num_parallel, num_ctx=args.num_ctx, num_batch=args.num_batch,
                num_thread=args.num_thread, kv_cache_type=args.kv_cache_type, backend=args.backend,
                draft=args.draft_model,
            )
            self.tokenizer = self.engine.tokenizer
            self.num_ctx = self.engine.num_ctx
            self.load_duration = self.engine.load_duration
        # Texts longer than this cannot fit in num_ctx tokens: refused before tokenizing.
        self.token_chars = limits.max_token_chars(self.tokenizer)
        self.char_limit = limits.prompt_char_limit(self.num_ctx, self.token_chars)
        self._tokenized: OrderedDict[str, list[int]] = OrderedDict()
        self._tokenized_lock = threading.Lock()

    def check_length(self, what: str, text: str, truncate: bool = False) -> None:
        """RequestError for a text that cannot fit in the context (or with truncate, be cut to
        fit: see limits.TRUNCATED_CONTEXTS), before any tokenizing."""
        if len(text) > limits.prompt_char_limit(self.num_ctx, self.token_chars, truncate):
            raise RequestError(limits.too_long_message(what, len(text), self.num_ctx, self.token_chars, truncate))

    def fit_prompt(self, items: list, options, truncate: bool) -> list:
        """A prompt as it goes into the context: whole if it fits; else, with truncate and shift
        on (Ollama's defaults), its first num_keep tokens and its end (window.truncate_prompt);
        else Ollama's 400."""
        from pollama.models.multimodal import has_images
        from pollama.runner import window

        num_ctx = self.num_ctx
        if len(items) < num_ctx:
            return items
        if not truncate or has_images(items):  # (Ollama does not cut a prompt with images either)
            raise RequestError(f"the input length ({len(items)} tokens) exceeds the context length ({num_ctx} tokens)")
        if not options.shift:  # Ollama's words when the context cannot shift
            raise RequestError("the prompt is longer than the context length currently available to the model; "
                               "shorten the prompt, adjust the context length in settings, or use a model with "
                               "a longer context length")
        keep = window.keep_count(options.num_keep, len(items), num_ctx, self.tokenizer.add_bos)
        cut = window.truncate_prompt(items, num_ctx, keep)
        log.warning("truncating input prompt: limit %d, prompt %d, keep %d, new %d", num_ctx, len(items), keep, len(cut))
        return cut

    def encode(self, text: str) -> list[int]:
        """The prompt tokens of a text (specials added and parsed), remembering the last few that
        could fit: the server counts a prompt's tokens to truncate a chat, then sends it."""
        with self._tokenized_lock:
            tokens = self._tokenized.get(text)
            if tokens is not None:
                self._tokenized.move_to_end(text)
                return list(tokens)
        tokens = self.tokenizer.encode(text, add_special=True, parse_special=True)
        if len(tokens) < self.num_ctx:  # one that cannot fit is never sent as a prompt
            with self._tokenized_lock:
                self._tokenized[text] = tokens
                while len(self._tokenized) > TOKENIZED_KEPT:
                    self._tokenized.popitem(last=False)
            tokens = list(tokens)
        return tokens

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        if self.embedder is not None:
            self.embedder.close()


def _images(value: Any) -> list[bytes]:
    """The request's images (base64 strings, as the server forwards them) as bytes."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError("images must be a list of base64 strings")
    out = []
    for i, text in enumerate(value):
        try:
            out.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(f"image {i} is not valid base64") from None
    return out


def _generate_options(request: dict[str, Any], tokenizer):
    from pollama.runner.generation import GenerateOptions
    from pollama.runner.speculative import DEFAULT_DRAFT_NUM_PREDICT, MAX_DRAFT_NUM_PREDICT
    from pollama.sample import SamplerOptions
    from pollama.sample.constraint import make_constraint
    from pollama.sample.thinking_format import ThinkingThenFormat, thinking_budget

    options = request.get("options") or {}
    # Built before the prompt is queued, so a bad format fails at once with Ollama's message.
    try:
        constraint = make_constraint(tokenizer, request.get("format"))
    except ValueError as e:
        raise RequestError(str(e)) from None
    constrain_after = request.get("constrain_after") or None
    if constrain_after is not None and not isinstance(constrain_after, str):
        raise RequestError("constrain_after must be a string")
    num_predict = int(options.get("num_predict", -1))
    stop = options.get("stop") or ()
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise RequestError("stop must be a list of strings")
    if len(stop) > limits.MAX_STOP_STRINGS or any(len(s) > limits.MAX_STOP_CHARS for s in stop):
        raise RequestError(f"stop: at most {limits.MAX_STOP_STRINGS} strings of at most "
                           f"{limits.MAX_STOP_CHARS} characters")
    if constraint is not None and constrain_after:
        constraint = ThinkingThenFormat(tokenizer, constraint, constrain_after, thinking_budget(num_predict))
    shift = request.get("shift", True)
    num_keep = options.get("num_keep", 4)
    if not isinstance(shift, bool):
        raise RequestError("shift must be a boolean")
    if isinstance(num_keep, bool) or not isinstance(num_keep, int):
        raise RequestError("num_keep must be an integer")
    draft_num_predict = options.get("draft_num_predict")
    if draft_num_predict is None:
        draft_num_predict = DEFAULT_DRAFT_NUM_PREDICT
    elif isinstance(draft_num_predict, bool) or not isinstance(draft_num_predict, int):
        raise RequestError("draft_num_predict must be an integer")
    return GenerateOptions(
        constraint=constraint,
        draft_num_predict=min(max(draft_num_predict, 0), MAX_DRAFT_NUM_PREDICT),
        num_predict=num_predict,
        stop=tuple(stop),
        sampler=SamplerOptions.from_options(options),
        logprobs=bool(request.get("logprobs") or request.get("top_logprobs")),
        top_logprobs=int(request.get("top_logprobs") or 0),
        shift=shift,
        num_keep=num_keep,
    )


def completion_line(event) -> bytes:
    """A completion's JSON line for a Piece or the final Done."""
    from pollama.runner.generation import Done

    if isinstance(event, Done):
        obj: dict[str, Any] = {
            "done": True,
            "done_reason": event.done_reason,
            "prompt_eval_count": event.prompt_eval_count,
            "prompt_cached": event.prompt_cached,  # of those, tokens whose K/V the slot held (not evaluated)
            "prompt_eval_duration": event.prompt_eval_duration,
            "eval_count": event.eval_count,
            "eval_duration": event.eval_duration,
            "draft_count": event.draft_count,
            "draft_accepted_count": event.draft_accepted_count,
            "context": list(event.tokens),
        }
    else:
        obj = {"content": event.text}
        logprobs = getattr(event, "logprobs", None)
        if logprobs:
            obj["logprobs"] = logprobs
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


class _DirectWriter:
    """Writes a completion's lines from the engine thread (Job's `deliver`), never waiting:
    a line the socket takes only in part leaves its rest for the request's thread, which
    then writes that and every line after it."""

    def __init__(self, connection: socket.socket):
        self.connection = connection
        self.job = None  # set once submitted: a server that went away cancels it
        self._rest = b""
        self._writing = True

    def __call__(self, event) -> bool:
        if not self._writing:
            return False
        line = completion_line(event)
        try:
            sent = self.connection.send(line, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:  # the server hung up: nothing more to write
            self._writing = False
            if self.job is not None:
                self.job.cancel()
            return True
        if sent < len(line):
            self._rest, self._writing = line[sent:], False
        return True

    def take_rest(self) -> bytes:
        rest, self._rest = self._rest, b""
        return rest


class Handler(socketserver.StreamRequestHandler):
    """One request per connection."""

    model: Model  # set on the class before serving

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_REQUEST_BYTES)
            if not line:
                return
            request = json.loads(line)
            op = request.get("op")
            if op == "completion":
                self.completion(request)
            elif op == "embed":
                self.send(self.embed(request))
            elif op == "tokenize":
                self.send(self.tokenize(request))
            elif op == "detokenize":
                self.send(self.detokenize(request))
            elif op == "health":
                self.send({"status": "ok", "kind": self.model.kind})
            else:
                raise RequestError(f"unknown runner request {op!r}")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server went away: nothing to answer
        except RequestError as e:
            self.send_quietly({"error": str(e), "status": e.status})
        except (ValueError, TypeError, KeyError) as e:
            self.send_quietly({"error": str(e) or type(e).__name__, "status": 400})
        except Exception as e:
            log.exception("request failed")
            self.send_quietly({"error": f"{type(e).__name__}: {e}", "status": 500})

    def send(self, obj: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(obj, ensure_ascii=False).encode() + b"\n")
        self.wfile.flush()

    def send_quietly(self, obj: dict[str, Any]) -> None:
        try:
            self.send(obj)
        except OSError:
            pass

    # -- ops ------------------------------------------------------------------------------
    def completion(self, request: dict[str, Any]) -> None:
        engine = self.model.engine
        if engine is None:
            raise RequestError("this model does not support generation (it is an embedding model)")
        prompt = request.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError("completion needs a prompt string")
        truncate = request.get("truncate", True)
        if not isinstance(truncate, bool):
            raise RequestError("truncate must be a boolean")
        self.model.check_length("the input length", prompt, truncate)
        options = _generate_options(request, self.model.tokenizer)
        images = _images(request.get("images"))
        from pollama.runner.engine import IMAGE_TAG

        try:
            if IMAGE_TAG.search(prompt) is None:  # text alone: maybe tokenized already, to be counted
                tokens = self.model.encode(prompt)
            else:
                tokens = engine.prompt_items(prompt, images)
        except ModelError as e:
            raise RequestError(str(e)) from None
        if not tokens:
            raise RequestError("the prompt is empty after tokenization")
        tokens = self.model.fit_prompt(tokens, options, truncate)
        writer = _DirectWriter(self.connection)
        job = engine.submit(tokens, options, deliver=writer)
        writer.job = job
        finished = threading.Event()
        watcher = threading.Thread(target=self._cancel_on_close, args=(job, finished), daemon=True)
        watcher.start()
        try:
            for event in job:  # what the engine thread could not write without waiting
                self.wfile.write(writer.take_rest() + completion_line(event))
                self.wfile.flush()
            self.wfile.write(writer.take_rest())
            self.wfile.flush()
        except OSError:
            job.cancel()  # the server hung up while we wrote
            raise
        except BaseException:
            self.wfile.write(writer.take_rest())  # a whole line before the error's
            raise
        finally:
            finished.set()

    def _cancel_on_close(self, job, finished: threading.Event) -> None:
        # The server sends nothing after its request line, so any end of the read side
        # (EOF or reset) means it gave up on the request: free the slot now.
        try:
            data = self.connection.recv(1)
        except OSError:
            data = b""
        if not data and not finished.is_set():
            log.debug("the server closed the request's connection: cancelling it")
            job.cancel()

    def embed(self, request: dict[str, Any]) -> dict[str, Any]:
        embedder = self.model.embedder
        if embedder is None:
            raise RequestError("this model does not support embeddings")
        texts = request.get("input")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RequestError("embed needs a list of strings")
        from pollama.runner.embed import InputTooLong

        with self.model.embed_lock:
            try:
                result = embedder.run(texts, truncate=bool(request.get("truncate", True)),
                                      normalize=bool(request.get("normalize", True)),
                                      dimensions=int(request.get("dimensions") or 0))
            except InputTooLong as e:
                raise RequestError(str(e)) from None
        return {"embeddings": result.vectors.tolist(), "prompt_eval_count": result.prompt_eval_count}

    def tokenize(self, request: dict[str, Any]) -> dict[str, Any]:
        content = request.get("content")
        if not isinstance(content, str):
            raise RequestError("tokenize needs a content string")
        self.model.check_length("the content", content)
        if bool(request.get("add_special", True)):
            return {"tokens": self.model.encode(content)}
        return {"tokens": self.model.tokenizer.encode(content, add_special=False, parse_special=True)}

    def detokenize(self, request: dict[str, Any]) -> dict[str, Any]:
        tokens = request.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise RequestError("detokenize needs a list of token ids")
        if len(tokens) > self.model.char_limit:  # more than any text that fits the context could give
            raise RequestError(f"too many tokens to detokenize: {len(tokens)} (at most {self.model.char_limit})")
        vocab = self.model.tokenizer.vocab_size
        bad = [t for t in tokens if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        return {"content": self.model.tokenizer.decode(tokens)}


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 1024


def _exit_when_stdin_closes(socket_path: str) -> None:
    # The server holds our stdin open; when it dies (even by SIGKILL) the pipe closes, and
    # nobody else is left to remove the socket and the private directory it made for it.
    # The file descriptor itself, not sys.stdin's buffer: a daemon thread blocked holding that
    # buffer's lock makes a runner that returns early (a model that fails to load) die with
    # "Fatal Python error: could not acquire lock" at interpreter shutdown.
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    try:
        os.unlink(socket_path)
        folder = os.path.dirname(socket_path)
        if os.path.basename(folder).startswith("pollama-runner-"):
            os.rmdir(folder)
    except OSError:
        pass
    os._exit(0)


def _token_text(tokenizer, which: str) -> str:
    """The text of the BOS or EOS token (chat templates write them), "" when the model has none."""
    token = getattr(tokenizer, which, None)
    return tokenizer.token_text(token) if token is not None else ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pollama.runner.serve", description="Serve one model over a Unix socket.")
    p.add_argument("--model", required=True, help="the GGUF file")
    p.add_argument("--socket", required=True, help="the Unix socket path to listen on")
    p.add_argument("--kind", default="completion", choices=["completion", "embedding"])
    p.add_argument("--num-ctx", type=int, default=envconfig.DEFAULT_NUM_CTX)
    p.add_argument("--num-batch", type=int, default=envconfig.DEFAULT_NUM_BATCH)
    p.add_argument("--num-parallel", type=int, default=1)
    p.add_argument("--num-thread", type=int)
    p.add_argument("--kv-cache-type")
    p.add_argument("--draft-model", help="a draft model's GGUF (same tokenizer) for speculative decoding")
    p.add_argument("--backend", default="ggml", choices=["ggml", "torch"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load the model, say so on stdout, serve until stdin closes."""
    args = parse_args(argv)
    from pollama.errors import debug_enabled

    logging.basicConfig(level=logging.DEBUG if debug_enabled() else logging.WARNING,
                        format="runner %(levelname)s %(name)s: %(message)s")
    if args.num_thread is not None and not 1 <= args.num_thread <= limits.max_threads():
        # ggml would try to start them all (a million threads: SIGSEGV); the server refuses these too.
        print(json.dumps({"error": f"num_thread must be between 1 and {limits.max_threads()}, got {args.num_thread}"}),
              flush=True)
        return 1
    threading.Thread(target=_exit_when_stdin_closes, args=(args.socket,), daemon=True).start()
    try:
        model = Model(args)
    except ModelError as e:  # the file's fault (bad keys, shapes): no retry would load it
        print(json.dumps({"error": f"{e}" or type(e).__name__, "status": 400}), flush=True)
        return 1
    except Exception as e:  # noqa: BLE001 - the server shows this line to the user
        print(json.dumps({"error": f"{e}" or type(e).__name__}), flush=True)
        return 1
    Handler.model = model
    server = Server(args.socket, Handler)
    print(json.dumps({
        "ready": True, "pid": os.getpid(), "num_ctx": model.num_ctx, "load_duration": model.load_duration,
        "kind": model.kind, "add_bos": bool(model.tokenizer.add_bos), "bos_token": _token_text(model.tokenizer, "bos_id"),
        "eos_token": _token_text(model.tokenizer, "eos_id"), "max_token_chars": model.token_chars,
    }), flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
