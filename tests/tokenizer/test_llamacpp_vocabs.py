"""llama.cpp's own tokenizer tests, as its repository ships them (models/ggml-vocab-NAME.gguf with
NAME.gguf.inp / .out): every input must give exactly llama.cpp's ids.

setup.sh --test extracts them from the llama-cpp-python 0.3.36 sdist (llama.cpp 0c1e570) into
<venv>/share/llamacpp-vocab (realmodels.llamacpp_vocab). Gemma 4's vocabulary
(tokenizer.ggml.model "gemma4": SentencePiece-style BPE over raw UTF-8) is only here; the others
overlap shared/testdata/vocab and add command-r, deepseek-llm, falcon, mpt, qwen35, refact and
starcoder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from realmodels import llamacpp_vocab
from pollama.fs.gguf import GGUFFile
from pollama.tokenizer import load_tokenizer

# Every vocabulary of llama.cpp 0c1e570's models/ folder that has an .inp/.out pair.
SUITES = ["gemma-4", "bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-bpe",
          "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder"]


def cases(name: str) -> tuple[dict, list[tuple[str, list[int]]]]:
    """(GGUF metadata, [(text, llama.cpp's ids)]) of one suite; skips when setup did not fetch them."""
    path = llamacpp_vocab(name)
    with GGUFFile(path) as f:
        metadata = dict(f.metadata)
    texts = Path(f"{path}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    if texts[-1] == "":
        texts.pop()  # the file ends with the marker
    lines = Path(f"{path}.out").read_text(encoding="utf-8").split("\n")[: len(texts)]
    expected = [[int(t) for t in line.split()] for line in lines]
    assert len(texts) == len(expected) >= 40, f"{name}: {len(texts)} inputs, {len(expected)} outputs"
    return metadata, list(zip(texts, expected, strict=True))


@pytest.mark.parametrize("name", SUITES)
def test_ids_match_llamacpp(name):
    metadata, suite = cases(name)
    tok = load_tokenizer(metadata)
    wrong = []
    for text, expected in suite:
        got = tok.encode(text, add_special=False, parse_special=False)
        if got != expected:
            wrong.append(f"{text!r}:\n  expected {expected}\n  got      {got}")
    assert not wrong, f"{len(wrong)}/{len(suite)} cases differ:\n" + "\n".join(wrong)


def test_gemma4_vocabulary_as_llamacpp_loads_it():
    metadata, suite = cases("gemma-4")
    assert metadata["tokenizer.ggml.model"] == "gemma4"
    tok = load_tokenizer(metadata)
    # BOS always (llama.cpp forces add_bos for Gemma 4); <turn|> and <|tool_response> end
    # generation; "</s>" is plain text there.
    assert tok.encode("Hi", add_special=True)[0] == tok.bos_id == 2
    assert {tok.token_id("<turn|>"), tok.token_id("<|tool_response>"), 1} <= tok.eog_ids
    assert tok.token_id("</s>") not in tok.eog_ids
    # Decoding gives the text back: "▁" is a space again, <0xXX> byte tokens their byte.
    for text, ids in suite:
        assert tok.decode(ids) == text.encode("utf-8", "replace").decode("utf-8", "replace"), text
    # A character the vocabulary lacks falls back to its UTF-8 bytes as <0xXX> tokens.
    rare = "\U0001fa7b"  # X-ray, emoji 14
    ids = tok.encode(rare, add_special=False)
    assert [tok.token_text(i) for i in ids] == ["<0xF0>", "<0x9F>", "<0xA9>", "<0xBB>"]
    assert tok.decode(ids) == rare
