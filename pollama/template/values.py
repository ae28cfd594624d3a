"""The data Ollama hands its Go templates: messages and tools as template structs.

Field names are Ollama's (.Role, .Content, .ToolCalls, .Function.Name, .Function.Arguments,
.Tools, .Function.Parameters.Properties, ...), and so is how they print: arguments, tools
and properties print as JSON (Ollama gives those types a String method), and `json` marshals
tools with their JSON tags. Input is Ollama's JSON form (plain dicts, as /api/chat receives).

As Ollama (v0.33) does, a tool's .Function has no String method, so {{ .Function }} prints
as a Go struct ({name description {object <nil> <nil> [required] {...}}}), not as JSON;
templates written for older Ollama versions (llama3-groq-tool-use) expected JSON there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .gofmt import OrderedMap, go_json

# ---------------------------------------------------------------- tool calls


class GoJSONMap(dict):
    """A Go map whose String() is its JSON: "{}" when nil, and nil (null) when marshalled nil."""

    def __init__(self, *args, is_nil: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_nil = is_nil

    def go_string(self) -> str:
        return "{}" if self.is_nil else go_json(dict(self))

    def go_json(self):
        return None if self.is_nil else dict(self)


class TemplateArgs(GoJSONMap):
    """A tool call's arguments: a Go map that prints as its JSON ("{}" when absent)."""


@dataclass
class TemplateToolCallFunction:
    """A tool call's function as templates see it (no JSON tags: marshals with Go field names)."""

    Index: int = 0
    Name: str = ""
    Arguments: TemplateArgs = field(default_factory=lambda: TemplateArgs(is_nil=True))


@dataclass
class TemplateToolCall:
    """A tool call as templates see it."""

    ID: str = ""
    Function: TemplateToolCallFunction = field(default_factory=TemplateToolCallFunction)


@dataclass
class TemplateMessage:
    """A chat message as templates see it (Ollama's templateMessage)."""

    Role: str = ""
    Content: str = ""
    Thinking: str = ""
    Images: list = field(default_factory=list)
    ToolCalls: list = field(default_factory=list)
    ToolName: str = ""
    ToolCallID: str = ""


# ---------------------------------------------------------------- tools


class PropertyType(list):
    """A JSON-schema type: one name, or several (marshals as a string when single)."""

    def go_string(self) -> str:
        if not self:
            return ""
        if len(self) == 1:
            return self[0]
        return "[" + " ".join(self) + "]"

    def go_json(self):
        return self[0] if len(self) == 1 else list(self)


_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
             "array": "any[]", "object": "Record<string, any>", "null": "null"}


@dataclass
class ToolProperty:
    """One property of a tool's parameters (api.ToolProperty)."""

    AnyOf: list = field(default_factory=list)
    Type: PropertyType = field(default_factory=PropertyType)
    Items: Any = None
    Description: str = ""
    Enum: list = field(default_factory=list)
    Properties: OrderedMap | None = None
    Required: list = field(default_factory=list)

    def go_json(self):
        out = OrderedMap()
        if self.AnyOf:
            out["anyOf"] = self.AnyOf
        if self.Type:
            out["type"] = self.Type
        if self.Items is not None:
            out["items"] = self.Items
        if self.Description:
            out["description"] = self.Description
        if self.Enum:
            out["enum"] = self.Enum
        if self.Properties is not None:
            out["properties"] = self.Properties
        if self.Required:
            out["required"] = self.Required
        return out

    def to_typescript_type(self) -> str:
        """The TypeScript type Ollama's toTypeScriptType writes for this property."""
        if self.AnyOf:
            return " | ".join(p.to_typescript_type() for p in self.AnyOf)
        if not self.Type:
            return "any"
        return " | ".join(_TS_TYPES.get(t, "any") for t in self.Type)


class TemplateProperties(GoJSONMap):
    """A tool's parameter properties: a Go map (sorted) that prints as its JSON."""


@dataclass
class TemplateToolFunctionParameters:
    """A tool's parameters schema as templates see it."""

    Type: str = ""
    Defs: Any = None
    Items: Any = None
    Required: list = field(default_factory=list)
    Properties: TemplateProperties = field(default_factory=lambda: TemplateProperties(is_nil=True))

    def go_json(self):
        out = OrderedMap(type=self.Type)
        if self.Defs is not None:
            out["$defs"] = self.Defs
        if self.Items is not None:
            out["items"] = self.Items
        if self.Required:
            out["required"] = self.Required
        out["properties"] = self.Properties
        return out


@dataclass
class TemplateToolFunction:
    """A tool's function as templates see it."""

    Name: str = ""
    Description: str = ""
    Parameters: TemplateToolFunctionParameters = field(default_factory=TemplateToolFunctionParameters)

    def go_json(self):
        return OrderedMap(name=self.Name, description=self.Description, parameters=self.Parameters)


@dataclass
class TemplateTool:
    """A tool as templates see it; prints as its JSON."""

    Type: str = ""
    Items: Any = None
    Function: TemplateToolFunction = field(default_factory=TemplateToolFunction)

    def go_json(self):
        out = OrderedMap(type=self.Type)
        if self.Items is not None:
            out["items"] = self.Items
        out["function"] = self.Function
        return out

    def go_string(self) -> str:
        return go_json(self)


class TemplateTools(list):
    """The request's tools: a Go slice that prints as its JSON ("null" when absent)."""

    def __init__(self, *args, is_nil: bool = False):
        super().__init__(*args)
        self.is_nil = is_nil

    def go_string(self) -> str:
        return go_json(self)

    def go_json(self):
        return None if self.is_nil else list(self)


# ---------------------------------------------------------------- conversion from Ollama's JSON


def _property(d: Any) -> ToolProperty:
    if not isinstance(d, dict):
        raise TypeError(f"a tool property must be an object, got {type(d).__name__}")
    typ = d.get("type")
    if typ is None:
        types = PropertyType()
    elif isinstance(typ, str):
        types = PropertyType([typ])
    elif isinstance(typ, list) and all(isinstance(t, str) for t in typ):
        types = PropertyType(typ)
    else:
        raise ValueError(f"a tool property's type must be a string or a list of strings, got {typ!r}")
    props = d.get("properties")
    return ToolProperty(
        AnyOf=[_property(p) for p in d.get("anyOf") or []],
        Type=types,
        Items=d.get("items"),
        Description=str(d.get("description") or ""),
        Enum=list(d.get("enum") or []),
        Properties=None if props is None else OrderedMap((k, _property(v)) for k, v in props.items()),
        Required=list(d.get("required") or []),
    )


def template_tools(tools: list[dict] | None) -> TemplateTools:
    """Ollama's JSON tools as template values (nil when there are none)."""
    if tools is None:
        return TemplateTools(is_nil=True)
    out = TemplateTools()
    for t in tools:
        if not isinstance(t, dict):
            raise TypeError(f"a tool must be an object, got {type(t).__name__}")
        fn = t.get("function") or {}
        params = fn.get("parameters") or {}
        props = params.get("properties")
        out.append(TemplateTool(
            Type=str(t.get("type") or ""),
            Items=t.get("items"),
            Function=TemplateToolFunction(
                Name=str(fn.get("name") or ""),
                Description=str(fn.get("description") or ""),
                Parameters=TemplateToolFunctionParameters(
                    Type=str(params.get("type") or ""),
                    Defs=params.get("$defs"),
                    Items=params.get("items"),
                    Required=list(params.get("required") or []),
                    Properties=TemplateProperties(
                        {k: _property(v) for k, v in props.items()}) if props is not None
                    else TemplateProperties(is_nil=True),
                ),
            ),
        ))
    return out


def _tool_call(tc: dict) -> TemplateToolCall:
    fn = tc.get("function") or {}
    args = fn.get("arguments")
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        import json

        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"tool call arguments are not valid JSON: {e}") from None
    if args is not None and not isinstance(args, dict):
        raise ValueError("tool call arguments must be an object")
    return TemplateToolCall(
        ID=str(tc.get("id") or ""),
        Function=TemplateToolCallFunction(
            Index=int(fn.get("index") or 0),
            Name=str(fn.get("name") or ""),
            Arguments=TemplateArgs(args) if args is not None else TemplateArgs(is_nil=True),
        ),
    )


def template_message(m: dict) -> TemplateMessage:
    """One Ollama JSON message as a template message (role lower-cased, as Ollama's decoder does)."""
    if not isinstance(m, dict):
        raise TypeError(f"a message must be an object, got {type(m).__name__}")
    # Images stay as given (base64 text from the API): templates only test for their presence.
    images = list(m.get("images") or [])
    return TemplateMessage(
        Role=str(m.get("role") or "").lower(),
        Content=str(m.get("content") or ""),
        Thinking=str(m.get("thinking") or ""),
        Images=images,
        ToolCalls=[_tool_call(tc) for tc in m.get("tool_calls") or []],
        ToolName=str(m.get("tool_name") or ""),
        ToolCallID=str(m.get("tool_call_id") or ""),
    )
