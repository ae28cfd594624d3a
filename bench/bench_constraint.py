"""Benchmark (not a test): the cost of structured outputs per generated token.

Walks fixed JSON documents token by token through a TokenConstraint for each installed real
model's vocabulary and reports mask() / accept() / apply_mask() times, plus the one-off costs
(building llguidance's tokenizer, compiling a format).

    .venv/bin/python bench/bench_constraint.py
"""

from __future__ import annotations

import time

import numpy as np

from pollama.fs.gguf import read_metadata
from pollama.sample.constraint import apply_mask, guidance_tokenizer, make_constraint
from pollama.store.embedded import embedded_model_path
from pollama.tokenizer import load_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"]},
    },
    "required": ["name", "age", "color", "tags", "address"],
}
DOCUMENTS = {
    "json": '{\n  "title": "A long walk",\n  "summary": "Two friends cross the mountains in winter and talk about '
            'everything they never said.",\n  "year": 1998,\n  "rating": 4.5,\n  "genres": ["drama", "travel"],\n'
            '  "cast": [{"name": "Ann", "role": "lead"}, {"name": "Bo", "role": null}]\n}',
    "schema": '{"name": "Alice Johnson, the well-known writer from Springfield", "age": 42, "color": "green", '
              '"tags": ["writer", "traveller", "cook"], "address": {"city": "Springfield", "zip": "12345"}}',
}
MODELS = ("smollm2", "qwen2.5-coder-0.5b", "gemma3-270m")


def stats(times: list[float]) -> str:
    ms = 1e3 * np.array(times)
    return f"median {np.median(ms):6.3f}  p90 {np.percentile(ms, 90):6.3f}  max {ms.max():6.3f}"


def main() -> None:
    for model in MODELS:
        try:
            tokenizer = load_tokenizer(read_metadata(embedded_model_path(model)))
        except FileNotFoundError:
            print(f"{model}: not installed, skipped")
            continue
        start = time.perf_counter()
        guidance_tokenizer(tokenizer)
        build = time.perf_counter() - start
        print(f"\n{model}: vocabulary {tokenizer.vocab_size}, llguidance tokenizer built in {build * 1e3:.0f} ms (once)")
        logits = np.random.default_rng(0).standard_normal(tokenizer.vocab_size).astype(np.float32)
        for name, fmt in (("json", "json"), ("schema", SCHEMA)):
            tokens = tokenizer.encode(DOCUMENTS[name], add_special=False, parse_special=False)
            mask_times, accept_times, apply_times, compile_times = [], [], [], []
            for _ in range(5):
                start = time.perf_counter()
                constraint = make_constraint(tokenizer, fmt)
                compile_times.append(time.perf_counter() - start)
                for token in tokens:
                    start = time.perf_counter()
                    mask = constraint.mask()
                    mask_times.append(time.perf_counter() - start)
                    assert mask[token], f"{tokenizer.token_piece(token)!r} refused after {constraint.text()!r}"
                    start = time.perf_counter()
                    apply_mask(logits, mask)
                    apply_times.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    constraint.accept(token)
                    accept_times.append(time.perf_counter() - start)
                assert constraint.done
            print(f"  {name:6} ({len(tokens)} tokens) ms  compile: {stats(compile_times)}")
            print(f"  {'':6} {'':>13} mask:    {stats(mask_times)}")
            print(f"  {'':6} {'':>13} accept:  {stats(accept_times)}")
            print(f"  {'':6} {'':>13} apply:   {stats(apply_times)}")


if __name__ == "__main__":
    main()
