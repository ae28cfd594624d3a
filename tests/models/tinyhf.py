"""Tiny random Hugging Face checkpoints, built offline, for proving converters against transformers.

A test builds a small config of the HF architecture, a byte-level BPE tokenizer trained on a
few sentences (deterministic), perturbs the weights (HF's init leaves norms at 1 or 0 and
biases at 0, which would hide mistakes there), saves everything as float32 safetensors, and
compares transformers' float32 logits and greedy tokens with ours on the converted GGUF.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from pollama.create.convert import convert_hf  # noqa: E402
from pollama.fs.gguf import GGUFFile  # noqa: E402
from pollama.debug.steps import StepEngine  # noqa: E402
from pollama.tokenizer import load_tokenizer  # noqa: E402
from pollama.tokenizer.convert import PRE_BY_SPLIT_REGEX  # noqa: E402

# max |ours - transformers| on float32 weights, either backend (F32 cache, exact GELU): measured
# 1.4e-6 to 4.1e-6 on every tiny model (llama, smollm, mistral, qwen2, gemma3, mistral3,
# qwen2-vl, qwen2.5-vl, mllama); cases that differ more have their own named bounds.
TOLERANCE = 1e-5
PROMPT = "The quick brown fox jumps"
GREEDY_STEPS = 16

TRAIN_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you doing today? I'm fine, thanks.",
    "Numbers 123 4567 and 89.0 are counted 1, 2, 3.",
    "Ünïcödé text: naïve café, 日本語, and a llama 🦙.",
    "def f(x):\n    return x * 2  # doubled\n",
    "I've been told he's there; we'll see what they'd say.",
    "   multiple   spaces\tand\ttabs\n\nnewlines here",
]
# Strings our tokenizer must split exactly as the HF one does (specials and unseen text included).
TEST_TEXTS = [
    PROMPT,
    "Hello world! How are you?",
    "I've been 'told' he's there, 'RE you sure? We'Ve a'lL",
    "3 33 333 3333 33333 3.14 1,000",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\n  indented\r\nwindows",
    "naïve café 日本語 🦙🦙 ✅ нещо на Български",
    "code: for i in range(10): print(i**2)",
    "",
]

# The regexes of real tokenizer.json files (Llama 3, Qwen2), by the pre-tokenizer name they imply.
SPLIT_REGEX = {name: regex for regex, name in PRE_BY_SPLIT_REGEX.items()}


def bpe_tokenizer(pre: str, specials: list[str], *, eos: str, bos: str | None = None, add_bos: bool = False,
                  pad: str | None = None, added: tuple[str, ...] = (), trained_size: int = 376,
                  chat_template: str | None = None):
    """A byte-level BPE tokenizer with `specials` first (ids 0..) and the pre-tokenizer of a real family."""
    tok = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))  # as Llama 3's tokenizer.json
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in SPLIT_REGEX)
    if pre in SPLIT_REGEX:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(SPLIT_REGEX[pre]), behavior="isolated"), byte_level])
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        assert pre == "gpt-2", pre
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=trained_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN_TEXTS * 3, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, specials.index(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    if added:
        hf.add_tokens(list(added))  # ordinary (not special) added tokens: user-defined in GGUF
    if chat_template:
        hf.chat_template = chat_template
    return hf


def gemma_tokenizer(specials: list[str], trained_size: int = 300):
    """Gemma's own kind of tokenizer (transformers' GemmaTokenizer, as Gemma 4 ships it): BPE over
    text whose spaces are written "\u2581", with <0xXX> byte fallback, BOS added. Trained on
    TRAIN_TEXTS with newline runs kept apart (as llama.cpp splits them); ids: `specials`, the 256
    byte pieces, then the trained pieces."""
    import json

    from tokenizers import normalizers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\n+"), behavior="isolated")
    tok.train_from_iterator(TRAIN_TEXTS * 3, trainers.BpeTrainer(vocab_size=trained_size, show_progress=False))
    trained = json.loads(tok.to_str())["model"]
    vocab = {s: i for i, s in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    for piece, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    hf = transformers.GemmaTokenizer(vocab=vocab, merges=merges, bos_token="<bos>", eos_token="<eos>",
                                     pad_token="<pad>", unk_token="<unk>", mask_token=None, add_bos_token=True)
    hf.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in hf.all_special_tokens]})
    return hf


def randomize_(model, std: float = 0.1, seed: int = 0) -> None:
    """Add N(0, std) to every parameter, so no norm, bias or gate keeps its tell-nothing init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def save_tiny(model_cls, config, tokenizer, folder: Path, seed: int = 0, stop_ids: list[int] | None = None):
    """Build the model with random weights, save it (float32 safetensors) with its tokenizer; the eval model."""
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = model_cls(config).to(torch.float32).eval()
    randomize_(model, seed=seed)
    if stop_ids:
        model.generation_config.eos_token_id = stop_ids  # generation_config.json's list of end ids
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def convert(folder: Path, out: Path, outtype: str = "f32") -> Path:
    """Our converter on the folder (F32 weights unless told)."""
    convert_hf(folder, out, outtype=outtype)
    return out


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """transformers' float32 logits for every position."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def hf_greedy(model, ids: list[int], steps: int = GREEDY_STEPS) -> list[int]:
    """transformers' generate(do_sample=False), never stopping early at an end token."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=steps, min_new_tokens=steps,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()


def our_logits(gguf: Path, backend: str, ids: list[int], f32_cache: bool = True, exact_gelu: bool = False) -> np.ndarray:
    """Our StepEngine's logits for every position (F32 K/V cache unless told; on ggml, GELU from
    llama.cpp's F16 table unless `exact_gelu`)."""
    # On ggml, rounding K and V to F16 alone moves these logits by 1.4e-3 to 2.4e-3 (measured
    # on the Llama and Qwen2 cases; 2e-6 with an F32 cache), which would hide the converter's
    # exactness. The torch reference backend keeps its cache in float32 whatever it is asked.
    with StepEngine(gguf, backend=backend, num_ctx=64, kv_cache_type="f32" if f32_cache else "f16",
                    exact_gelu=exact_gelu) as engine:
        return engine.logits(ids)


def our_greedy(gguf: Path, backend: str, ids: list[int], steps: int = GREEDY_STEPS, f32_cache: bool = False) -> list[int]:
    """Greedy tokens from our StepEngine: prefill, then one decode step per token through the KV cache
    (F16 unless told, as a user runs it)."""
    with StepEngine(gguf, backend=backend, num_ctx=64, kv_cache_type="f32" if f32_cache else None) as engine:
        logits, _ = engine.prefill(ids)
        out = []
        for _ in range(steps):
            out.append(int(np.argmax(logits)))
            logits = engine.decode(out[-1])
        return out


def hf_ids(tokenizer, text: str) -> list[int]:
    """HF's ids for text, with the tokenizer's own special tokens (BOS...)."""
    return tokenizer(text).input_ids


def read_gguf(path: Path) -> tuple[dict, dict]:
    """(metadata, {tensor name: (GGML type name, PyTorch-order shape)}) of a GGUF file."""
    with GGUFFile(path) as f:
        tensors = {t.name: (t.type.name, t.shape) for t in f.tensors.values()}
        return dict(f.metadata), tensors


@dataclass
class Case:
    """One tiny checkpoint, converted: the HF model and tokenizer, the folder, our GGUF, a prompt."""

    model: Any
    tokenizer: Any
    folder: Path
    gguf: Path
    ids: list[int]


def build_case(tmp: Path, model_cls, config, tokenizer, seed: int = 0, stop_ids: list[int] | None = None) -> Case:
    """Save a tiny random model in tmp/tiny, convert it to tmp/tiny.gguf with F32 weights."""
    folder = tmp / "tiny"
    model = save_tiny(model_cls, config, tokenizer, folder, seed=seed, stop_ids=stop_ids)
    gguf = convert(folder, tmp / "tiny.gguf")
    saved = transformers.AutoTokenizer.from_pretrained(folder)  # what a user of the folder gets
    return Case(model, saved, folder, gguf, hf_ids(saved, PROMPT))


class GGMLGelu(torch.nn.Module):
    """GELU (tanh form) as ggml's CPU kernels compute it: looked up in a table indexed by the
    input rounded to F16, holding F16 results (GGML_GELU_FP16, as in llama.cpp); exact outside ±10."""

    def __init__(self):
        super().__init__()
        x = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
        self.table = torch.nn.functional.gelu(x, approximate="tanh").half().float()

    def forward(self, x):
        looked_up = self.table[x.half().view(torch.int16).long() & 0xFFFF]
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, looked_up))


def hf_logits_with_ggml_gelu(model, ids: list[int]) -> np.ndarray:
    """transformers' logits with each MLP's GELU replaced by ggml's F16-table one."""
    acts = [layer.mlp.act_fn for layer in model.model.layers]
    try:
        for layer in model.model.layers:
            layer.mlp.act_fn = GGMLGelu()
        return hf_logits(model, ids)
    finally:
        for layer, act in zip(model.model.layers, acts):
            layer.mlp.act_fn = act


def max_logit_diff(case: Case, backend: str, f32_cache: bool = True, ggml_gelu: bool = False,
                   exact_gelu: bool = False) -> float:
    """max |ours - transformers| over every position of the prompt (`ggml_gelu`: transformers
    with ggml's table GELU; `exact_gelu`: ours with the formula's)."""
    ours = our_logits(case.gguf, backend, case.ids, f32_cache, exact_gelu)
    ref = (hf_logits_with_ggml_gelu if ggml_gelu else hf_logits)(case.model, case.ids)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max())


def assert_tokenizer_matches(case: Case) -> None:
    """Our tokenizer, built from the GGUF's metadata alone, gives HF's ids on every test string."""
    metadata, _ = read_gguf(case.gguf)
    ours = load_tokenizer(metadata)
    specials = case.tokenizer.all_special_tokens
    added = case.tokenizer.get_added_vocab()
    for text in TEST_TEXTS + [f"{s} x{s}y" for s in specials] + [f"a{t}b" for t in added]:
        assert ours.encode(text, add_special=True, parse_special=True) == hf_ids(case.tokenizer, text), text
    assert len(ours.vocab.tokens) == case.model.config.vocab_size
