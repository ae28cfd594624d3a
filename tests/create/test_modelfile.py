"""Modelfile parsing and writing, against the cases of Ollama's parser/parser_test.go.

The first half mirrors the Go tests case by case (Command names and args as Ollama
stores them). Those tests use made-up parameter names (param1, numa), which only
`ollama create` rejects, so they parse with strict=False; the rest checks what create
checks, error lines, BOM/CRLF input, Go's value parsers, and writing then reading back.
"""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pollama.create.modelfile import (
    Command,
    Modelfile,
    ModelfileError,
    format_modelfile,
    parse_modelfile,
)
from pollama.create.options import (
    DEPRECATED_OPTIONS,
    OPTIONS,
    OptionError,
    collect_parameters,
    go_format_float,
    parse_go_bool,
    parse_go_float32,
    parse_go_int,
    parse_parameter,
)

LLAMA3_TEMPLATE = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
)


def cmds(*pairs: tuple[str, str]) -> list[Command]:
    return [Command(name, args) for name, args in pairs]


def loose(text: str | bytes) -> list[Command]:
    """Ollama's ParseFile alone: syntax only, any parameter name."""
    return parse_modelfile(text, strict=False).commands


# --- parser_test.go ------------------------------------------------------------------------


def test_parse_file():  # TestParseFileFile
    text = (
        "\nFROM model1\nADAPTER adapter1\nLICENSE MIT\nPARAMETER param1 value1\n"
        "PARAMETER param2 value2\n"
        'TEMPLATE """{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n'
        "{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n"
        "{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{{ .Response }}<|eot_id|>"""    \n'
    )
    assert loose(text) == cmds(
        ("model", "model1"), ("adapter", "adapter1"), ("license", "MIT"),
        ("param1", "value1"), ("param2", "value2"), ("template", LLAMA3_TEMPLATE),
    )  # fmt: skip


def test_parse_draft():  # TestParseFileDraft
    m = parse_modelfile("\nFROM base\nDRAFT ./assistant\n")
    assert m.commands == cmds(("model", "base"), ("draft", "./assistant"))
    assert "DRAFT ./assistant" in m.to_text()
    assert m.drafts == ["./assistant"]


def test_trim_space():  # TestParseFileTrimSpace
    text = (
        '\nFROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\n'
        "PARAMETER param1        value1\nPARAMETER param2    value2\n"
        'TEMPLATE """   {{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n'
        "{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n"
        "{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{{ .Response }}<|eot_id|>   """    \n'
    )
    assert loose(text) == cmds(
        ("model", "     model 1"), ("adapter", "adapter3"), ("license", "MIT       "),
        ("param1", "value1"), ("param2", "value2"), ("template", "   " + LLAMA3_TEMPLATE + "   "),
    )  # fmt: skip


@pytest.mark.parametrize(
    "text, expected",
    [
        ('FROM "FOO  BAR  "', [("model", "FOO  BAR  ")]),
        ('FROM "FOO BAR"\nPARAMETER param1 value1', [("model", "FOO BAR"), ("param1", "value1")]),
        ("FROM     FOOO BAR    ", [("model", "FOOO BAR")]),
        ("FROM /what/is/the path ", [("model", "/what/is/the path")]),
        ("FROM foo", [("model", "foo")]),
        ("FROM /path/to/model", [("model", "/path/to/model")]),
        ("FROM /path/to/model/fp16.bin", [("model", "/path/to/model/fp16.bin")]),
        ("FROM llama3:latest", [("model", "llama3:latest")]),
        ("FROM llama3:7b-instruct-q4_K_M", [("model", "llama3:7b-instruct-q4_K_M")]),
        ("PARAMETER param1 value1\nFROM foo", [("param1", "value1"), ("model", "foo")]),
        ("PARAMETER what the \nFROM lemons make lemonade ", [("what", "the"), ("model", "lemons make lemonade")]),
    ],
)
def test_from(text, expected):  # TestParseFileFrom
    assert loose(text) == cmds(*expected)


@pytest.mark.parametrize("text", ["", "PARAMETER param1 value1", "# only a comment\n\n"])
def test_missing_from(text):  # TestParseFileFrom, the errMissingFrom cases
    with pytest.raises(ModelfileError, match="^no FROM line$"):
        loose(text)


def test_parameter_missing_value():  # TestParseFileParametersMissingValue
    with pytest.raises(ModelfileError, match=r"^\(line 3\): PARAMETER param1 needs a value"):
        loose("\nFROM foo\nPARAMETER param1\n")


def test_bad_command():  # TestParseFileBadCommand
    with pytest.raises(ModelfileError) as e:
        loose("\nFROM foo\nBADCOMMAND param1 value1\n")
    assert e.value.line == 3
    assert str(e.value) == (
        "(line 3): unknown instruction 'BADCOMMAND': command must be one of \"from\", \"license\", "
        '"template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message", or "requires"'
    )


def test_renderer_and_parser():  # TestParseFileRenderer, TestParseFileParser
    assert loose("\nFROM foo\nRENDERER renderer1\n") == cmds(("model", "foo"), ("renderer", "renderer1"))
    assert loose("\nFROM foo\nPARSER parser1\n") == cmds(("model", "foo"), ("parser", "parser1"))


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\n",
            [("model", "foo"), ("message", "system: You are a file parser. Always parse things.")],
        ),
        (
            "\nFROM foo\nMESSAGE system You are a file parser. Always parse things.",
            [("model", "foo"), ("message", "system: You are a file parser. Always parse things.")],
        ),
        (
            ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\nMESSAGE user Hey there!\n"
            "MESSAGE assistant Hello, I want to parse all the things!\n"),
            [
                ("model", "foo"),
                ("message", "system: You are a file parser. Always parse things."),
                ("message", "user: Hey there!"),
                ("message", "assistant: Hello, I want to parse all the things!"),
            ],
        ),
        (
            '\nFROM foo\nMESSAGE system """\nYou are a multiline file parser. Always parse things.\n"""\n\t\t\t',
            [("model", "foo"), ("message", "system: \nYou are a multiline file parser. Always parse things.\n")],
        ),
    ],
)
def test_messages(text, expected):  # TestParseFileMessages
    assert loose(text) == cmds(*expected)


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("\nFROM foo\nMESSAGE badguy I'm a bad guy!\n", 3, "invalid role 'badguy': message role must be one of"),
        ("\nFROM foo\nMESSAGE system\n", 3, "MESSAGE system needs a value"),
        ("\nFROM foo\nMESSAGE system", 3, "MESSAGE system needs a value"),
        ("FROM foo\nMESSAGE System hi", 2, "invalid role 'System'"),  # roles are case-sensitive
        ("FROM foo\nMESSAGE user: hi", 2, "invalid role 'user:'"),
    ],
)
def test_message_errors(text, line, message):  # TestParseFileMessages, error cases
    with pytest.raises(ModelfileError) as e:
        loose(text)
    assert e.value.line == line
    assert e.value.msg.startswith(message)


@pytest.mark.parametrize(
    "text, system",
    [
        ('\nFROM foo\nSYSTEM """\nThis is a\nmultiline system.\n"""\n\t\t\t', "\nThis is a\nmultiline system.\n"),
        ('\nFROM foo\nSYSTEM """\nThis is a\nmultiline system."""\n\t\t\t', "\nThis is a\nmultiline system."),
        ('\nFROM foo\nSYSTEM """This is a\nmultiline system."""\n\t\t\t', "This is a\nmultiline system."),
        ('\nFROM foo\nSYSTEM """This is a multiline system."""\n\t\t\t', "This is a multiline system."),
        (
            '\nFROM foo\nSYSTEM """\nThis is a multiline system with "quotes".\n"""\n',
            '\nThis is a multiline system with "quotes".\n',
        ),
        ('\nFROM foo\nSYSTEM """"""\n', ""),
        ('\nFROM foo\nSYSTEM ""\n', ""),
        ("\nFROM foo\nSYSTEM \"'\"\n", "'"),
        ('\nFROM foo\nSYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""\n', '\'\'"\'""\'""\'"\'\'\'\'\'""\'""\''),
    ],
)
def test_quoted(text, system):  # TestParseFileQuoted
    assert loose(text) == cmds(("model", "foo"), ("system", system))


def test_quoted_template_at_end_of_file():  # TestParseFileQuoted, last case
    assert loose('\nFROM foo\nTEMPLATE """\n{{ .Prompt }}\n"""') == cmds(
        ("model", "foo"), ("template", "\n{{ .Prompt }}\n")
    )


@pytest.mark.parametrize(
    "text, quote",
    [
        ('\nFROM foo\nSYSTEM """This is a multiline system.""\n\t\t\t', '"""'),
        ('\nFROM foo\nSYSTEM "\n\t\t\t', '"'),
    ],
)
def test_unterminated_quote(text, quote):  # TestParseFileQuoted, io.ErrUnexpectedEOF cases
    with pytest.raises(ModelfileError) as e:
        loose(text)
    assert e.value.line == 3  # where the value opened
    assert e.value.msg.startswith(f"unterminated {quote} quote")


# TestParseFileParameters: PARAMETER <key> gives Command(name, args).
PARAMETER_CASES = {
    "numa true": ("numa", "true"),
    "num_ctx 1": ("num_ctx", "1"),
    "num_batch 1": ("num_batch", "1"),
    "num_gqa 1": ("num_gqa", "1"),
    "num_gpu 1": ("num_gpu", "1"),
    "main_gpu 1": ("main_gpu", "1"),
    "use_mmap true": ("use_mmap", "true"),
    "num_thread 1": ("num_thread", "1"),
    "num_keep 1": ("num_keep", "1"),
    "seed 1": ("seed", "1"),
    "num_predict 1": ("num_predict", "1"),
    "top_k 1": ("top_k", "1"),
    "top_p 1.0": ("top_p", "1.0"),
    "min_p 0.05": ("min_p", "0.05"),
    "typical_p 1.0": ("typical_p", "1.0"),
    "repeat_last_n 1": ("repeat_last_n", "1"),
    "temperature 1.0": ("temperature", "1.0"),
    "repeat_penalty 1.0": ("repeat_penalty", "1.0"),
    "presence_penalty 1.0": ("presence_penalty", "1.0"),
    "frequency_penalty 1.0": ("frequency_penalty", "1.0"),
    "penalize_newline true": ("penalize_newline", "true"),
    "stop ### User:": ("stop", "### User:"),
    "stop ### User: ": ("stop", "### User:"),
    'stop "### User:"': ("stop", "### User:"),
    'stop "### User: "': ("stop", "### User: "),
    'stop """### User:"""': ("stop", "### User:"),
    'stop """### User:\n"""': ("stop", "### User:\n"),
    "stop <|endoftext|>": ("stop", "<|endoftext|>"),
    "stop <|eot_id|>": ("stop", "<|eot_id|>"),
    "stop </s>": ("stop", "</s>"),
}
TYPED = {"1": 1, "1.0": 1.0, "0.05": 0.05, "true": True}


@pytest.mark.parametrize("key", PARAMETER_CASES)
def test_parameters(key):  # TestParseFileParameters
    name, args = PARAMETER_CASES[key]
    text = f"FROM foo\nPARAMETER {key}\n"
    assert loose(text) == cmds(("model", "foo"), (name, args))

    # What `ollama create` then makes of it (api.FormatParams).
    if name in ("numa", "num_gqa"):  # gone from api.Options long before the engine era
        with pytest.raises(ModelfileError, match=rf"^\(line 2\): unknown parameter '{name}'$"):
            parse_modelfile(text)
        return
    m = parse_modelfile(text)
    if name in DEPRECATED_OPTIONS:
        assert m.parameters == {}
        assert m.warnings == [f"(line 2): parameter {name} is deprecated"]
    else:
        assert m.parameters == {name: [args] if name == "stop" else TYPED[args]}
        assert m.warnings == []


def test_comments():  # TestParseFileComments
    assert loose("\n# comment\nFROM foo\n\t") == cmds(("model", "foo"))


@pytest.mark.parametrize(
    "text",
    [
        ("\nFROM foo\nADAPTER adapter1\nLICENSE MIT\nPARAMETER param1 value1\nPARAMETER param2 value2\n"
        "TEMPLATE template1\nMESSAGE system You are a file parser. Always parse things.\nMESSAGE user Hey there!\n"
        "MESSAGE assistant Hello, I want to parse all the things!\n"),
        ("\nFROM foo\nADAPTER adapter1\nLICENSE MIT\nPARAMETER param1 value1\nPARAMETER param2 value2\n"
        'TEMPLATE template1\nMESSAGE system """\nYou are a store greeter. Always respond with "Hello!".\n"""\n'
        "MESSAGE user Hey there!\nMESSAGE assistant Hello, I want to parse all the things!\n"),
        ('\nFROM foo\nADAPTER adapter1\nLICENSE """\nVery long and boring legal text.\nBlah blah blah.\n'
        '"Oh look, a quote!"\n"""\n\nPARAMETER param1 value1\nPARAMETER param2 value2\nTEMPLATE template1\n'
        'MESSAGE system """\nYou are a store greeter. Always respond with "Hello!".\n"""\n'
        "MESSAGE user Hey there!\nMESSAGE assistant Hello, I want to parse all the things!\n"),
        '\nFROM foo\nSYSTEM ""\n',
    ],
)
def test_format_parse(text):  # TestParseFileFormatParseFile
    m = parse_modelfile(text, strict=False)
    assert parse_modelfile(m.to_text(), strict=False) == m


UTF16_TEXT = "FROM bob\nPARAMETER param1 1\nPARAMETER param2 4096\nSYSTEM You are a utf16 file.\n"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16(encoding):  # TestParseFileUTF16ParseFile
    data = ("\ufeff" + UTF16_TEXT).encode(encoding)
    assert loose(data) == cmds(
        ("model", "bob"), ("param1", "1"), ("param2", "4096"), ("system", "You are a utf16 file.")
    )


@pytest.mark.parametrize("encode", [str.encode, lambda s: ("\ufeff" + s).encode("utf-16-le"),
                                    lambda s: ("\ufeff" + s).encode("utf-16-be"), lambda s: s])  # fmt: skip
def test_multibyte(encode):  # TestParseMultiByte (and the same text as a str)
    assert loose(encode("FROM test\n\tSYSTEM 你好👋")) == cmds(("model", "test"), ("system", "你好👋"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("FROM test", {"froms": ["test"]}),
        ("FROM test\nTEMPLATE some template\n", {"froms": ["test"], "template": "some template"}),
        (
            "FROM test\nLICENSE single license\nPARAMETER temperature 0.5\nMESSAGE user Hello\n",
            {
                "froms": ["test"],
                "license": ["single license"],
                "parameters": {"temperature": 0.5},
                "messages": [{"role": "user", "content": "Hello"}],
            },
        ),
        (
            ("FROM test\nPARAMETER temperature 0.5\nPARAMETER top_k 1\nSYSTEM You are a bot.\nLICENSE license1\n"
            "LICENSE license2\nMESSAGE user Hello there!\nMESSAGE assistant Hi! How are you?\n"),
            {
                "froms": ["test"],
                "license": ["license1", "license2"],
                "system": "You are a bot.",
                "parameters": {"temperature": 0.5, "top_k": 1},
                "messages": [
                    {"role": "user", "content": "Hello there!"},
                    {"role": "assistant", "content": "Hi! How are you?"},
                ],
            },
        ),
    ],
)
def test_create_request(text, expected):  # TestCreateRequest, minus the file digests
    m = parse_modelfile(text)
    defaults = {"froms": [], "template": None, "system": None, "license": [], "parameters": {}, "messages": []}
    for attr, value in {**defaults, **expected}.items():
        assert getattr(m, attr) == value, attr
    assert isinstance(m.parameters.get("top_k", 0), int)


# --- what the Go tests leave out ---------------------------------------------------------


def test_every_instruction_any_case():
    text = (
        "from base\nAdapter ./lora\nLiCeNsE MIT\ntemplate {{ .Prompt }}\nSystem be brief\n"
        "parameter temperature 0.25\nPARAMETER stop a\nPARAMETER stop b\nMessage user hi\n"
        "requires v0.14.0\ndraft ./small\nrenderer qwen3-coder\nparser harmony\n"
    )
    m = parse_modelfile(text)
    assert [c.name for c in m.commands] == [
        "model", "adapter", "license", "template", "system", "temperature", "stop", "stop",
        "message", "requires", "draft", "renderer", "parser",
    ]  # fmt: skip
    assert (m.froms, m.adapters, m.license, m.template, m.system) == (
        ["base"], ["./lora"], ["MIT"], "{{ .Prompt }}", "be brief"
    )  # fmt: skip
    assert m.parameters == {"temperature": 0.25, "stop": ["a", "b"]}
    assert m.messages == [{"role": "user", "content": "hi"}]
    assert (m.requires, m.drafts, m.renderer, m.parser) == ("0.14.0", ["./small"], "qwen3-coder", "harmony")
    assert [c.line for c in m.commands] == list(range(1, 14))


def test_last_value_wins_and_stop_accumulates():
    m = parse_modelfile(
        "FROM a\nFROM b\nSYSTEM one\nSYSTEM two\nPARAMETER top_k 1\nPARAMETER stop x\nPARAMETER top_k 2\n"
        "PARAMETER stop y\n"
    )
    assert m.froms == ["a", "b"] and m.system == "two"
    assert m.parameters == {"top_k": 2, "stop": ["x", "y"]}


@pytest.mark.parametrize(
    "text, value",
    [
        ("FROM x # not a comment", "x # not a comment"),
        ('FROM "a" b\nnext"', 'a" b\nnext'),  # a " quote runs on until a line ends with "
        ('FROM """a""" b"""', 'a""" b'),  # only the end of a line can close a quote
        ('FROM """a"""b"""', 'a"""b'),
        ("FROM \"\"\"x\"\"\"\" ", 'x"'),
        ('FROM "x"""', 'x""'),
        ("FROM a\tb ", "a\tb"),
        ("FROM a\x00b\u200dc\u00a0d", "abcd"),  # Go's IsPrint drops these
        ('FROM "a\x0bb\tc\rd"', "ab\tc\rd"),  # but keeps tab and CR inside quotes
    ],
)
def test_value_quirks(text, value):
    assert parse_modelfile(text).froms == [value]


def test_leading_space_and_blank_lines():
    assert loose("\n\n   \t\n  FROM x\n\n\n  # c\n\t\tSYSTEM y  \n") == cmds(("model", "x"), ("system", "y"))


def test_two_spaces_after_parameter_is_an_unnamed_parameter():
    # Ollama reads "PARAMETER  top_k 1" as a parameter named "" with value "top_k 1".
    assert loose("FROM x\nPARAMETER  top_k 1") == cmds(("model", "x"), ("", "top_k 1"))
    with pytest.raises(ModelfileError, match=r"^\(line 2\): PARAMETER needs a name"):
        parse_modelfile("FROM x\nPARAMETER  top_k 1")


def test_bom_and_crlf():
    lf = 'FROM x\nPARAMETER stop "a b"\nSYSTEM hi\n# c\nMESSAGE user yo\n'
    crlf = lf.replace("\n", "\r\n")
    expected = cmds(("model", "x"), ("stop", "a b"), ("system", "hi"), ("message", "user: yo"))
    for text in (lf, crlf, "\ufeff" + crlf, ("\ufeff" + crlf).encode(), crlf.encode("utf-8-sig")):
        assert parse_modelfile(text).commands == expected
    assert [c.line for c in parse_modelfile(crlf).commands] == [1, 2, 3, 5]
    # A BOM before a comment: Go strips it when decoding, so the comment still is one.
    assert loose("\ufeff# c\nFROM x") == cmds(("model", "x"))
    assert loose(b"\xef\xbb\xbf# c\nFROM x") == cmds(("model", "x"))


def test_crlf_inside_a_multiline_value_is_kept():
    # As in Ollama: line breaks inside quotes are kept byte for byte.
    text = 'FROM x\r\nTEMPLATE """a\r\nb"""\r\nSYSTEM s\r\n'
    assert parse_modelfile(text).template == "a\r\nb"
    assert parse_modelfile(text).system == "s"


def test_lone_cr_is_a_line_break():
    assert loose("FROM x\rSYSTEM y\r") == cmds(("model", "x"), ("system", "y"))


def test_invalid_utf8_becomes_replacement_character():
    assert loose(b"FROM x\xffy") == cmds(("model", "x\ufffdy"))


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("FROM x\n\nFROB y", 3, "unknown instruction 'FROB'"),
        ("FROM x\nSYSTEM\nTEMPLATE t", 2, "SYSTEM needs a value"),
        ("FROM x\nSYSTEM", 2, "SYSTEM needs a value"),
        ("FROM x\r\n\r\nFROM1 y\r\n", 3, "unknown instruction 'FROM1'"),  # Ollama says line 5 here
        ("FROM x\nfrom: y", 2, "unknown instruction 'from:'"),
        ('FROM x\n"SYSTEM" y', 2, "unknown instruction '\"SYSTEM\"'"),
        ("FROM x\nPARAMETER top-k 1", 2, "invalid parameter name 'top-k'"),
        ("FROM x\nPARAMETER", 2, "PARAMETER needs a value"),
        ("FROM x\nPARAMETER top_k\nSYSTEM s", 2, "PARAMETER top_k needs a value"),
        ('FROM x\n\nSYSTEM """\nabc\n""\n\n', 3, 'unterminated """ quote'),
        ('FROM x\nSYSTEM "abc" d\nFROM y', 2, 'unterminated " quote'),
        ("FROM x\nMESSAGE tool hi", 2, "invalid role 'tool'"),
        ("FROM x\nMESSAGE  user hi", 2, "invalid role ''"),
        # What `ollama create` checks, reported with the line here.
        ("FROM x\nPARAMETER top_k 1\nPARAMETER Temperature 1", 3, "unknown parameter 'Temperature'"),
        ("FROM x\nPARAMETER num_ctx 4k", 2, "invalid int value '4k' for parameter 'num_ctx'"),
        ("FROM x\nPARAMETER num_ctx 1.5", 2, "invalid int value '1.5' for parameter 'num_ctx'"),
        ("FROM x\nPARAMETER num_ctx 1_000", 2, "invalid int value"),
        ("FROM x\nPARAMETER seed 9223372036854775808", 2, ("invalid int value '9223372036854775808' for "
         "parameter 'seed': out of the int64 range")),
        ('FROM x\nPARAMETER top_p " 0.5"', 2, "invalid float value ' 0.5' for parameter 'top_p'"),
        ("FROM x\nPARAMETER temperature inf", 2, "invalid float value 'inf' for parameter 'temperature': not a finite"),
        ("FROM x\nPARAMETER temperature 1e39", 2, "invalid float value '1e39' for parameter 'temperature': out of"),
        ("FROM x\nPARAMETER use_mmap yes", 2, "invalid bool value 'yes' for parameter 'use_mmap'"),
        ("FROM x\nREQUIRES 0.14.0\nREQUIRES latest", 3, "requires must be a valid semver"),
        ("FROM x\nREQUIRES 01.2.3", 2, "requires must be a valid semver"),
    ],
)
def test_errors_name_their_line(text, line, message):
    with pytest.raises(ModelfileError) as e:
        parse_modelfile(text)
    assert e.value.line == line
    assert e.value.msg.startswith(message), e.value.msg
    assert str(e.value) == f"(line {line}): {e.value.msg}"
    assert "\n" not in str(e.value)


def test_syntax_errors_come_before_missing_from_and_missing_from_before_values():
    with pytest.raises(ModelfileError, match="unknown instruction"):
        parse_modelfile("SYSTEM x\nBAD y")
    with pytest.raises(ModelfileError, match="^no FROM line$"):
        parse_modelfile("PARAMETER nope 1")


def test_deprecated_parameter_values_are_not_checked():
    m = parse_modelfile("FROM x\nPARAMETER mirostat whatever\nPARAMETER top_k 3")
    assert m.parameters == {"top_k": 3}
    assert m.warnings == ["(line 2): parameter mirostat is deprecated"]


@pytest.mark.parametrize(
    "value, normalized",
    [("0.14.0", "0.14.0"), ("v0.14.0", "0.14.0"), ("1", "1"), ("1.2", "1.2"), ("1.2.3-rc.1+build.7", "1.2.3-rc.1+build.7")],
)
def test_requires(value, normalized):
    assert parse_modelfile(f"FROM x\nREQUIRES {value}").requires == normalized


@pytest.mark.parametrize("value", ["1.2.3.4", "1.2-rc1", "1.2.3-01", "vv1", "V1.2.3", "1.2.3-", "1.2.3+"])
def test_requires_rejects(value):
    with pytest.raises(ModelfileError, match="semver"):
        parse_modelfile(f"FROM x\nREQUIRES {value}")


# --- options: Go's strconv as FormatParams uses it ---------------------------------------


def test_option_table():
    assert set(OPTIONS) == {
        "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n",
        "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty", "stop",
        "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
        "draft_num_predict",  # HEAD's; per request here (prompt-lookup drafts)
    }  # fmt: skip
    assert {n for n, o in OPTIONS.items() if o.load_time} == {
        "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
    }  # fmt: skip
    assert not DEPRECATED_OPTIONS & set(OPTIONS)


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_bool_true(text):
    assert parse_go_bool(text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_bool_false(text):
    assert parse_go_bool(text) is False


@pytest.mark.parametrize("text", ["yes", "tRUE", "on", "", " true", "2"])
def test_go_bool_rejects(text):
    with pytest.raises(ValueError):
        parse_go_bool(text)


@pytest.mark.parametrize("text, value", [("0", 0), ("-1", -1), ("+7", 7), ("007", 7), ("9223372036854775807", 2**63 - 1)])
def test_go_int(text, value):
    assert parse_go_int(text) == value


@pytest.mark.parametrize("text", ["", "1.0", "1e3", "0x10", "1_000", " 1", "1 ", "-", "٣", "-9223372036854775809"])
def test_go_int_rejects(text):
    with pytest.raises(ValueError):
        parse_go_int(text)


@pytest.mark.parametrize(
    "text, value",
    [
        ("0.1", 0.1),
        ("1", 1.0),
        ("1.", 1.0),
        (".5", 0.5),
        ("-2.5e-3", -0.0025),
        ("1E2", 100.0),
        ("1_000.5", 1000.5),
        ("0x1p-2", 0.25),
        ("0X_1.8P1", 3.0),
        ("0.123456789", 0.12345679),  # float32, written as Go writes a float32 to JSON
        ("16777217", 16777216.0),  # 2**24 + 1 rounds to even in float32
        ("3.4028235e38", 3.4028235e38),
        ("1e-46", 0.0),  # underflow is not an error in Go
    ],
)
def test_go_float32(text, value):
    assert parse_go_float32(text) == value


@pytest.mark.parametrize("text", ["", ".", "e5", "1e", "1e+", "0x1", "0x1.8", "1__0", "_1", "1_", "1._5",
                                  " 1", "1 ", "inf", "-Infinity", "NaN", "3.4028236e38", "1e400", "1,5", "١"])  # fmt: skip
def test_go_float32_rejects(text):
    with pytest.raises(ValueError):
        parse_go_float32(text)


def test_parse_parameter_errors_name_parameter_and_value():
    with pytest.raises(OptionError, match="^unknown parameter 'nope'$"):
        parse_parameter("nope", "1")
    with pytest.raises(OptionError, match=r"^invalid float value 'hot' for parameter 'temperature'"):
        parse_parameter("temperature", "hot")
    assert parse_parameter("stop", "") == [""]
    assert collect_parameters([("stop", "a"), ("f16_kv", "x"), ("stop", "b"), ("seed", "4")]) == {
        "stop": ["a", "b"],
        "seed": 4,
    }


@pytest.mark.parametrize(
    "x, text",
    [
        (0.5, "0.5"), (1.0, "1"), (100.0, "100"), (123456.0, "123456"), (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"), (0.0001, "0.0001"), (1e-5, "1e-05"), (0.00012, "0.00012"),
        (-2.5, "-2.5"), (0.0, "0"), (1e21, "1e+21"), (1.5e-7, "1.5e-07"), (3.4028234663852886e38, "3.4028234663852886e+38"),
    ],
)  # fmt: skip
def test_go_format_float(x, text):  # Go's %v of a float64
    assert go_format_float(x) == text


# --- writing -----------------------------------------------------------------------------


def test_to_text_spells_values_as_ollama():
    m = Modelfile(
        cmds(
            ("model", "/models/blobs/sha256-1"),
            ("template", "{{ .Prompt }}"),
            ("system", "line one\nline two"),
            ("license", 'a "quoted"\nlicense'),
            ("stop", " x"),
            ("stop", "<|im_end|>"),
            ("message", "user: hi there"),
            ("message", 'assistant: say "x" '),
        )
    )
    assert m.to_text() == (
        "FROM /models/blobs/sha256-1\n"
        "TEMPLATE {{ .Prompt }}\n"
        'SYSTEM "line one\nline two"\n'
        'LICENSE """a "quoted"\nlicense"""\n'
        'PARAMETER stop " x"\n'
        "PARAMETER stop <|im_end|>\n"
        "MESSAGE user hi there\n"
        'MESSAGE assistant """say "x" """\n'
    )


@pytest.mark.parametrize(
    "value, written",
    [
        ("", '""'),  # Ollama writes "SYSTEM " (trailing space): a trimmed line then fails
        ("\tx", '"\tx"'),  # Ollama writes it bare and the tab is trimmed away
        ('"hi"', '""hi""'),  # bare, Ollama's would read back as hi
        ('"', '"""""""'),  # bare, Ollama's would be an unterminated quote
        ("a\rb", '"a\rb"'),  # Ollama quotes only for \n
        ("x\n", '"x\n"'),
    ],
)
def test_to_text_where_ollama_spelling_would_not_read_back(value, written):
    m = Modelfile(cmds(("model", "m"), ("system", value)))
    assert m.to_text() == f"FROM m\nSYSTEM {written}\n"
    assert parse_modelfile(m.to_text()) == m


def test_triple_quote_ending_a_line_cannot_be_written():
    # Ollama writes TEMPLATE """...""" and nothing is escaped: a line of the value that
    # ends with """ closes the quote there, and the rest is read as instructions.
    template = 'def f():\n    """doc"""\n    return 1'
    m = Modelfile(cmds(("model", "m"), ("template", template)))
    with pytest.raises(ModelfileError, match='^TEMPLATE cannot be written in a Modelfile: a line of it ends with """'):
        m.to_text()
    ollama_text = m.to_text(strict=False)
    assert ollama_text == f'FROM m\nTEMPLATE """{template}"""\n'
    with pytest.raises(ModelfileError, match="unknown instruction"):
        parse_modelfile(ollama_text)
    # """ elsewhere in a line is fine, as in Ollama.
    ok = Modelfile(cmds(("model", "m"), ("template", 'a """ b\n"""c\nd"""')))
    assert parse_modelfile(ok.to_text()) == ok


SHOW_EXPECTED = '''# Modelfile generated by "ollama show"
# To build a new Modelfile based on this, replace FROM with:
# FROM smollm2:135m

FROM /root/.ollama/models/blobs/sha256-aa
ADAPTER /root/.ollama/models/blobs/sha256-bb
FROM /root/.ollama/models/blobs/sha256-cc
TEMPLATE "{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}"
SYSTEM You are a helpful AI assistant named SmolLM.
RENDERER qwen3
PARAMETER num_ctx 8192
PARAMETER stop <|im_start|>
PARAMETER stop <|im_end|>
PARAMETER temperature 0.2
PARAMETER use_mmap false
LICENSE """Apache "2.0"
text"""
LICENSE second
MESSAGE user Hello
MESSAGE assistant " Hi"
'''


def test_format_modelfile_is_ollama_show():
    text = format_modelfile(
        "/root/.ollama/models/blobs/sha256-aa",
        name="smollm2:135m",
        adapters=["/root/.ollama/models/blobs/sha256-bb"],
        projectors=["/root/.ollama/models/blobs/sha256-cc"],
        template="{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}",
        system="You are a helpful AI assistant named SmolLM.",
        renderer="qwen3",
        parser="",
        parameters={"num_ctx": 8192, "stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2, "use_mmap": False},
        license=['Apache "2.0"\ntext', "second"],
        messages=[{"role": "user", "content": "Hello"}, {"role": "assistant", "content": " Hi"}],
    )
    assert text == SHOW_EXPECTED
    m = parse_modelfile(text)
    assert m.froms == ["/root/.ollama/models/blobs/sha256-aa", "/root/.ollama/models/blobs/sha256-cc"]
    assert m.parameters == {"num_ctx": 8192, "stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2,
                            "use_mmap": False}  # fmt: skip
    assert m.license == ['Apache "2.0"\ntext', "second"]


def test_format_modelfile_writes_large_ints_as_ints():
    # Go prints the float64 it decoded from JSON: "num_ctx 1e+06", which ParseInt refuses.
    text = format_modelfile("/b", name="m", parameters={"num_ctx": 1000000, "temperature": 1e6})
    assert "PARAMETER num_ctx 1000000\nPARAMETER temperature 1e+06\n" in text
    assert parse_modelfile(text).parameters == {"num_ctx": 1000000, "temperature": 1e6}


# --- round trips -------------------------------------------------------------------------

# Pieces that stress quoting: quotes of every length, edge spaces and tabs, CR/LF,
# comment and instruction look-alikes, non-ASCII, and characters the parser drops.
PIECES = ['"', '""', '"""', " ", "\t", "\n", "\r", "\r\n", "#", "'", "a", "b c", "FROM x", "{{ .Prompt }}",
          "é", "👋", "你", "\u200d", "\x00", "\u00a0"]  # fmt: skip
values = st.lists(st.sampled_from(PIECES), max_size=12).map("".join) | st.text(max_size=20)


def printable(value: str) -> str:
    # What any spelling of a value can carry: Ollama's parser drops what Go's IsPrint
    # rejects (it keeps categories L, M, N, P, S and ASCII space), but tab, CR, LF.
    return "".join(ch for ch in value if ch in " \t\r\n" or unicodedata.category(ch)[0] in "LMNPS")


def ends_a_line_with_triple_quote(value: str) -> bool:
    return re.search(r'"""[ \t]*[\r\n]', printable(value)) is not None


def typed_value(option) -> st.SearchStrategy:
    if option.type is int:
        return st.integers(-(2**63), 2**63 - 1)
    if option.type is bool:
        return st.booleans()
    if option.type is float:
        return st.floats(width=32, allow_nan=False, allow_infinity=False).map(lambda x: parse_go_float32(repr(x)))
    return st.lists(values, min_size=1, max_size=3)


parameters = st.lists(st.sampled_from(sorted(OPTIONS)), unique=True, max_size=6).flatmap(
    lambda names: st.fixed_dictionaries({n: typed_value(OPTIONS[n]) for n in names})
)


def command_strategy() -> st.SearchStrategy:
    plain = st.tuples(st.sampled_from(["model", "adapter", "draft", "template", "system", "license", "renderer",
                                       "parser"]), values)  # fmt: skip
    stop = st.tuples(st.just("stop"), values)
    message = st.tuples(st.sampled_from(["system", "user", "assistant"]), values).map(
        lambda rc: ("message", f"{rc[0]}: {rc[1]}")
    )
    typed = st.sampled_from([n for n in sorted(OPTIONS) if n != "stop"]).flatmap(
        lambda n: typed_value(OPTIONS[n]).map(lambda v: (n, go_format_float(v) if isinstance(v, float) else
                                                         str(v).lower() if isinstance(v, bool) else str(v)))
    )  # fmt: skip
    return st.one_of(plain, stop, message, typed).map(lambda p: Command(*p))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(command_strategy(), max_size=8), values)
def test_round_trip(commands, from_value):
    m = Modelfile([Command("model", from_value), *commands])
    try:
        text = m.to_text()
    except ModelfileError:
        # Only a value with a line ending in """ has no spelling that reads back.
        assert any(ends_a_line_with_triple_quote(c.args) for c in m.commands)
        event("a value cannot be written")
        return
    event("triple quotes written" if '"""' in text else "no triple quotes written")
    back = parse_modelfile(text)
    assert back.commands == [Command(c.name, printable(c.args)) for c in m.commands]
    assert parse_modelfile(back.to_text()) == back


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.none() | values,
    system=values,
    params=parameters,
    licenses=st.lists(values, max_size=2),
    messages=st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                             "content": values}), max_size=3),
)
def test_show_round_trip(template, system, params, licenses, messages):
    try:
        text = format_modelfile("/blobs/sha256-1", name="m:latest", template=template, system=system,
                                parameters=params, license=licenses, messages=messages)  # fmt: skip
    except ModelfileError:
        everything = [template or "", system, *licenses, *(m["content"] for m in messages),
                      *(s for s in params.get("stop", []))]  # fmt: skip
        assert any(ends_a_line_with_triple_quote(v) for v in everything)
        return
    m = parse_modelfile(text)
    assert m.froms == ["/blobs/sha256-1"]
    assert m.template == (None if template is None else printable(template))
    assert m.system == (printable(system) if system else None)
    assert m.parameters == {k: [printable(s) for s in v] if k == "stop" else v for k, v in params.items()}
    assert m.license == [printable(v) for v in licenses]
    assert m.messages == [{"role": x["role"], "content": printable(x["content"])} for x in messages]
