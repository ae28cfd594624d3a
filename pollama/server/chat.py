"""What a chat or generate request asks beyond plain text: thinking, tools, structured output.

The checks and error messages are Ollama's (server/routes.go, api/types.go, openai/openai.go);
the output parser is pollama.template.output's ChatOutputParser, made once per request for
the rendered prompt. The native routes (native_generate.py), the OpenAI ones (openai.py, responses.py) and
Anthropic's (anthropic.py) share this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pollama.server.errors import APIError
from pollama.server.models import ModelRef

THINK_LEVELS = ("high", "medium", "low", "max")


def parse_think(value: Any) -> bool | str | None:
    """A request's `think` as Ollama's ThinkValue decodes it (400 with its message otherwise)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise APIError(400, f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, or false)')
        return value
    raise APIError(400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


def resolve_think(model: ModelRef, name: str, think: bool | str | None) -> bool | str | None:
    """Ollama's rule: a thinking model thinks unless told not to; asking a model without the
    capability to think is a 400."""
    if "thinking" in model.capabilities:
        if model.harmony and think == "max":
            return "high"  # as Ollama: harmony's "Reasoning:" knows low, medium and high
        return True if think is None else think
    from pollama.template.output import think_enabled

    if think_enabled(think):
        raise APIError(400, f'"{name}" does not support thinking')
    return think


async def chat_model(resolve: Callable[[str], Awaitable[ModelRef]], name: str, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]], think: bool | str | None, *,
                     relax_think: bool = False) -> tuple[ModelRef, bool | str | None]:
    """(the model a chat names, the think to render with), checked as /api/chat checks them:
    it must chat, and take the tools, images and thinking asked of it. relax_think: thinking
    asked of a model that cannot think is dropped rather than refused (Ollama does this for
    Anthropic's API, whose clients ask every model to think)."""
    model = await resolve(name)
    if relax_think and "thinking" not in model.capabilities:
        think = None
    think = resolve_think(model, name, think)
    if "completion" not in model.capabilities:
        raise APIError(400, f'"{name}" does not support chat')
    require_tools(model, tools)
    require_vision(model, name, messages)
    return model, think


def full_name(model: ModelRef) -> str:
    """The name as Ollama's errors spell it (registry.ollama.ai/library/model:tag)."""
    from pollama.store.names import ModelName

    try:
        return str(ModelName.parse(model.name))
    except ValueError:
        return model.name


def check_tools(value: Any) -> list[dict[str, Any]]:
    """The request's `tools`: a list of {"type": "function", "function": {"name", ...}}."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise APIError(400, 'invalid value for "tools": expected an array of tools')
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise APIError(400, f'invalid value for "tools": tools[{i}] needs a function with a name')
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise APIError(400, f'invalid value for "tools": tools[{i}].function.parameters must be an object')
    return value


def tool_function(name: Any, description: Any, parameters: Any) -> dict[str, Any]:
    """A native tool's function from the flat tools of other APIs, its keys in the order Ollama's
    ToolFunction has them: templates write the tool as JSON, so the order is in the prompt."""
    function = {"name": name}
    if description is not None:
        function["description"] = description
    function["parameters"] = parameters
    return function


def require_tools(model: ModelRef, tools: list[dict[str, Any]]) -> None:
    if tools and "tools" not in model.capabilities:
        raise APIError(400, f"{full_name(model)} does not support tools")


def require_vision(model: ModelRef, name: str, messages: list[dict[str, Any]]) -> None:
    """Images sent to a model without a vision tower: Ollama's 400."""
    if any(m.get("images") for m in messages) and "vision" not in model.capabilities:
        raise APIError(400, f'"{name}" does not support vision')


def check_images(where: str, value: Any) -> list[str]:
    """A request's `images`: base64 strings (the runner decodes and checks the images)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise APIError(400, f'invalid value for "{where}": expected an array of base64 strings')
    return value


def check_tool_calls(i: int, value: Any) -> list[dict[str, Any]]:
    """A message's tool_calls in Ollama's form: [{"id"?, "function": {"index"?, "name", "arguments": {...}}}]."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise APIError(400, f"messages[{i}].tool_calls must be an array")
    calls = []
    for call in value:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise APIError(400, f"messages[{i}].tool_calls: each call needs a function with a name")
        arguments = function.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise APIError(400, f"messages[{i}].tool_calls: arguments must be an object")
        calls.append({**call, "function": {**function, "arguments": arguments}})
    return calls


def output_parser(model: ModelRef, tools: list[dict[str, Any]], think: bool | str | None, *,
                  force_tool_json: bool = False):
    """A factory: rendered prompt -> ChatOutputParser for this model and request.

    force_tool_json: the output is constrained to one bare JSON call ({"name", "arguments"}),
    so that is the tag to look for, whatever the template writes. A harmony model's output is
    split by its channels (model.harmony), as Ollama picks its harmony parser.
    """
    from pollama.server.prompt import hf_chat_template
    from pollama.template.output import ChatOutputParser

    chat_template = hf_chat_template(model)

    def make(prompt: str) -> ChatOutputParser:
        return ChatOutputParser(model.template, tools, think, prompt=prompt, chat_template=chat_template,
                                tool_tag="{" if force_tool_json and tools else None, harmony=model.harmony)

    return make


def tool_call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of exactly one call of one of `tools`: {"name": <tool>, "arguments": {...}}.

    Used as the format when a tool call is required (OpenAI's tool_choice "required" or a
    named function), so the model cannot answer with anything else.
    """
    variants = []
    for tool in tools:
        function = tool["function"]
        parameters = function.get("parameters") or {"type": "object"}
        variants.append({
            "type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def message_fields(delta: dict[str, Any]) -> dict[str, Any]:
    """Ollama's message fields from a parsed delta: content always, thinking and tool_calls when present."""
    out: dict[str, Any] = {"role": "assistant", "content": delta.get("content", "")}
    if delta.get("thinking"):
        out["thinking"] = delta["thinking"]
    if delta.get("tool_calls"):
        out["tool_calls"] = delta["tool_calls"]
    return out


async def reply_blocks(messages: AsyncIterator[dict[str, Any]]) -> AsyncIterator[tuple[str, str, Any]]:
    """The pipeline's lines (run_completion's) as the typed blocks of one reply, for the APIs
    that answer in blocks (OpenAI's Responses, Anthropic's Messages).

    Yields (event, kind, value): ("start", kind, None), ("delta", kind, text) and
    ("stop", kind, whole text) around each run of "thinking" or "text"; ("call", "tool_call",
    call) for each tool call (native form); last ("done", "", the final line). A run ends
    where another kind begins, so blocks come in the order the model wrote them.
    """
    open_kind: str | None = None
    texts: list[str] = []
    async for message in messages:
        for kind, key in (("thinking", "thinking"), ("text", "content")):
            piece = message.get(key)
            if not piece:
                continue
            if open_kind != kind:
                if open_kind is not None:
                    yield "stop", open_kind, "".join(texts)
                open_kind, texts = kind, []
                yield "start", kind, None
            texts.append(piece)
            yield "delta", kind, piece
        calls = message.get("tool_calls") or []
        if (calls or message.get("done")) and open_kind is not None:
            yield "stop", open_kind, "".join(texts)
            open_kind = None
        for call in calls:
            yield "call", "tool_call", call
        if message.get("done"):
            yield "done", "", message


async def collect_blocks(messages: AsyncIterator[dict[str, Any]]) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """A whole reply: its blocks [(kind, text or call)] in order, and the final line."""
    blocks: list[tuple[str, Any]] = []
    done: dict[str, Any] = {}
    try:
        async for event, kind, value in reply_blocks(messages):
            if event in ("stop", "call"):
                blocks.append((kind, value))
            elif event == "done":
                done = value
    finally:
        await messages.aclose()
    return blocks, done


def check_messages(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise APIError(400, 'invalid value for "messages": expected an array')
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise APIError(400, f"messages[{i}] needs a role")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise APIError(400, f'messages[{i}].content must be a string')
        checked = {**m, "role": role.lower(), "content": content}
        images = check_images(f"messages[{i}].images", m.get("images"))
        if images:
            checked["images"] = images
        else:
            checked.pop("images", None)
        if m.get("tool_calls") is not None:
            checked["tool_calls"] = check_tool_calls(i, m["tool_calls"])
        messages.append(checked)
    return messages
