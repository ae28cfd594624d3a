"""Go text/template semantics, case by case.

Expected outputs are Go's: taken from the behaviour documented in text/template's package
documentation and pinned by golang/go src/text/template/exec_test.go and parse_test.go
(read for facts; these cases are our own). Data is what Ollama passes: maps of
interface values (Python dicts) and structs (dataclasses).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pollama.template.gotemplate import (
    Template,
    TemplateError,
    capabilities,
    thinking_tags,
    tool_call_tag,
)


@dataclass
class U:
    V: str = "v"


@dataclass
class Msg:
    Role: str
    Content: str
    ToolCalls: list = field(default_factory=list)


DATA = {
    "True": True,
    "I": 17,
    "F": 1.5,
    "FloatZero": 0.0,
    "S": "hello",
    "Empty": "",
    "SI": [3, 4, 5],
    "SIEmpty": [],
    "SB": [True, False],
    "MSI": {"one": 1, "two": 2, "three": 3},
    "MSIone": {"one": 1},
    "MSIEmpty": {},
    "SMSI": [{"one": 1, "two": 2}, {"eleven": 11, "twelve": 12}],
    "U": U(),
    "Nil": None,
    "SNil": [None],
    "Msgs": [Msg("user", "hi"), Msg("assistant", "yo")],
    "Big": 1234567.0,
    "Small": 0.00001,
    "HTMLish": "<a&b>",
}


CASES = [
    # text and plain actions
    ("empty", "", ""),
    ("text", "some text", "some text"),
    ("dot int", "{{.I}}", "17"),
    ("dot float", "{{.F}}", "1.5"),
    ("float zero", "{{.FloatZero}}", "0"),
    ("float big uses exponent", "{{.Big}}", "1.234567e+06"),
    ("float small uses exponent", "{{.Small}}", "1e-05"),
    ("float literal", "{{1.0}} {{2.50}} {{1e3}} {{100000.0}}", "1 2.5 1000 100000"),
    ("int literals", "{{0x1F}} {{0o17}} {{0b101}} {{1_000}} {{-3}} {{'a'}} {{0777}}", "31 15 5 1000 -3 97 511"),
    ("complex literals", "{{ 2i }} {{ 1+2i }} {{ printf `%v` 1.5-3i }} {{ if 0i }}T{{ else }}F{{ end }}",
     "(0+2i) (1+2i) (1.5-3i) F"),
    ("string", "{{.S}}", "hello"),
    ("bool", "{{.True}} {{true}} {{false}}", "true true false"),
    ("slice", "{{.SI}}", "[3 4 5]"),
    ("map sorted", "{{.MSI}}", "map[one:1 three:3 two:2]"),
    ("struct", "{{.U}}", "{v}"),
    ("missing key renders no value", "{{.Missing}}", "<no value>"),
    ("nil value renders no value", "{{.Nil}}", "<no value>"),
    ("nil in a slice prints <nil>", "{{.SNil}}", "[<nil>]"),
    ("lower-case map key", "{{.S}}{{.lower}}", "hello<no value>"),
    ("field chain", "{{.U.V}}", "v"),
    ("field of map in slice", "{{(index .SMSI 1).eleven}}", "11"),
    ("dollar", "{{$.I}}", "17"),
    ("dollar in range", "{{range .SI}}{{$.I}}{{end}}", "171717"),
    ("string literals", '{{"a\\tb"}}|{{`raw\\n`}}|{{"\\u00e9\\x41"}}', "a\tb|raw\\n|\u00e9A"),
    ("raw string spans lines", "{{`a\nb`}}", "a\nb"),
    ("parenthesized", "{{(.I)}} {{(print 1 2)}}", "17 1 2"),
    ("chain on parenthesized", "{{(.U).V}}", "v"),
    ("newline inside action", "{{ .I\n}}", "17"),
    # comments and trim markers
    ("comment", "a{{/* comment */}}b", "ab"),
    ("comment trimmed", "a  {{- /* comment */ -}}  b", "ab"),
    ("trim left", "a \n\t {{- .I}}", "a17"),
    ("trim right", "{{.I -}} \n\t b", "17b"),
    ("trim both", "x  {{- .I -}}  y", "x17y"),
    ("minus number is not trim", "{{-3}}", "-3"),
    ("trim then number", "a {{- -3}}", "a-3"),
    ("trim in control", "{{- if true -}}\n  yes\n{{- end -}}\n", "yes"),
    # if / else if / else
    ("if true", "{{if true}}T{{end}}", "T"),
    ("if false else", "{{if false}}T{{else}}F{{end}}", "F"),
    ("if 0", "{{if 0}}NZ{{else}}Z{{end}}", "Z"),
    ("if 1.5", "{{if 1.5}}NZ{{else}}Z{{end}}", "NZ"),
    ("if empty string", "{{if ``}}NE{{else}}E{{end}}", "E"),
    ("if empty slice", "{{if .SIEmpty}}NE{{else}}E{{end}}", "E"),
    ("if empty map", "{{if .MSIEmpty}}NE{{else}}E{{end}}", "E"),
    ("if missing", "{{if .Missing}}NE{{else}}E{{end}}", "E"),
    ("if struct always true", "{{if .U}}T{{end}}", "T"),
    ("else if chain", "{{if eq 1 3}}1{{else if eq 2 3}}2{{else if eq 3 3}}3{{end}}", "3"),
    ("if decl scope", "{{if $x := true}}{{with $x := .I}}{{$x}},{{end}}{{$x}}{{end}}", "17,true"),
    # with
    ("with value", "{{with .S}}{{.}}{{end}}", "hello"),
    ("with zero else", "{{with 0}}{{.}}{{else}}ZERO{{end}}", "ZERO"),
    ("with slice", "{{with .SI}}{{.}}{{end}}", "[3 4 5]"),
    ("with map", "{{with .MSIone}}{{.}}{{end}}", "map[one:1]"),
    ("else with", "{{with .Missing}}A{{else with .I}}B{{.}}{{else}}C{{end}}", "B17"),
    ("with var", "{{with $x := .I}}{{$x}}{{end}}", "17"),
    # range
    ("range slice", "{{range .SI}}-{{.}}-{{end}}", "-3--4--5-"),
    ("range empty", "{{range .SIEmpty}}-{{.}}-{{end}}", ""),
    ("range else", "{{range .SIEmpty}}x{{else}}EMPTY{{end}}", "EMPTY"),
    ("range missing else", "{{range .Missing}}x{{else}}EMPTY{{end}}", "EMPTY"),
    ("range map in key order", "{{range .MSI}}-{{.}}-{{end}}", "-1--3--2-"),
    ("range map key value", "{{range $k, $v := .MSI}}{{$k}}={{$v}};{{end}}", "one=1;three=3;two=2;"),
    ("range index value", "{{range $i, $v := .SI}}<{{$i}}={{$v}}>{{end}}", "<0=3><1=4><2=5>"),
    ("range one var", "{{range $v := .SI}}<{{$v}}>{{end}}", "<3><4><5>"),
    ("range int", "{{range 3}}{{.}}{{end}}", "012"),
    ("range break", "{{range .SI}}{{if eq . 4}}{{break}}{{end}}{{.}}{{end}}", "3"),
    ("range continue", "{{range .SI}}{{if eq . 4}}{{continue}}{{end}}{{.}}{{end}}", "35"),
    ("range structs", "{{range .Msgs}}{{.Role}}:{{.Content}} {{end}}", "user:hi assistant:yo "),
    ("range nil element", "{{range .SNil}}[{{.}}]{{end}}", "[<no value>]"),
    ("range var assign", "{{$x := 0}}{{range $i, $v := .SI}}{{$x = $v}}{{end}}{{$x}}", "5"),
    ("declare in range", "{{range $x := .SI}}<{{$foo := $x}}{{$foo}}>{{end}}", "<3><4><5>"),
    ("last index idiom", "{{$last := len .SI}}{{range $i, $_ := .SI}}{{if eq (len (slice $.SI $i)) 1}}L{{end}}{{$i}}{{end}}", "01L2"),
    # variables
    ("var decl not printed", "{{$x := 1}}{{$x}}", "1"),
    ("var assign", "{{$x := 1}}{{$x = 2}}{{$x}}", "2"),
    ("var assign in if persists", "{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}", "2"),
    ("var in if is scoped", "{{$x := 1}}{{if true}}{{$x := 2}}{{$x}}{{end}}{{$x}}", "21"),
    ("var field chain", "{{$u := .U}}{{$u.V}}", "v"),
    ("var of nothing has no fields", "{{$x := .Missing}}{{$x.Foo}}", "<no value>"),
    # pipelines
    ("pipeline final arg", '{{.S | printf "%s!"}}', "hello!"),
    ("pipeline chain", '{{"x" | printf "%s%s" "y" | printf "[%s]"}}', "[yx]"),
    ("pipeline into len", "{{.SI | len}}", "3"),
    ("pipeline and not", "{{if and true 1 `hi` | not}}T{{else}}F{{end}}", "F"),
    # and / or / not
    ("not", "{{not true}} {{not false}} {{not 0}} {{not .SIEmpty}}", "false true true true"),
    ("and", "{{and false 0}} {{and 1 0}} {{and 0 true}} {{and 1 1}}", "false 0 0 1"),
    ("or", "{{or 0 0}} {{or 1 0}} {{or 0 true}} {{or 1 1}}", "0 1 true 1"),
    ("or default", '{{or .SIEmpty "slice is empty"}}', "slice is empty"),
    ("and short-circuits", "{{and false (index .SI 10)}}", "false"),
    ("or short-circuits", "{{or true (index .SI 10)}}", "true"),
    # comparisons
    ("eq strings", '{{eq .S "hello"}} {{eq .S "x"}}', "true false"),
    ("eq multi", '{{eq .S "a" "b" "hello"}}', "true"),
    ("eq ints", "{{eq 1 1}} {{eq .I 17}}", "true true"),
    ("eq missing vs string", '{{eq .Missing "x"}}', "false"),
    ("eq nil nil", "{{eq .Missing .Nil}}", "true"),
    ("ne", '{{ne .S "x"}}', "true"),
    ("lt le gt ge ints", "{{lt 1 2}} {{le 2 2}} {{gt 3 2}} {{ge 1 2}}", "true true true false"),
    ("lt strings", '{{lt "a" "b"}} {{gt "a" "b"}}', "true false"),
    ("lt floats", "{{lt 1.5 2.5}}", "true"),
    # builtins
    ("len string bytes", '{{len "héllo"}}', "6"),
    ("len map", "{{len .MSI}}", "3"),
    ("index slice", "{{index .SI 1}}", "4"),
    ("index map", "{{index .MSI `two`}}", "2"),
    ("index missing map key", "{{index .MSI `xxx`}}", "<no value>"),
    ("index nested", "{{index .SMSI 1 `eleven`}}", "11"),
    ("slice list", "{{slice .SI 1}} {{slice .SI 1 2}} {{slice .SI}}", "[4 5] [4] [3 4 5]"),
    ("slice string", '{{slice "hello" 1 3}}', "el"),
    ("print", '{{print "a" "b"}} {{print 1 2}} {{print "a" 1 2 "b"}} {{print nil}}', "ab 1 2 a1 2b <nil>"),
    ("println", "{{println 1 2 3}}", "1 2 3\n"),
    ("printf verbs", '{{printf "%s %d %v %t %x %X %c" "s" 42 .SI true 255 255 65}}', "s 42 [3 4 5] true ff FF A"),
    ("printf quote", '{{printf "%q" "a\\"b\\n"}}', '"a\\"b\\n"'),
    ("printf floats", '{{printf "%f %.2f %.0f %e %g" 3.14159 3.14159 2.5 1234.5 0.000001}}',
     "3.141590 3.14 2 1.234500e+03 1e-06"),
    ("printf width", '{{printf "%5d|%-5d|%05d|%5s|%-5s|" 42 42 42 "ab" "ab"}}', "   42|42   |00042|   ab|ab   |"),
    ("printf hex string", '{{printf "%x|% x|%X" "hi" "hi" "hi"}}', "6869|68 69|6869"),
    ("printf star width", '{{printf "%*d|%-*d|%.*f" 4 7 3 7 1 2.25}}', "   7|7  |2.2"),
    ("printf bad star width", '{{printf "%*d" "x" 7}}', "%!(BADWIDTH)7"),
    ("printf huge width", '{{printf "%999999999d" 7}}', "%!(NOVERB)%!(EXTRA int=7)"),
    ("printf %%", '{{printf "100%%"}}', "100%"),
    ("printf type", "{{printf `%T %T %T %T` 0xef 1.5 `s` true}}", "int float64 string bool"),
    ("printf missing", '{{printf "%d %d" 1}}', "1 %!d(MISSING)"),
    ("printf extra", '{{printf "%d" 1 2}}', "1%!(EXTRA int=2)"),
    ("printf bad verb", '{{printf "%d" "x"}}', "%!d(string=x)"),
    ("printf nil", '{{printf "%v" .Missing}}', "<nil>"),
    ("printf pipe only format", '{{"aaa" | printf}}', "aaa"),
    ("printf plus struct", '{{printf "%+v" .U}}', "{V:v}"),
    ("html", '{{html "<script>alert(\\"XSS\\");</script>"}}', "&lt;script&gt;alert(&#34;XSS&#34;);&lt;/script&gt;"),
    ("js", "{{js `It'd be nice.`}}", "It\\'d be nice."),
    ("js angle and equals", "{{js `<a=b&c>`}}", "\\u003Ca\\u003Db\\u0026c\\u003E"),
    ("urlquery", '{{"http://www.example.org/"|urlquery}}', "http%3A%2F%2Fwww.example.org%2F"),
    ("urlquery space", '{{urlquery "a b&c"}}', "a+b%26c"),
    # define / template / block
    ("define and template", '{{define "T"}}[{{.}}]{{end}}{{template "T" .I}}', "[17]"),
    ("template no pipeline", '{{define "T"}}[{{.}}]{{end}}{{template "T"}}', "[<no value>]"),  # Go; Ollama refuses it
    ("template does not inherit vars", '{{define "T"}}{{$}}{{end}}{{$x := 1}}{{template "T" "root"}}', "root"),
    ("block default", '{{block "B" .S}}<{{.}}>{{end}}', "<hello>"),
    ("define after use", '{{template "T" 1}}{{define "T"}}x{{.}}{{end}}', "x1"),
    ("nested template", '{{define "A"}}a{{template "B" .}}{{end}}{{define "B"}}b{{.}}{{end}}{{template "A" 3}}', "ab3"),
    # Ollama's functions
    ("json string escapes html", "{{json .HTMLish}}", '"\\u003ca\\u0026b\\u003e"'),
    ("json map sorted compact", '{{json .MSI}}', '{"one":1,"three":3,"two":2}'),
    ("json slice", "{{json .SI}} {{json .SIEmpty}} {{json .Missing}}", "[3,4,5] [] null"),
    ("json float", "{{json 1.0}} {{json 1.5}} {{json 1e21}} {{json 0.0000001}}", "1 1.5 1e+21 1e-7"),
    ("json struct", "{{json .U}}", '{"V":"v"}'),
    ("json control chars", '{{json "a\\u0001\\b\\f\\n\\t"}}', '"a\\u0001\\b\\f\\n\\t"'),
]


@pytest.mark.parametrize("name,text,want", CASES, ids=[c[0] for c in CASES])
def test_go_semantics(name, text, want):
    assert Template.parse(text, name="t", ollama=False).execute(DATA) == want


EXEC_ERRORS = [
    ("field of nil interface", "{{.Nil.Foo}}", "nil pointer evaluating interface {}.Foo"),
    ("field of nil slice element", "{{range .SNil}}{{.Foo}}{{end}}", "nil pointer evaluating"),
    ("struct missing field", "{{.U.Nope}}", "can't evaluate field Nope"),
    ("field of int", "{{$x := 1.0}}{{$x.anything}}", "can't evaluate field anything"),
    ("nil is not a command", "{{if nil}}x{{end}}", "nil is not a command"),
    ("argument to non-function", "{{3 2}}", "can't give argument to non-function"),
    ("pipe into variable", "{{$x := 1}}{{3 | $x}}", "can't give argument to non-function"),
    ("map field with args", '{{.MSI.one "x"}}', "is not a method but has arguments"),
    ("index out of range", "{{index .SI 10}}", "error calling index: index out of range: 10"),
    ("index with string", "{{index .SI `x`}}", "cannot index slice/array with type string"),
    ("index nil", "{{index nil 1}}", "index of untyped nil"),
    ("len of int", "{{len 3}}", "len of type int"),
    ("len of nil", "{{len .Missing}}", "error calling len"),
    ("eq incompatible", '{{eq 1 "1"}}', "incompatible types for comparison"),
    ("eq missing argument", "{{eq 1}}", "missing argument for comparison"),
    ("lt on bool", "{{lt true false}}", "invalid type for comparison"),
    ("lt nil", "{{lt .Missing 1}}", "invalid type for comparison"),
    ("eq on slices", "{{eq .SI .SI}}", "non-comparable"),
    ("printf non-string format", "{{1|printf}}", "wrong type for value; expected string; got int"),
    ("wrong arg count", "{{not 1 2}}", "wrong number of args for not: want 1 got 2"),
    ("wrong arg count via pipe", "{{1 | len 2}}", "wrong number of args for len: want 1 got 2"),
    ("range over string", "{{range .S}}x{{end}}", "range can't iterate over hello"),
    ("undefined template", '{{template "nope" .}}', 'template "nope" not defined'),
    ("assign undeclared", "{{$x = 1}}", "undefined variable: $x"),
    ("slice bad order", "{{slice .SI 2 1}}", "invalid slice index: 2 > 1"),
    ("explicit nil chain", "{{(nil).True}}", "nil"),
    ("recursive template", '{{define "R"}}{{template "R" .}}{{end}}{{template "R" 1}}', "maximum template depth"),
]


@pytest.mark.parametrize("name,text,msg", EXEC_ERRORS, ids=[c[0] for c in EXEC_ERRORS])
def test_execution_errors(name, text, msg):
    tmpl = Template.parse(text, name="t", ollama=False)
    with pytest.raises(TemplateError) as e:
        tmpl.execute(DATA)
    assert msg in str(e.value)
    assert str(e.value).startswith("template: t")


PARSE_ERRORS = [
    ("unclosed action", "{{.X", "unclosed action"),
    ("unclosed action at eof after space", "hello {{ .X ", "unclosed action"),
    ("unexpected end", "{{end}}", "unexpected {{end}}"),
    ("missing end", "{{if true}}x", "unexpected EOF"),
    ("undefined function", "{{nope 1}}", 'function "nope" not defined'),
    ("undefined variable", "{{$x}}", 'undefined variable "$x"'),
    ("variable out of scope", "{{if true}}{{$x := 1}}{{end}}{{$x}}", 'undefined variable "$x"'),
    ("break outside range", "{{break}}", "{{break}} outside {{range}}"),
    ("continue outside range", "{{if true}}{{continue}}{{end}}", "{{continue}} outside {{range}}"),
    ("unterminated string", '{{"abc}}', "unterminated quoted string"),
    ("unterminated raw string", "{{`abc}}", "unterminated raw quoted string"),
    ("unclosed comment", "{{/* abc", "unclosed comment"),
    ("comment not at delimiter", "{{/* abc */ .X}}", "comment ends before closing delimiter"),
    ("empty action", "{{}}", "missing command"),
    ("empty parenthesized pipeline", "{{print ( ) }}", "missing command"),
    ("bad number", "{{3k}}", "bad number syntax"),
    ("lone minus", "{{-/* x */}}", "bad number syntax"),
    ("literal in later stage", "{{.X | 3}}", "non executable command in pipeline stage 2"),
    ("too many declarations", "{{$a, $b := 1}}", "too many declarations"),
    ("unclosed paren", "{{(.X}}", "unclosed left paren"),
    ("unexpected right paren", "{{.X)}}", "unexpected right paren"),
    ("field on literal", '{{"x".Y}}', "unexpected . after term"),
    ("else after else", "{{if true}}a{{else}}b{{else}}c{{end}}", "expected end; found {{else}}"),
    ("bad character", "{{.X#}}", "bad character U+0023 '#'"),
    ("equals without space", "{{$x:=1}}{{$x=2}}", "bad character U+003D '='"),
    ("define not at top level", '{{if true}}{{define "x"}}{{end}}{{end}}', "unexpected <define>"),
]


@pytest.mark.parametrize("name,text,msg", PARSE_ERRORS, ids=[c[0] for c in PARSE_ERRORS])
def test_parse_errors(name, text, msg):
    with pytest.raises(TemplateError) as e:
        Template.parse(text, name="t", ollama=False)
    assert msg in str(e.value)


def test_parse_error_names_template_line_and_column():
    with pytest.raises(TemplateError) as e:
        Template.parse("line one\nline two {{ nope }}", name="chat")
    err = e.value
    assert (err.name, err.line, err.col) == ("chat", 2, 12)
    assert str(err) == 'template: chat:2:12: function "nope" not defined'


def test_execution_error_names_template_line_and_column_as_go():
    # Go: template: x:1:5: executing "x" at <.U.Nope>: can't evaluate field Nope in type U
    with pytest.raises(TemplateError) as e:
        Template.parse("\n\nab {{.U.Nope}}", name="x", ollama=False).execute(DATA)
    assert (e.value.line, e.value.col) == (3, 5)
    assert str(e.value).startswith('template: x:3:5: executing "x" at <.U.Nope>: ')


def test_column_counts_bytes_as_go():
    with pytest.raises(TemplateError) as e:
        Template.parse("é {{ nope }}", name="t")
    assert e.value.col == 6  # "é" is two bytes in UTF-8


# ---------------------------------------------------------------- Ollama's rules


def test_vars_lower_cased_identifiers():
    text = ("{{ if .System }}{{ .System }}{{ end }}{{ range $i, $m := .Messages }}{{ $m.Content }}"
            "{{ range .ToolCalls }}{{ .Function.Name }}{{ end }}{{ end }}{{ if .Tools }}{{ json .Tools }}{{ end }}")
    # declared variables are not listed: Ollama walks a pipeline's commands, not its declarations
    assert Template.parse(text).vars() == {
        "system", "$m", "messages", "content", "toolcalls", "function", "name", "tools",
    }


def test_vars_includes_defined_templates():
    assert "prompt" in Template.parse('{{ define "x" }}{{ .Prompt }}{{ end }}{{ .Messages }}').vars()


def test_implicit_response_appended_only_without_messages_or_response():
    legacy = Template.parse("{{ .Prompt }}")
    assert legacy.contains_response()
    assert legacy.execute({"Prompt": "hi", "Response": "there"}) == "hithere"
    with_response = Template.parse("{{ .Prompt }}[{{ .Response }}]")
    assert with_response.execute({"Prompt": "hi", "Response": "x"}) == "hi[x]"
    with_messages = Template.parse("{{ range .Messages }}{{ .Content }}{{ end }}")
    assert not with_messages.contains_response()
    assert with_messages.execute({"Messages": [{"Content": "a"}], "Response": "r"}) == "a"


def test_cut_after_response_keeps_everything_before_it():
    tmpl = Template.parse("{{ if .System }}S:{{ .System }} {{ end }}U:{{ .Prompt }} A:{{ .Response }}<end>{{ .Prompt }}")
    open_turn = tmpl.without_after_response()
    assert open_turn.execute({"System": "s", "Prompt": "p", "Response": ""}) == "S:s U:p A:"
    # the original is untouched
    assert tmpl.execute({"System": "", "Prompt": "p", "Response": "r"}) == "U:p A:r<end>p"


def test_cut_after_response_inside_a_branch():
    tmpl = Template.parse("{{ if .Prompt }}<u>{{ .Prompt }}</u>{{ end }}<a>{{ if true }}{{ .Response }}</a>{{ end }}tail")
    assert tmpl.without_after_response().execute({"Prompt": "p", "Response": ""}) == "<u>p</u><a>"


def test_crlf_kept_as_go_keeps_it():
    # Go's lexer keeps text as written (Ollama normalizes line endings of its named templates only);
    # a trim marker eats \r like any space, and a raw string drops its carriage returns.
    tmpl = Template.parse("a\r\n{{ .Prompt }}\r\n {{- `x\r\ny` }}")
    assert tmpl.execute({"Prompt": "b", "Response": ""}) == "a\r\nbx\ny"


def test_capabilities_from_template():
    assert capabilities(Template.parse(QWEN_LIKE)) == set()
    assert capabilities(Template.parse(THINKING)) == {"thinking"}
    assert capabilities(Template.parse("{{ if .Tools }}{{ .Tools }}{{ end }}{{ .Prompt }}{{ .Suffix }}")) == {"tools", "insert"}


# ---------------------------------------------------------------- tree inference


QWEN_LIKE = """{{- if .Messages }}
{{- range $i, $_ := .Messages }}
{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- end }}
{{- end }}"""


def test_tool_call_tag_qwen_style():
    assert tool_call_tag(Template.parse(QWEN_LIKE)) == "<tool_call>"


def test_tool_call_tag_cut_at_brace():
    tmpl = Template.parse("{{ range .Messages }}{{ if .ToolCalls }}[TOOL_CALLS] [{{ range .ToolCalls }}{{ json .Function }}{{ end }}]{{ end }}{{ end }}")
    assert tool_call_tag(tmpl) == "[TOOL_CALLS] ["


def test_tool_call_tag_none_when_text_is_only_json():
    tmpl = Template.parse('{{ range .Messages }}{{ if .ToolCalls }}{"name": x}{{ end }}{{ end }}')
    assert tool_call_tag(tmpl) is None
    assert tool_call_tag(Template.parse("{{ .Prompt }}")) is None


def test_tool_call_tag_stops_at_action():
    # text after an action inside the if is not the tag (Ollama's findTextNode stops)
    tmpl = Template.parse("{{ range .Messages }}{{ if .ToolCalls }}{{ .Content }}<tc>{{ end }}{{ end }}")
    assert tool_call_tag(tmpl) is None


THINKING = """{{- range $i, $_ := .Messages }}
{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>
{{ end }}
{{- end }}"""


def test_thinking_tags_inferred():
    assert thinking_tags(Template.parse(THINKING)) == ("<think>", "</think>")


def test_thinking_tags_need_range_over_messages():
    assert thinking_tags(Template.parse("{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}")) is None
    assert thinking_tags(Template.parse("{{ range .Messages }}{{ .Content }}{{ end }}")) is None


# Ollama's tool-tag rule (tools/template.go parseTag): None here is its "{" fallback.
TOOL_TAGS = [
    ("no if", "{{ .Prompt }}", None),
    ("empty if", "{{if .ToolCalls}}{{end}}", None),
    ("only an action", "{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}{{end}}", None),
    ("fenced json", "{{if .ToolCalls}}```json\n{{end}}", "```json"),
    ("bracket", "{{if .ToolCalls}}[{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("bracket after whitespace", "{{if .ToolCalls}}\n [ {{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("text after the range is not the tag", "{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", None),
    ("bare json objects", '{{if .ToolCalls}}{{range .ToolCalls}}\r\n{"name": "{{ .Function.Name }}"}{{end}}{{end}}', None),
    ("tag inside the range", '{{if .ToolCalls}}\n{{range .ToolCalls}}<tool_call>{"name": 1}</tool_call>{{end}}{{end}}',
     "<tool_call>"),
    ("tag before the range", "{{if .ToolCalls}}<calls>{{range .ToolCalls}}<call>{{end}}</calls>{{end}}", "<calls>"),
    ("nested if text comes first", "{{if .ToolCalls}}First{{if .X}}inner{{end}}Second{{end}}", "First"),
    ("if inside range", "{{range .Messages}}{{if .ToolCalls}}Action: ```json{{end}}{{end}}", "Action: ```json"),
    ("open bracket kept", "{{if .ToolCalls}}[TOOL_CALLS] [{{end}}", "[TOOL_CALLS] ["),
    ("else branch searched", "{{if .Content}}{{.Content}}{{else if .ToolCalls}}<tc>{{end}}", "<tc>"),
]


@pytest.mark.parametrize("name,text,tag", TOOL_TAGS, ids=[c[0] for c in TOOL_TAGS])
def test_tool_call_tag_table(name, text, tag):
    assert tool_call_tag(Template.parse(text)) == tag


THINKING_TAGS = [
    ("nested range over something else",
     "{{ range .Messages }}{{ range .Other }}<think>{{ .Thinking }}</think>{{ end }}{{ end }}", None),
    ("text around is trimmed",
     "{{ range .Messages }}{{ if .Thinking }}\n  Before   {{ .Thinking }}   After\n{{ end }}{{ end }}", ("Before", "After")),
    ("last occurrence wins",
     ("{{ range $i, $m := .Messages }}{{ if .Thinking }}<a>{{ .Thinking }}</a>{{ end }}"
      "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ end }}"), ("<think>", "</think>")),
    ("non-text ends keep the earlier tags",
     "{{ range .Messages }}{{ if .Thinking }}<t>{{ .Thinking }}</t>{{ end }}{{ with .Thinking }}{{ . }}{{ end }}{{ end }}",
     ("<t>", "</t>")),
]


@pytest.mark.parametrize("name,text,tags", THINKING_TAGS, ids=[c[0] for c in THINKING_TAGS])
def test_thinking_tags_table(name, text, tags):
    assert thinking_tags(Template.parse(text)) == tags


# ---------------------------------------------------------------- a Go template reaches no Python


@dataclass
class Secretive:
    Public: str = "ok"
    _private: str = "hidden"

    def Method(self):
        raise AssertionError("called")


@pytest.mark.parametrize("text", [
    "{{ .S._private }}", "{{ .S.Method }}", "{{ .S.__class__ }}", "{{ .S.__dict__ }}", "{{ .S.go_json }}",
])
def test_only_struct_fields_are_visible(text):
    with pytest.raises(TemplateError, match="can't evaluate field"):
        Template.parse(text, ollama=False).execute({"S": Secretive()})


def test_dunder_keys_are_just_missing_map_keys():
    assert Template.parse("{{ .__class__ }}|{{ .S.Public }}", ollama=False).execute({"S": Secretive()}) == "<no value>|ok"


def test_index_map_with_wrong_key_type():
    with pytest.raises(TemplateError, match="value has type int; should be string"):
        Template.parse("{{ index .M 1 }}", ollama=False).execute({"M": {}})


def test_endless_range_is_stopped(monkeypatch):
    from pollama.template import goexec

    monkeypatch.setattr(goexec, "MAX_EXECUTION_SECONDS", 0.2)
    with pytest.raises(TemplateError, match="execution took longer than 0.2s"):
        Template.parse("{{ range 1000000000 }}{{ end }}", ollama=False).execute({})


def test_current_and_yesterday_date():
    import datetime

    today = datetime.date.today()
    out = Template.parse('{{ currentDate }}|{{ yesterdayDate }}|{{ currentDate "ignored format" }}', ollama=False).execute({})
    # Rendering may straddle midnight: accept the day before as well.
    days = [today, today - datetime.timedelta(days=1)]
    assert out in {f"{d:%Y-%m-%d}|{d - datetime.timedelta(days=1):%Y-%m-%d}|{d:%Y-%m-%d}" for d in days}
    with pytest.raises(TemplateError, match="expected string"):
        Template.parse("{{ currentDate 1 }}", ollama=False).execute({})


def test_to_typescript_type_of_other_values_is_any():
    assert Template.parse("{{ toTypeScriptType .S }}", ollama=False).execute(DATA) == "any"


def test_ollama_refuses_template_calls_without_pipeline():
    # Ollama's Vars fails on a {{ template }} node without a pipeline, so its Parse does too.
    with pytest.raises(TemplateError, match="undefined template specified"):
        Template.parse('{{ define "x" }}{{ .Prompt }}{{ end }}{{ template "x" }}')
    with pytest.raises(TemplateError, match="undefined template specified"):
        Template.parse('{{ define "x" }}{{ template "y" }}{{ end }}{{ template "x" . }}')
    assert Template.parse('{{ define "x" }}{{ .Prompt }}{{ end }}{{ template "x" . }}').execute(
        {"Prompt": "p", "Response": ""}) == "p"
