"""The `pollama` command as a user runs it: a real process, real files, exit codes and output."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from pollama.fs.ggml_types import GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.fs.writer import write_gguf
from pollama.tokenizer import load_tokenizer
from cliproc import assert_one_line_error, pollama
from realmodels import REFERENCE_MODELS, SHARED, real_model

VOCAB = SHARED / "testdata" / "vocab"


# -- run ------------------------------------------------------------------------------------
def test_run_greedy_matches_llamacpp_and_prints_timings(llamacpp_reference):
    path = real_model("smollm2")
    case = llamacpp_reference["models"][REFERENCE_MODELS["smollm2"]]["generate"][3]
    result = pollama("run", str(path), case["prompt"], "--temperature", "0", "--repeat-penalty", "1",
                     "--num-predict", "8", "--verbose")
    assert result.returncode == 0, result.stderr
    # llama.cpp's text for the same greedy ids (no near-tie in this prompt's first 8 steps).
    with GGUFFile(path) as gguf:
        expected = load_tokenizer(gguf.metadata).decode(case["ids"][:8])
    assert result.stdout == expected + "\n"
    n_prompt = len(case["prompt_ids"])
    for line in ("total duration:", "load duration:", f"prompt eval count:    {n_prompt} token(s)",
                 "prompt eval rate:", "eval count:           8 token(s)", "eval rate:"):
        assert line in result.stderr, result.stderr


def test_run_without_a_server_takes_its_context_from_ollama_context_length():
    """Without --num-ctx, a run in this process gets the server's default context,
    OLLAMA_CONTEXT_LENGTH when set: a longer prompt is cut to fit it, as the server cuts one."""
    prompt = "one two three four five six seven eight nine ten " * 4  # 41 tokens
    short = pollama("run", str(real_model("smollm2")), prompt, "--num-predict", "1", "--verbose",
                    env={"OLLAMA_CONTEXT_LENGTH": "16"})
    assert short.returncode == 0, short.stderr
    evaluated = int(re.search(r"prompt eval count: +(\d+) token", short.stderr).group(1))
    assert 0 < evaluated < 16


def test_verbose_timings_end_with_the_draft_accept_rate(capsys):
    from pollama.cli.main import print_timings

    final = {"prompt_eval_count": 5, "prompt_eval_duration": 10**6, "eval_count": 40, "eval_duration": 10**9,
             "draft_count": 32, "draft_accepted_count": 24}
    print_timings(final, 2 * 10**9, 10**6)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-2].startswith("eval rate:") and lines[-1] == "draft accept rate:    75.00% (24 of 32 draft tokens)"
    print_timings({**final, "draft_count": 0, "draft_accepted_count": 0}, 2 * 10**9, 10**6)
    assert "draft" not in capsys.readouterr().err  # nothing drafted: Ollama's lines only


def test_run_reads_prompt_from_stdin_and_stops_at_stop_string():
    path = real_model("smollm2")
    result = pollama("run", str(path), "--temperature", "0", "--num-predict", "24", "--stop", ",", stdin="1, 2, 3, 4,")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5", result.stdout  # "5," — cut before the stop string


def test_run_by_embedded_name():
    import socket

    real_model("smollm2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    result = pollama("run", "smollm2", "Hi", "--num-predict", "2", "--seed", "1", env={"OLLAMA_HOST": f"127.0.0.1:{port}"})
    assert result.returncode == 0, result.stderr
    # No server answered: it runs here, and says so in one line (Ollama would fail with
    # "could not connect to ollama server").
    assert result.stderr == (f"Warning: could not connect to a pollama server at http://127.0.0.1:{port}; "
                             "running the model in this process (start one with 'pollama serve')\n")


# -- tokenize -------------------------------------------------------------------------------
def test_tokenize_prints_ids(llamacpp_reference):
    path = real_model("smollm2")
    case = llamacpp_reference["models"][REFERENCE_MODELS["smollm2"]]["tokenize"][0]
    result = pollama("tokenize", str(path), stdin=case["text"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == case["ids_special"]


def test_tokenize_jsonl_on_vocab_only_gguf():
    vocab = VOCAB / "ggml-vocab-gpt-2.gguf"
    if not vocab.is_file():
        pytest.skip(f"{vocab} is absent")
    cases = (VOCAB / "ggml-vocab-gpt-2.gguf.inp").read_text().split("\n__ggml_vocab_test__\n")[:-1]
    expected = [[int(i) for i in line.split()] for line in (VOCAB / "ggml-vocab-gpt-2.gguf.out").read_text().splitlines()]
    stdin = "".join(json.dumps(c) + "\n" for c in cases)
    result = pollama("tokenize", str(vocab), "--jsonl", "--no-add-special", "--no-parse-special", stdin=stdin)
    assert result.returncode == 0, result.stderr
    got = [json.loads(line) for line in result.stdout.splitlines()]
    assert got == expected[: len(cases)]


def test_tokenize_parse_special_flag():
    path = real_model("qwen2.5-coder-0.5b")
    special = json.loads(pollama("tokenize", str(path), stdin="<|im_start|>").stdout)
    plain = json.loads(pollama("tokenize", str(path), "--no-parse-special", stdin="<|im_start|>").stdout)
    assert special == [151644] and len(plain) > 1


def test_tokenize_jsonl_bad_line():
    path = real_model("smollm2")
    assert_one_line_error(pollama("tokenize", str(path), "--jsonl", stdin='"ok"\n{not json\n'), "line 2")


# -- bad input: one line, non-zero exit, no traceback ---------------------------------------
def test_missing_model():
    assert_one_line_error(pollama("run", "no-such-model", "hi"), "not found")


def test_directory_as_model(tmp_path):
    assert_one_line_error(pollama("run", str(tmp_path), "hi"), "not a regular file")


def test_truncated_file(tmp_path):
    src = real_model("smollm2")
    for cut in (3, 100, 5000, src.stat().st_size // 2):
        bad = tmp_path / f"cut{cut}.gguf"
        with open(src, "rb") as f:
            bad.write_bytes(f.read(cut))
        assert_one_line_error(pollama("run", str(bad), "hi"))


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"this is not a model file at all" * 10)
    assert_one_line_error(pollama("run", str(bad), "hi"))


def tiny_model(path: Path, arch: str = "llama", tensor_type: GGMLType = GGMLType.F32) -> Path:
    vocab = ["<unk>", "<s>", "</s>", "a", "b"]
    meta = {
        "general.architecture": arch,
        f"{arch}.block_count": 1, f"{arch}.embedding_length": 32, f"{arch}.attention.head_count": 2,
        f"{arch}.attention.head_count_kv": 2, f"{arch}.feed_forward_length": 32, f"{arch}.context_length": 64,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": vocab, "tokenizer.ggml.token_type": [3, 3, 3, 1, 1],
        "tokenizer.ggml.merges": [], "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
    }
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (5, 32), "output_norm.weight": (32,), "blk.0.attn_norm.weight": (32,),
              "blk.0.ffn_norm.weight": (32,), "blk.0.attn_q.weight": (32, 32), "blk.0.attn_k.weight": (32, 32),
              "blk.0.attn_v.weight": (32, 32), "blk.0.attn_output.weight": (32, 32), "blk.0.ffn_gate.weight": (32, 32),
              "blk.0.ffn_up.weight": (32, 32), "blk.0.ffn_down.weight": (32, 32)}
    tensors = [(n, rng.standard_normal(s).astype(np.float32).view(np.uint8).ravel(), GGMLType.F32, s) for n, s in shapes.items()]
    write_gguf(path, meta, tensors)
    if tensor_type != GGMLType.F32:
        # Rewrite one tensor's type field in place: the reader must reject the number.
        with GGUFFile(path) as g:
            names = list(g.tensors)
        data = bytearray(path.read_bytes())
        name = names[0].encode()
        at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
        n_dims = struct.unpack_from("<I", data, at)[0]
        struct.pack_into("<I", data, at + 4 + 8 * n_dims, int(tensor_type))
        path.write_bytes(bytes(data))
    return path


def test_tiny_model_runs(tmp_path):
    path = tiny_model(tmp_path / "tiny.gguf")
    result = pollama("run", str(path), "ab", "--num-predict", "3", "--temperature", "0")
    assert result.returncode == 0, result.stderr


def test_unknown_architecture(tmp_path):
    path = tiny_model(tmp_path / "arch.gguf", arch="martian")
    assert_one_line_error(pollama("run", str(path), "ab"), "martian")


def test_unknown_tensor_type(tmp_path):
    path = tiny_model(tmp_path / "type.gguf", tensor_type=99)  # type: ignore[arg-type]
    assert_one_line_error(pollama("run", str(path), "ab"), "99")


def test_missing_tensor(tmp_path):
    good = tiny_model(tmp_path / "good.gguf")
    with GGUFFile(good) as g:
        meta = dict(g.metadata)
        tensors = [(i.name, np.array(g.tensor_bytes(i.name)), i.type, i.shape) for i in g.tensors.values() if i.name != "blk.0.ffn_up.weight"]
    write_gguf(tmp_path / "missing.gguf", meta, tensors)
    assert_one_line_error(pollama("run", str(tmp_path / "missing.gguf"), "ab"), "blk.0.ffn_up.weight")


def test_tensor_data_past_eof(tmp_path):
    good = tiny_model(tmp_path / "good.gguf")
    bad = tmp_path / "short.gguf"
    bad.write_bytes(good.read_bytes()[:-100])
    assert_one_line_error(pollama("run", str(bad), "ab"), "past the end")
