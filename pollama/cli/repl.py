"""`pollama run MODEL` on a terminal: Ollama's interactive chat (>>> prompt, /commands, \"\"\").

Everything goes through the server's API (the one at OLLAMA_HOST, or the one `run` starts in
its own process): /api/chat for turns, /api/show for /show,
/api/create for /save. Ctrl+C stops a generation (the turn is dropped), Ctrl+D leaves.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from pollama import envconfig
from pollama.cli.client import Client, ServerError
from pollama.cli.images import extract_images
from pollama.cli.display import AnswerPrinter, Spinner
from pollama.cli.remote import model_capabilities

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""

HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
  /set hidethinking      Hide thinking output
  /set nohidethinking    Show thinking output
"""

HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit ollama (/bye)
"""

INT_OPTIONS = {"num_ctx", "num_batch", "num_predict", "num_keep", "seed", "top_k", "repeat_last_n", "num_thread", "num_gpu"}
FLOAT_OPTIONS = {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty"}


class Session:
    """One interactive chat: the model, its messages, and what /set changed."""

    def __init__(self, client: Client, model: str, options: dict[str, Any], *, verbose: bool = False,
                 keep_alive: str | None = None, fmt: str | None = None, think: bool | str | None = None,
                 hide_thinking: bool = False, wordwrap: bool = True):
        self.client = client
        self.model = model
        self.options = dict(options)
        self.verbose = verbose
        self.keep_alive = keep_alive
        self.format = fmt
        self.think = think  # None: as the model does (Ollama's CLI turns it on for a thinking model)
        self.hide_thinking = hide_thinking
        self.wordwrap = wordwrap
        self.system: str | None = None
        self.messages: list[dict[str, Any]] = []
        self._capabilities: tuple[str, list[str]] | None = None
        self.history = not envconfig.no_history()

    # -- input ------------------------------------------------------------------------------
    def read_message(self) -> str | None:
        """One message from the user (\"\"\" for several lines); None at Ctrl+D."""
        line = input(">>> ")
        if not line.startswith('"""'):
            return line
        text = line[3:]
        if text.endswith('"""') and len(text) >= 3:
            return text[:-3]
        lines = [text] if text else []
        while True:
            more = input("... ")
            if more.endswith('"""'):
                lines.append(more[:-3])
                return "\n".join(lines)
            lines.append(more)

    # -- commands ---------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a /command; False when the session should end."""
        words = line.split()
        name, args = words[0], words[1:]
        if name in ("/bye", "/exit"):
            return False
        if name in ("/?", "/help"):
            topic = args[0] if args else ""
            print({"set": HELP_SET, "/set": HELP_SET, "show": HELP_SHOW, "/show": HELP_SHOW,
                   "shortcut": HELP_SHORTCUTS, "shortcuts": HELP_SHORTCUTS}.get(topic, HELP))
        elif name == "/set":
            self.set(line, args)
        elif name == "/show":
            self.show(args)
        elif name == "/clear":
            self.messages = []
            print("Cleared session context")
        elif name == "/load":
            if not args:
                print("Usage:\n  /load <modelname>")
            else:
                self.load(args[0])
        elif name == "/save":
            if not args:
                print("Usage:\n  /save <modelname>")
            else:
                self.save(args[0])
        else:
            print(f"Unknown command '{name}'. Type /? for help")
        return True

    def set(self, line: str, args: list[str]) -> None:
        if not args:
            print(HELP_SET)
            return
        what = args[0]
        if what == "parameter":
            if len(args) < 3:
                print("Usage: /set parameter <name> <value>")
                return
            key, values = args[1], args[2:]
            try:
                if key == "stop":
                    value: Any = values
                elif key in INT_OPTIONS:
                    value = int(values[0])
                elif key in FLOAT_OPTIONS:
                    value = float(values[0])
                else:
                    print(f"Couldn't set parameter: unknown parameter '{key}'")
                    return
            except ValueError:
                print(f"Couldn't set parameter: invalid value '{values[0]}' for '{key}'")
                return
            self.options[key] = value
            print(f"Set parameter '{key}' to '{', '.join(values)}'")
        elif what == "system":
            text = line.split("system", 1)[1].strip()
            if text.startswith('"""'):
                text = text[3:]
                while not text.endswith('"""'):
                    text += "\n" + input("... ")
                text = text[:-3]
            self.system = text.strip('"')
            self.messages = [m for m in self.messages if m["role"] != "system"]
            print("Set system message.")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            print("Set 'verbose' mode." if self.verbose else "Set 'quiet' mode.")
        elif what in ("history", "nohistory"):
            self.history = what == "history"
            print(f"Set '{what}' mode.")
        elif what == "format":
            if len(args) < 2 or args[1] != "json":
                print("Invalid or missing format. For 'json' mode use '/set format json'")
                return
            self.format = "json"
            print("Set format to 'json' mode.")
        elif what == "noformat":
            self.format = None
            print("Disabled format.")
        elif what in ("wordwrap", "nowordwrap"):
            self.wordwrap = what == "wordwrap"
            print(f"Set '{what}' mode.")
        elif what == "think":
            # A level is passed on as it is: the server says whether the model takes it.
            self.think = args[1] if len(args) > 1 else True
            self.warn_if_not_thinking()
            print(f"Set 'think' mode to '{args[1]}'." if len(args) > 1 else "Set 'think' mode.")
        elif what == "nothink":
            self.think = False
            self.warn_if_not_thinking()
            print("Set 'nothink' mode.")
        elif what in ("hidethinking", "nohidethinking"):  # pollama's; Ollama has only the --hidethinking flag
            self.hide_thinking = what == "hidethinking"
            print(f"Set '{what}' mode.")
        else:
            print(f"Unknown command '/set {what}'. Type /? for help")

    def show(self, args: list[str]) -> None:
        if not args:
            print(HELP_SHOW)
            return
        try:
            info = self.client.request("POST", "/api/show", {"model": self.model})
        except ServerError as e:
            print(f"error: {e}")
            return
        what = args[0]
        if what == "info":
            details = info.get("details") or {}
            model_info = info.get("model_info") or {}
            arch = model_info.get("general.architecture", details.get("family", ""))
            rows = [("architecture", arch), ("parameters", details.get("parameter_size", "")),
                    ("context length", model_info.get(f"{arch}.context_length", "")),
                    ("embedding length", model_info.get(f"{arch}.embedding_length", "")),
                    ("quantization", details.get("quantization_level", ""))]
            print("  Model")
            for key, value in rows:
                print(f"    {key:<20}{value}")
            print("\n  Capabilities")
            for cap in info.get("capabilities") or []:
                print(f"    {cap}")
            print()
        elif what == "license":
            print(info.get("license") or "No license was specified for this model.")
        elif what == "modelfile":
            print(info.get("modelfile", ""))
        elif what == "parameters":
            params = info.get("parameters") or ""
            print("Model defined parameters:\n" + params if params else "No parameters were specified for this model.")
            if self.options:
                print("User defined parameters:")
                for key, value in self.options.items():
                    print(f"{key:<30} {value}")
        elif what == "system":
            print(self.system or info.get("system") or "No system message was specified for this model.")
        elif what == "template":
            print(info.get("template") or "No prompt template was specified for this model.")
        else:
            print(f"Unknown command '/show {what}'. Type /? for help")

    def load(self, model: str) -> None:
        try:
            self.client.request("POST", "/api/generate", {"model": model})
        except ServerError as e:
            print(f"error: {e}")
            return
        self.model, self.messages = model, []
        print(f"Loading model '{model}'")

    def save(self, name: str) -> None:
        body: dict[str, Any] = {"model": name, "from": self.model, "messages": self.messages,
                                "parameters": self.options, "stream": False}
        if self.system is not None:
            body["system"] = self.system
        try:
            self.client.request("POST", "/api/create", body)
        except ServerError as e:
            print(f"error: {e}")
            return
        print(f"Created new model '{name}'")

    # -- chat -------------------------------------------------------------------------------
    def capabilities(self) -> list[str]:
        """What the model can do (asked once per model)."""
        if self._capabilities is None or self._capabilities[0] != self.model:
            self._capabilities = (self.model, model_capabilities(self.client, self.model))
        return self._capabilities[1]

    def takes_images(self) -> bool:
        return "vision" in self.capabilities()

    def warn_if_not_thinking(self) -> None:
        if "thinking" not in self.capabilities():
            print(f'warning: model "{self.model}" does not support thinking output', file=sys.stderr)

    def chat(self, text: str) -> None:
        """Send one user message and stream the answer; Ctrl+C drops the turn."""
        messages = list(self.messages)
        if self.system is not None and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system})
        message: dict[str, Any] = {"role": "user", "content": text}
        if self.takes_images():
            message["content"], images, notes = extract_images(text)
            for note in notes:
                print(note)
            if images:
                message["images"] = images
        messages.append(message)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "options": self.options}
        if self.keep_alive:
            body["keep_alive"] = self.keep_alive
        if self.format:
            body["format"] = self.format
        think = self.think if self.think is not None else (True if "thinking" in self.capabilities() else None)
        if think is not None:
            body["think"] = think
        started = time.perf_counter_ns()
        final = None
        printer = AnswerPrinter(sys.stdout, wrap=self.wordwrap, hide_thinking=self.hide_thinking, spinner=Spinner())
        try:
            for message in self.client.stream("/api/chat", body):
                if message.get("done"):
                    final = message
                    continue
                printer.add(message["message"].get("content", ""), message["message"].get("thinking", ""))
        except KeyboardInterrupt:
            printer.close()
            print()
            return
        except ServerError as e:
            printer.close()
            # Ollama's words for a think the model does not take; the session goes on either way.
            thinking_error = "does not support thinking" in str(e) or "invalid think value" in str(e)
            print(f"error: {e}" if thinking_error else f"\nError: {e}")
            return
        printer.close()
        print("\n")
        answer = {"role": "assistant", "content": "".join(printer.content)}
        if printer.thinking:
            answer["thinking"] = "".join(printer.thinking)
        self.messages = messages + [answer]
        if self.verbose and final is not None:
            from pollama.cli.main import print_timings

            print_timings(final, final.get("total_duration") or time.perf_counter_ns() - started, final.get("load_duration", 0))


def _history_file() -> Path:
    return Path.home() / ".ollama" / "history"


def repl(client: Client, args) -> int:
    """The interactive loop for `run MODEL` on a terminal; returns the exit status."""
    from pollama.cli.main import run_flags, think_value

    model, keep_alive = args.model, args.keepalive
    session = Session(client, model, run_flags(args), verbose=args.verbose, keep_alive=keep_alive, fmt=args.format,
                      think=think_value(args.think), hide_thinking=args.hidethinking, wordwrap=not args.nowordwrap)
    with Spinner():  # while the model loads
        client.request("POST", "/api/generate", {"model": model, **({"keep_alive": keep_alive} if keep_alive else {})})
    readline = None
    if sys.stdin.isatty():
        try:
            import readline

            if session.history:
                _history_file().parent.mkdir(parents=True, exist_ok=True)
                if _history_file().exists():
                    readline.read_history_file(_history_file())
        except (ImportError, OSError):
            readline = None
    try:
        while True:
            try:
                text = session.read_message()
            except KeyboardInterrupt:
                print("\nUse Ctrl + d or /bye to exit.")
                continue
            except EOFError:
                print()
                return 0
            if text.startswith("/") and not text.startswith('/"""'):
                if not session.command(text.strip()):
                    return 0
                continue
            if not text.strip():
                continue
            session.chat(text)
    finally:
        if readline is not None and session.history:
            try:
                readline.write_history_file(_history_file())
            except OSError:
                pass

