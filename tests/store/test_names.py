"""Model names: Ollama's grammar, defaults, display form, case folding, and path safety."""

from __future__ import annotations

import pytest

from pollama.store.errors import InvalidName, StoreError
from pollama.store.names import ModelName, is_valid_name, parse_name

P80 = "8" * 80
P350 = "3" * 350

# input -> (host, namespace, model, tag, scheme), after Ollama's defaults.
PARSED = {
    "model": ("registry.ollama.ai", "library", "model", "latest", "https"),
    "model:tag": ("registry.ollama.ai", "library", "model", "tag", "https"),
    "namespace/model": ("registry.ollama.ai", "namespace", "model", "latest", "https"),
    "namespace/model:tag": ("registry.ollama.ai", "namespace", "model", "tag", "https"),
    "host/namespace/model": ("host", "namespace", "model", "latest", "https"),
    "host/namespace/model:tag": ("host", "namespace", "model", "tag", "https"),
    "host:port/namespace/model": ("host:port", "namespace", "model", "latest", "https"),
    "host:port/namespace/model:tag": ("host:port", "namespace", "model", "tag", "https"),
    "http://localhost:5000/ns/m:t": ("localhost:5000", "ns", "m", "t", "http"),
    "https://h/n/m": ("h", "n", "m", "latest", "https"),
    "registry.ollama.ai/library/dolphin-mistral:7b-v2.6-dpo-laser-q6_K": (
        "registry.ollama.ai",
        "library",
        "dolphin-mistral",
        "7b-v2.6-dpo-laser-q6_K",
        "https",
    ),
    "_why/_the/_lucky:_stiff": ("_why", "_the", "_lucky", "_stiff", "https"),
    "host:https/namespace/model:tag": ("host:https", "namespace", "model", "tag", "https"),
    "llama3.2:1b": ("registry.ollama.ai", "library", "llama3.2", "1b", "https"),
    "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M": (
        "hf.co",
        "bartowski",
        "SmolLM2-135M-Instruct-GGUF",
        "Q4_K_M",
        "https",
    ),
    f"{P80}/{P80}/{P80}:{P80}": (P80, P80, P80, P80, "https"),
    f"{P350}/{P80}/{P80}:{P80}": (P350, P80, P80, P80, "https"),
}

INVALID = [
    "",
    "^",
    "mm:",
    "n/m:",
    "/nn/mm",
    "//",
    "//mm",
    "hh//",
    "//mm:@",
    "@",
    "@t",
    "00@",
    "m@d",
    "model@sha256:" + "0" * 64,  # Ollama dropped digest references from names
    "-hh/nn/mm:tt",
    "hh/-nn/mm:tt",
    "hh/nn/-mm:tt",
    "hh/nn/mm:-tt",
    "host/name:space/model:tag",  # ':' only in the host
    "ns.x/model",  # '.' not in a namespace
    "a/b/c/d",  # four '/'-parts: the host would hold a '/'
    "ftp://h/n/m",  # only http and https
    "m:" + "t" * 81,
    "m" * 81,
    f"{'3' * 351}/n/m:t",
    "mo del",
    " model",
    "model ",
    "model\n",
    "héllo",
    "model:tag:extra",
]

# Everything that might walk out of manifests/ or blobs/ if it were joined into a path.
PATH_TRICKS = [
    "..",
    ".",
    "../x",
    "x/..",
    "../../etc/passwd",
    "/etc/passwd",
    "a/../b",
    "ns/..:latest",
    "..:latest",
    "model:..",
    "model:../../x",
    "..\\..\\x",
    "a\\b",
    "C:\\models\\x",
    "./model",
    "~/model",
    "~user/ns/m",
    "a\x00b",
    "%2e%2e/x",
    ".hidden",
    "ns/.hidden",
    "h/n/m:.t",
    "h/../m:t",
    "../n/m:t",
    "h/n/m:t/..",
]


@pytest.mark.parametrize("text", PARSED)
def test_parse_fills_defaults(text):
    name = parse_name(text)
    assert (name.host, name.namespace, name.model, name.tag, name.scheme) == PARSED[text]
    assert is_valid_name(text)


@pytest.mark.parametrize("text", INVALID + PATH_TRICKS)
def test_invalid_names_are_refused(text):
    assert not is_valid_name(text)
    with pytest.raises(InvalidName, match="invalid model name"):
        parse_name(text)


def test_invalid_name_is_a_store_error_and_a_value_error():
    with pytest.raises(StoreError):
        parse_name("../x")
    with pytest.raises(ValueError):
        parse_name("../x")


def test_error_names_the_part_at_fault():
    with pytest.raises(InvalidName, match="namespace 'ns.x'"):
        parse_name("ns.x/model")
    with pytest.raises(InvalidName, match="tag is empty"):
        parse_name("model:")
    with pytest.raises(InvalidName, match="longer than 80"):
        parse_name("m" * 81)
    with pytest.raises(InvalidName, match="digest references"):
        parse_name("m@sha256:abc")


def test_constructor_validates_parts():
    with pytest.raises(InvalidName):
        ModelName("registry.ollama.ai", "library", "..", "latest")
    with pytest.raises(InvalidName):
        ModelName("h", "n/x", "m", "t")
    with pytest.raises(InvalidName):
        ModelName.from_parts(("h", "n", "m"))


@pytest.mark.parametrize(
    "text, shown",
    [
        ("model", "model:latest"),
        ("model:7b", "model:7b"),
        ("library/model:7b", "model:7b"),
        ("REGISTRY.OLLAMA.AI/LIBRARY/model:7b", "model:7b"),
        ("jmorgan/model", "jmorgan/model:latest"),
        ("hf.co/bartowski/x:Q4_K_M", "hf.co/bartowski/x:Q4_K_M"),
        ("localhost:5000/library/m:t", "localhost:5000/library/m:t"),
    ],
)
def test_display_is_ollamas_shortest_form(text, shown):
    assert parse_name(text).display == shown


def test_str_is_fully_qualified_and_round_trips():
    name = parse_name("m")
    assert str(name) == "registry.ollama.ai/library/m:latest"
    assert parse_name(str(name)) == name
    assert str(name.relpath) == "registry.ollama.ai/library/m/latest"


def test_names_compare_case_insensitively():
    a, b = parse_name("Llama3:Latest"), parse_name("registry.ollama.ai/LIBRARY/llama3:latest")
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert a.model == "Llama3"  # the spelling is kept
    assert parse_name("llama3:8b") != parse_name("llama3:7b")
    assert parse_name("http://h/n/m") == parse_name("h/n/m")  # the scheme is not identity


def test_base_url():
    assert parse_name("m").base_url == "https://registry.ollama.ai"
    assert parse_name("http://localhost:5000/n/m").base_url == "http://localhost:5000"
