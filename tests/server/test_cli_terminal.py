"""`pollama run` on a terminal (a pseudo-terminal) and through pipes, against a real server:
Ollama's spinner while the model loads, words wrapped at the terminal's width, thinking shown
between "Thinking..." and "...done thinking.", and the REPL's /set think, hidethinking, wordwrap.

What is printed is checked against the server's own answer to the same request (/api/chat at
temperature 0) and against the strings and layout of Ollama's cmd/cmd.go (displayResponse,
thinkingOutputOpeningText/ClosingText) and progress/spinner.go.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys

import pexpect
import pytest
from cliproc import pollama

GREY, BOLD, RESET = "\x1b[38;5;245m", "\x1b[1m", "\x1b[0m"
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
WIDTH = 40  # the pseudo-terminal's columns: Ollama wraps before the last 5
PROSE = "Why is the sky blue?"
OPTIONS = {"temperature": 0, "num_predict": 60}

# smollm2 cannot think; this TEMPLATE makes it. Two worked examples in the template itself show
# a <thought>...</thought> block before the answer, and the prompt opens a <thought> when .Think
# is on, so at temperature 0 the model writes a short thought, closes it, and answers (measured:
# "The user asks for 2+2, which is 4." then "2+2 = 4."). The server infers the tags from the
# template, as Ollama does, so the model has the "thinking" capability.
SHOTS = "".join(f"<|im_start|>user\nWhat is {a}+{a}?<|im_end|>\n<|im_start|>assistant\n"
                f"<thought>The user asks for {a}+{a}, which is {2 * a}.</thought>\n{a}+{a} = {2 * a}.<|im_end|>\n"
                for a in (1, 3))
THOUGHT_TEMPLATE = SHOTS + """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<thought>{{ .Thinking }}</thought>
{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if .Think }}<thought>
{{ end }}"""
QUESTION = "What is 2+2?"


@pytest.fixture(scope="module")
def thinker(server, smollm2_path):
    with server.http() as http:
        digest = "sha256:" + hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
        assert http.post(f"/api/blobs/{digest}", content=smollm2_path.read_bytes()).status_code in (200, 201)
        r = http.post("/api/create", json={"model": "smol-thought", "files": {"m.gguf": digest},
                                           "template": THOUGHT_TEMPLATE, "stream": False})
        assert r.status_code == 200, r.text
        assert "thinking" in http.post("/api/show", json={"model": "smol-thought"}).json()["capabilities"]
    return "smol-thought"


def answer(server, model: str, content: str, options: dict, think=None) -> dict:
    """The server's own answer to the chat turn the CLI sends."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": False, "options": options}
    if think is not None:
        body["think"] = think
    with server.http() as http:
        return http.post("/api/chat", json=body).json()["message"]


def flags(options: dict) -> list[str]:
    return [word for key, value in options.items() for word in (f"--{key.replace('_', '-')}", str(value))]


def on_terminal(server, tmp_path, *args: str, width: int = WIDTH) -> str:
    """`pollama ARGS` with stdin, stdout and stderr on a pseudo-terminal `width` columns wide;
    everything it wrote."""
    env = {**os.environ, "OLLAMA_HOST": server.host, "HOME": str(tmp_path), "TERM": "xterm-256color"}
    child = pexpect.spawn(sys.executable, ["-m", "pollama.cli.main", *args], env=env, encoding="utf-8",
                          timeout=180, dimensions=(24, width))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    return child.before


def screen(raw: str) -> list[str]:
    """The lines a terminal shows for `raw`, interpreting the escapes the CLI writes (cursor
    left, column 1, clear line / to end of line; colours and cursor visibility are dropped)."""
    lines, row, col = [[]], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r\n|\r|\n|.", raw, flags=re.S):
        line = lines[row]
        if token in ("\r\n", "\n"):
            lines.append([])
            row, col = row + 1, 0
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            code, arg = token[-1], token[2:-1]
            if code == "D":
                col = max(0, col - int(arg or 1))
            elif code == "G":
                col = int(arg or 1) - 1
            elif code == "K":  # 2K: the whole line, K: from the cursor on; the cursor stays
                del line[0 if arg == "2" else col:]
        else:
            line[col:col + 1] = [token]
            col += 1
    return ["".join(line) for line in lines]


def after_spinner(raw: str) -> str:
    """What was written after the spinner was erased (all of it if it never showed)."""
    cleared = "\x1b[2K\x1b[1G"
    return raw[raw.rindex(cleared) + len(cleared):] if cleared in raw else raw


def test_run_spins_while_loading_then_wraps_words_at_the_terminal_width(server, tmp_path):
    with server.http() as http:  # unloaded, so the spinner turns while the model loads
        http.post("/api/generate", json={"model": "smollm2", "keep_alive": 0})
    raw = on_terminal(server, tmp_path, "run", "smollm2", PROSE, *flags(OPTIONS))
    text = answer(server, "smollm2", PROSE, OPTIONS)["content"]
    assert "\n" not in text.strip() and len(text) > 2 * WIDTH  # one paragraph, long enough to wrap

    # Ollama's braille frames, several (one every 100 ms while loading), on column 1, then erased.
    frames = re.findall(r"\x1b\[1G([" + SPINNER + r"]) ", raw)
    assert len(frames) >= 3 and frames[:3] == list(SPINNER[:3]), raw[:300]
    answer_at = raw.index(text.split()[0])
    assert raw.rindex("\x1b[2K\x1b[1G", 0, answer_at) > raw.rindex("\x1b[1G" + frames[-1], 0, answer_at)

    lines = [line for line in screen(raw) if line.strip()]
    assert len(lines) >= 3 and all(len(line) <= WIDTH - 5 for line in lines), lines
    assert " ".join(lines).split() == text.split()  # every word whole, none lost
    for line, following in zip(lines, lines[1:]):  # a word moves down only when it does not fit
        # (>=: a word that ends exactly at the margin moves too, when the space after it
        # overflows, as in Ollama's displayResponse)
        assert len(line.rstrip()) + 1 + len(following.split()[0]) >= WIDTH - 5, (line, following)


def test_nowordwrap_writes_the_answer_as_it_comes(server, tmp_path):
    raw = on_terminal(server, tmp_path, "run", "smollm2", PROSE, "--nowordwrap", *flags(OPTIONS))
    text = answer(server, "smollm2", PROSE, OPTIONS)["content"]
    assert after_spinner(raw) == text.replace("\n", "\r\n") + "\r\n"  # the pty's own line endings


def test_thinking_on_a_terminal_and_hidden(server, tmp_path, thinker):
    options = {"temperature": 0, "num_predict": 40}
    thought = answer(server, thinker, QUESTION, options, think=True)
    assert thought["thinking"] and thought["content"]  # the template's worked examples at work

    # A model that thinks does unless told (Ollama's CLI asks for think=true): thinking in grey
    # between its bold headings, then the answer.
    raw = on_terminal(server, tmp_path, "run", thinker, QUESTION, *flags(options), width=120)
    assert after_spinner(raw) == (GREY + BOLD + "Thinking...\r\n" + RESET + GREY + thought["thinking"] + "\r\n"
                     + GREY + BOLD + "...done thinking.\r\n\r\n" + RESET + thought["content"] + "\r\n")

    hidden = on_terminal(server, tmp_path, "run", thinker, QUESTION, "--hidethinking", *flags(options), width=120)
    assert "Thinking" not in hidden and [line for line in screen(hidden) if line.strip()] == [thought["content"]]

    # --think=false: the model is asked not to think; what it writes is all answer.
    plain = answer(server, thinker, QUESTION, options, think=False)
    off = on_terminal(server, tmp_path, "run", thinker, QUESTION, "--think=false", *flags(options), width=120)
    assert "Thinking" not in off and [line for line in screen(off) if line.strip()] == plain["content"].splitlines()
    bare = on_terminal(server, tmp_path, "run", thinker, "--think", QUESTION, *flags(options), width=120)
    assert after_spinner(bare) == after_spinner(raw)  # a bare --think is true and takes no word as its value


def test_thinking_through_a_pipe_is_plain_text(server, thinker):
    # Not a terminal: Ollama's words without colours (its generate path with plainText).
    options = {"temperature": 0, "num_predict": 40}
    thought = answer(server, thinker, QUESTION, options, think=True)
    env = {"OLLAMA_HOST": server.host}
    ran = pollama("run", thinker, QUESTION, *flags(options), env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"Thinking...\n{thought['thinking']}\n...done thinking.\n\n{thought['content']}\n"
    assert "\x1b" not in ran.stderr  # no spinner where stderr is no terminal
    hidden = pollama("run", thinker, QUESTION, "--hidethinking", *flags(options), env=env)
    assert hidden.stdout == thought["content"] + "\n"
    bad = pollama("run", thinker, QUESTION, "--think=deep", env=env)
    assert bad.returncode == 1
    assert bad.stderr == 'Error: invalid value for --think: "deep" (must be true, false, high, medium, low, or max)\n'


def test_repl_set_think_hidethinking_and_wordwrap(server, tmp_path, thinker):
    env = {**os.environ, "OLLAMA_HOST": server.host, "HOME": str(tmp_path), "TERM": "xterm-256color"}
    child = pexpect.spawn(sys.executable, ["-m", "pollama.cli.main", "run", thinker, "--temperature", "0",
                                           "--num-predict", "40"], env=env, encoding="utf-8", timeout=180,
                          dimensions=(24, 120))
    try:
        child.expect_exact(">>> ")
        child.sendline("/set nothink")
        child.expect_exact("Set 'nothink' mode.")
        child.expect_exact(">>> ")
        child.sendline(QUESTION)
        child.expect_exact(">>> ")
        assert "Thinking..." not in child.before and "<thought>" in child.before  # not split: not asked to think
        for command, said in (("/clear", "Cleared session context"), ("/set think", "Set 'think' mode.")):
            child.sendline(command)
            child.expect_exact(said)
            child.expect_exact(">>> ")
        child.sendline(QUESTION)
        child.expect_exact(">>> ")
        assert GREY + BOLD + "Thinking...\r\n" in child.before and "...done thinking." in child.before
        for command, said in (("/clear", "Cleared session context"), ("/set hidethinking", "Set 'hidethinking' mode."),
                              ("/set think high", "Set 'think' mode to 'high'."),
                              ("/set nowordwrap", "Set 'nowordwrap' mode."), ("/set wordwrap", "Set 'wordwrap' mode.")):
            child.sendline(command)
            child.expect_exact(said)
            child.expect_exact(">>> ")
        child.sendline(QUESTION)
        child.expect_exact(">>> ")
        assert "Thinking" not in child.before and "2+2 = 4." in child.before
        child.sendline("/load smollm2")
        child.expect_exact(">>> ")
        child.sendline("/set think")  # a model that cannot think: Ollama's warning, on stderr
        child.expect_exact('warning: model "smollm2" does not support thinking output')
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
