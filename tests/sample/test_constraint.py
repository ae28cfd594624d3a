"""Structured outputs: llguidance masks keep every generation inside the format's JSON grammar."""

from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest

from pollama.sample import Sampler, SamplerOptions
from pollama.sample.constraint import (
    ConstraintViolation, apply_mask, format_from_response_format, guidance_tokenizer, make_constraint,
)
from realmodels import real_model

# Ten schemas of the kinds clients send: required fields, bounds, enums, arrays, nesting, anyOf, patterns.
# Objects are closed and strings bounded (as OpenAI's strict mode asks): a 135M model at
# temperature 1 otherwise invents keys or runs on inside a string until num_predict, which no
# mask can prevent (the prefix stays valid, the document never ends).
SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {
            "color": {"type": "string", "enum": ["red", "green", "blue"]},
            "size": {"enum": ["S", "M", "L", 42]},
        },
        "required": ["color", "size"],
        "additionalProperties": False,
    },
    "string_array": {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 2, "maxItems": 4}},
        "required": ["tags"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    "geo": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                            "required": ["lat", "lon"], "additionalProperties": False},
                },
                "required": ["city", "zip", "geo"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "any_of": {
        "type": "object",
        "properties": {
            "id": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^id-[a-z]{2,6}$"}]},
            "contact": {"anyOf": [
                {"type": "object", "properties": {"email": {"type": "string", "format": "email", "maxLength": 40}}, "required": ["email"],
                 "additionalProperties": False},
                {"type": "object", "properties": {"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}},
                 "required": ["phone"], "additionalProperties": False},
            ]},
        },
        "required": ["id", "contact"],
        "additionalProperties": False,
    },
    "pattern": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                       "date": {"type": "string", "format": "date"}},
        "required": ["code", "date"],
        "additionalProperties": False,
    },
    "number_bounds": {
        "type": "object",
        "properties": {
            "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
            "count": {"type": "integer", "minimum": -5, "maximum": 5},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["score", "count", "ratio"],
        "additionalProperties": False,
    },
    "object_array": {
        "type": "object",
        "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
            "required": ["name", "qty"], "additionalProperties": False}}},
        "required": ["items"],
        "additionalProperties": False,
    },
    "literals": {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "note": {"type": "null"}, "version": {"const": 2},
                       "kind": {"type": ["string", "null"], "maxLength": 10}},
        "required": ["ok", "note", "version", "kind"],
        "additionalProperties": False,
    },
    "top_level_array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100}, "minItems": 3, "maxItems": 5},
}
# What the model is asked for each format (a 135M model: the mask does the real work).
PROMPTS = {
    "json": "Describe a cat as a short JSON object with the keys name, age and color.",
    "person": "Give a person's name and age as JSON.",
    "enums": "Pick a t-shirt color and size. Answer in JSON.",
    "string_array": "List a few tags for a blog post about cooking, as JSON.",
    "nested": "Give a shop's name and address as JSON.",
    "any_of": "Give a customer id and contact as JSON.",
    "pattern": "Give a product code and a release date as JSON.",
    "number_bounds": "Rate a movie as JSON.",
    "object_array": "List items on a shopping list with quantities, as JSON.",
    "literals": "Answer in JSON: is the sky blue?",
    "top_level_array": "Give a few numbers as a JSON array.",
}
FORMATS = {"json": "json", **SCHEMAS}
MAX_NEW_TOKENS = 200


def validate(fmt, text: str):
    value = json.loads(text)
    if fmt == "json":
        assert isinstance(value, dict), f"format json must give an object, got {text!r}"
    else:
        jsonschema.validate(value, fmt)
    return value


# --- without a model: the tokenizer alone --------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from pollama.fs.gguf import read_metadata
    from pollama.tokenizer import load_tokenizer

    return load_tokenizer(read_metadata(real_model("smollm2")))


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special=False, parse_special=False)


def test_json_accepts_an_object_and_is_done_at_its_end(tokenizer):
    constraint = make_constraint(tokenizer, "json")
    text = '{"name": "Bob", "tags": [1, 2.5e3, "x", true, null],\n    "o": {"k": {}}}'
    for token in encode(tokenizer, text):
        assert not constraint.done
        mask = constraint.mask()
        assert mask.shape == (tokenizer.vocab_size,) and mask.dtype == np.bool_ and mask[token]
        constraint.accept(token)
    assert constraint.done and constraint.can_end and constraint.text() == text
    # Once complete only the end-of-generation tokens remain.
    assert set(np.flatnonzero(constraint.mask())) == set(tokenizer.eog_ids)


def test_json_means_an_object(tokenizer):
    constraint = make_constraint(tokenizer, "json")
    allowed = {tokenizer.token_piece(int(t)) for t in np.flatnonzero(constraint.mask())}
    assert allowed and all(piece.startswith(b"{") for piece in allowed)  # no leading space, no array
    for text in ("[1]", "42", '"s"', " {}"):
        with pytest.raises(ConstraintViolation):
            constraint.accept(encode(tokenizer, text)[0])


def test_whitespace_is_bounded(tokenizer):
    """A model cannot loop on whitespace: one short run between tokens, then it must write JSON."""
    constraint = make_constraint(tokenizer, "json")
    for token in encode(tokenizer, '{"a":'):
        constraint.accept(token)
    space = encode(tokenizer, " ")[0]
    for _ in range(8):
        constraint.accept(space)
    assert not constraint.mask()[space]
    with pytest.raises(ConstraintViolation):
        constraint.accept(space)
    # Pretty-printing stays possible: a line break and an indentation.
    constraint = make_constraint(tokenizer, "json")
    text = '{\n    "a": [\n        1,\n        2\n    ]\n}'
    for token in encode(tokenizer, text):
        constraint.accept(token)
    assert constraint.done


def test_a_rejected_token_leaves_the_state_unchanged(tokenizer):
    constraint = make_constraint(tokenizer, SCHEMAS["person"])
    for token in encode(tokenizer, '{"name": "Al'):
        constraint.accept(token)
    before = constraint.mask().copy()
    with pytest.raises(ConstraintViolation, match="not allowed by the format after"):
        constraint.accept(tokenizer.eos_id)  # the object is not complete
    np.testing.assert_array_equal(constraint.mask(), before)
    for token in encode(tokenizer, 'ice", "age": 7}'):
        constraint.accept(token)
    assert constraint.done and json.loads(constraint.text()) == {"name": "Alice", "age": 7}


def test_end_of_generation_ends_a_document_that_could_go_on(tokenizer):
    constraint = make_constraint(tokenizer, {"type": "integer"})
    for token in encode(tokenizer, "12"):
        constraint.accept(token)
    assert constraint.can_end and not constraint.done
    mask = constraint.mask()
    assert all(mask[t] for t in tokenizer.eog_ids) and mask[encode(tokenizer, "3")[0]]
    constraint.accept(tokenizer.eos_id)
    assert constraint.done and constraint.text() == "12"


def test_special_tokens_are_never_json_text(tokenizer):
    """<|im_end|> may not be written inside a string, where its characters would be allowed."""
    constraint = make_constraint(tokenizer, "json")
    for token in encode(tokenizer, '{"a": "'):
        constraint.accept(token)
    mask = constraint.mask()
    specials = [t for t in range(tokenizer.vocab_size) if tokenizer.is_control(t)]
    assert specials and not mask[specials].any()
    for token in encode(tokenizer, '<|im_end|>"}'):  # the same characters as ordinary tokens
        constraint.accept(token)
    assert constraint.done


def test_clone_and_reset(tokenizer):
    constraint = make_constraint(tokenizer, "json")
    start = constraint.mask().copy()
    for token in encode(tokenizer, '{"a": 1'):
        constraint.accept(token)
    copy = constraint.clone()
    for token in encode(tokenizer, "}"):
        copy.accept(token)
    assert copy.done and not constraint.done and constraint.text() == '{"a": 1'
    constraint.reset()
    assert constraint.text() == "" and not constraint.done
    np.testing.assert_array_equal(constraint.mask(), start)


def test_the_llguidance_tokenizer_is_built_once_per_tokenizer(tokenizer):
    assert guidance_tokenizer(tokenizer) is guidance_tokenizer(tokenizer)
    # llguidance tokenizes with our tokenizer, as the model's prompts are.
    text = '{"a": "hello world", "b": [1, 2]}'
    assert guidance_tokenizer(tokenizer).tokenize_str(text) == encode(tokenizer, text)


def test_the_cache_lets_a_tokenizer_go():
    import gc

    from pollama.fs.gguf import read_metadata
    from pollama.sample import constraint as module
    from pollama.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(read_metadata(real_model("smollm2")))
    make_constraint(tokenizer, "json")
    before = len(module._guidance_tokenizers)
    del tokenizer
    gc.collect()
    assert len(module._guidance_tokenizers) == before - 1


@pytest.mark.parametrize("fmt", ["xml", "JSON", 5, True, ["json"], '{"type": "object"}'])
def test_a_format_that_is_not_json_or_an_object_is_refused(tokenizer, fmt):
    with pytest.raises(ValueError, match=r'^invalid format: .*; expected "json" or a valid JSON Schema object$'):
        make_constraint(tokenizer, fmt)


def test_unset_format_gives_no_constraint(tokenizer):
    assert make_constraint(tokenizer, None) is None and make_constraint(tokenizer, "") is None


@pytest.mark.parametrize("schema, reason", [
    ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "strnig"),
    ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum"),
    ({"type": "string", "pattern": "[a-"}, "regex"),
])
def test_a_schema_that_cannot_be_compiled_is_a_clear_error(tokenizer, schema, reason):
    with pytest.raises(ValueError, match="^invalid JSON schema in format: ") as error:
        make_constraint(tokenizer, schema)
    assert reason in str(error.value) and "\n" not in str(error.value)


def test_keywords_that_cannot_be_enforced_are_ignored_as_ollama_does(tokenizer):
    constraint = make_constraint(tokenizer, {"type": "array", "items": {"type": "integer"}, "uniqueItems": True})
    assert any("uniqueItems" in w for w in constraint.warnings)
    for token in encode(tokenizer, "[1, 2]"):
        constraint.accept(token)
    assert constraint.done


def test_apply_mask():
    logits = np.array([1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)
    mask = np.array([True, False, True, False])  # the model's output is one longer than the vocabulary
    out = apply_mask(logits, mask)
    assert out.dtype == np.float32 and logits[1] == 2.0  # a copy
    np.testing.assert_array_equal(out, [1.0, -np.inf, 3.0, -np.inf, -np.inf])


@pytest.mark.parametrize("response_format, expected", [
    ({"type": "json_object"}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}}, {"type": "object"}),
    ({"type": "json_schema"}, None),
    ({"type": "text"}, None),
    (None, None),
])
def test_format_from_openai_response_format(response_format, expected):
    assert format_from_response_format(response_format) == expected


def test_a_response_format_that_is_not_an_object_is_refused():
    with pytest.raises(ValueError, match="response_format must be an object"):
        format_from_response_format("json_object")


# Pieces the completer prefers: end strings, close structures, then the shortest values.
CLOSERS = [b'"', b"@", b"}", b"]", b",", b"1", b"0", b".", b"t", b"n", b"e"]


def complete(tokenizer, constraint, rng: random.Random, max_steps=400) -> str:
    """Finish a document from any reachable state: mostly closing pieces, sometimes a random short
    one (an email, a pattern or a bound may need a character no closer gives)."""
    closers = [encode(tokenizer, piece.decode())[0] for piece in CLOSERS]
    lengths = np.array([len(tokenizer.token_piece(t)) or 10**6 for t in range(tokenizer.vocab_size)])
    for _ in range(max_steps):
        if constraint.done:
            return constraint.text()
        if constraint.can_end:
            constraint.accept(tokenizer.eos_id)
            continue
        mask = constraint.mask()
        allowed = np.flatnonzero(mask)
        assert allowed.size, f"no token allowed after {constraint.text()!r}"
        choice = next((t for t in closers if mask[t]), None)
        if choice is None or rng.random() < 0.2:
            short = allowed[lengths[allowed] <= 2]
            choice = int(rng.choice(list(short if short.size else allowed)))
        constraint.accept(choice)
    raise AssertionError(f"could not complete {constraint.text()!r}")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_token_the_mask_allows_keeps_the_output_completable(tokenizer, name, seed):
    """Property: walk random allowed tokens, then finish: the result always parses and validates;
    and a random disallowed token is always refused."""
    fmt = FORMATS[name]
    rng = random.Random(seed * 1000 + len(name))
    constraint = make_constraint(tokenizer, fmt)
    for _ in range(rng.randint(1, 40)):
        if constraint.done:
            break
        mask = constraint.mask()
        allowed, refused = np.flatnonzero(mask), np.flatnonzero(~mask)
        bad = int(refused[rng.randrange(refused.size)])
        with pytest.raises(ConstraintViolation):
            constraint.accept(bad)
        # Half the time a short piece, so walks get past strings into structure.
        if rng.random() < 0.5:
            short = [t for t in allowed if len(tokenizer.token_piece(int(t))) <= 2]
            allowed = np.array(short) if short else allowed
        constraint.accept(int(allowed[rng.randrange(allowed.size)]))
    validate(fmt, complete(tokenizer, constraint, rng))


# --- with the real SmolLM2 ------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    from pollama.debug.steps import StepEngine

    with StepEngine(real_model("smollm2"), num_ctx=1024, num_batch=64) as e:
        yield e


def chat_prompt(engine, question: str) -> list[int]:
    text = ("<|im_start|>system\nYou are a helpful assistant. Answer in JSON only.<|im_end|>\n"
            f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    return engine.tokenizer.encode(text)


def generate(engine, fmt, prompt: list[int], options: SamplerOptions) -> tuple[str, str]:
    """(text, done_reason): the loop the runner runs, with the mask applied before sampling."""
    constraint = make_constraint(engine.tokenizer, fmt)
    sampler = Sampler(options, engine.model.vocab_size)
    history = list(prompt)
    logits, _ = engine.prefill(prompt)
    for _ in range(MAX_NEW_TOKENS):
        token = sampler.sample(apply_mask(logits, constraint.mask()), history)
        constraint.accept(token)
        if engine.tokenizer.is_eog(token) or constraint.done:
            return constraint.text(), "stop"
        history.append(token)
        logits = engine.decode(token)
    return constraint.text(), "length"


@pytest.mark.parametrize("name", list(FORMATS))
def test_real_model_output_parses_and_validates(engine, name):
    fmt = FORMATS[name]
    prompt = chat_prompt(engine, PROMPTS[name])
    runs = [SamplerOptions(temperature=0.0)]  # Ollama's defaults otherwise (repeat_penalty 1.1)
    runs += [SamplerOptions(temperature=1.0, seed=seed) for seed in range(5)]
    for options in runs:
        text, reason = generate(engine, fmt, prompt, options)
        assert reason == "stop", f"{name} (temperature {options.temperature}, seed {options.seed}) did not finish: {text!r}"
        validate(fmt, text)


def test_the_constraint_starts_after_a_thinking_block(engine):
    """The runner engages the mask only once </think> is out: free text first, then valid JSON."""
    fmt = SCHEMAS["person"]
    prompt = chat_prompt(engine, PROMPTS["person"]) + engine.tokenizer.encode("<think>\n", add_special=False)
    sampler = Sampler(SamplerOptions(temperature=0.0), engine.model.vocab_size)
    logits, _ = engine.prefill(prompt)
    thinking = []
    for _ in range(24):  # a thinking budget; then the block is closed for the model
        token = sampler.sample(logits, prompt + thinking)
        if engine.tokenizer.is_eog(token) or "</think>" in engine.tokenizer.decode(thinking + [token]):
            break
        thinking.append(token)
        logits = engine.decode(token)
    prompt = prompt + thinking + engine.tokenizer.encode("\n</think>\n\n", add_special=False)
    for options in (SamplerOptions(temperature=0.0), SamplerOptions(temperature=1.0, seed=7)):
        text, reason = generate(engine, fmt, prompt, options)
        assert reason == "stop", text
        validate(fmt, text)


@pytest.mark.parametrize("model", ["qwen2.5-coder-0.5b", "gemma3-270m"])
def test_other_vocabularies(model):
    """Byte-level BPE with 151k tokens (Qwen) and SentencePiece with byte tokens (Gemma)."""
    from pollama.fs.gguf import read_metadata
    from pollama.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(read_metadata(real_model(model)))
    text = '{"name": "Zoë \\u00e9 ✓", "tags": ["a", "b"],\n  "n": -1.5e3, "ok": true}'
    constraint = make_constraint(tokenizer, SCHEMAS["person"] | {"additionalProperties": True})
    for token in encode(tokenizer, text.replace('"tags"', '"age": 3, "tags"')):
        assert constraint.mask()[token], f"{tokenizer.token_piece(token)!r} refused after {constraint.text()!r}"
        constraint.accept(token)
    assert constraint.done
    constraint = make_constraint(tokenizer, "json")
    for token in encode(tokenizer, '{"a": "'):
        constraint.accept(token)
    controls = [t for t in range(tokenizer.vocab_size) if tokenizer.is_control(t)]
    assert not constraint.mask()[controls].any()
