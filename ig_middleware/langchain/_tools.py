"""Messages and tools for a local chat model: render LangChain messages (incl. tool calls and tool
results) into plain chat turns, describe tools in the system prompt, parse generated tool calls."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from ..errors import InvalidInputError
from ..models import ROLES

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"

TOOLS_HEADER = (
    "You can call tools. To call a tool, reply with exactly one line:\n"
    f'{TOOL_OPEN}{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}{TOOL_CLOSE}\n'
    "Tool results come back in a user turn that starts with 'Tool result'. "
    "Answer normally when no tool is needed.\nAvailable tools:\n"
)
FORCED_HEADER = "You must answer by calling one of the tools below.\n"


MEDIA_BLOCKS = ("image", "image_url", "audio", "input_audio", "video", "file")


def content_text(content: str | list[Any], drop_media: bool = True, field: str = "content") -> str:
    """Plain text of a message content: text blocks joined; refusal and tool-use blocks skipped. Image, audio,
    video and file blocks are skipped when ``drop_media``, else an :class:`InvalidInputError` on ``field``
    (the model is text-only: answering as if they were absent would be silently wrong)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for j, block in enumerate(content):
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping):
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif kind in MEDIA_BLOCKS and not drop_media:
                raise InvalidInputError(
                    f"{field}[{j}]",
                    f"a {kind!r} block, but the model is text-only; pass drop_non_text_content=True to drop such blocks",
                )
    return "".join(parts)


def format_tool_call(name: str, args: Any) -> str:
    return f"{TOOL_OPEN}{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}{TOOL_CLOSE}"


def describe_tools(tools: Sequence[Mapping[str, Any]], forced: bool = False) -> str:
    """System-prompt description of OpenAI-format tools."""
    lines = [FORCED_HEADER + TOOLS_HEADER if forced else TOOLS_HEADER]
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters", {}) or {}
        props = params.get("properties", {}) or {}
        args = ", ".join(f'"{k}": {v.get("type", "any")}' for k, v in props.items())
        desc = (fn.get("description") or "").strip().replace("\n", " ")
        lines.append(f"- {fn['name']}({args}): {desc}" if desc else f"- {fn['name']}({args})")
    return "\n".join(lines)


def to_chat_messages(
    messages: Sequence[BaseMessage], tools_text: str | None = None, drop_media: bool = False
) -> list[dict[str, str]]:
    """LangChain messages -> ``{"role", "content"}`` turns the chat template renders.

    AI turns with tool calls are re-serialised as ``<tool_call>...</tool_call>`` lines; tool results
    become user turns ``Tool result (name): ...`` (the default template has no tool role the model knows).
    Media blocks raise unless ``drop_media`` (:func:`content_text`); a ``ChatMessage`` role must be one of
    :data:`ig_middleware.models.ROLES`.
    """
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        text = content_text(msg.content, drop_media, f"messages[{i}].content")
        if isinstance(msg, SystemMessage):
            out.append({"role": "system", "content": text})
        elif isinstance(msg, HumanMessage):
            if msg.name:
                text = f"{msg.name}: {text}"
            out.append({"role": "user", "content": text})
        elif isinstance(msg, AIMessage):
            calls = [format_tool_call(tc["name"], tc.get("args", {})) for tc in msg.tool_calls]
            calls += [
                f'{TOOL_OPEN}{{"name": {json.dumps(tc.get("name") or "")}, "arguments": {tc.get("args") or ""}}}'
                f"{TOOL_CLOSE}"
                for tc in msg.invalid_tool_calls
            ]
            content = "\n".join([t for t in [text.strip(), *calls] if t])
            out.append({"role": "assistant", "content": content})
        elif isinstance(msg, ToolMessage):
            name = msg.name or _tool_name_for(messages, msg.tool_call_id) or "tool"
            status = " (error)" if getattr(msg, "status", "success") == "error" else ""
            out.append({"role": "user", "content": f"Tool result ({name}){status}: {text}"})
        elif isinstance(msg, FunctionMessage):
            out.append({"role": "user", "content": f"Tool result ({msg.name}): {text}"})
        elif isinstance(msg, ChatMessage):
            if msg.role not in ROLES:
                raise InvalidInputError(
                    f"messages[{i}].role", f"unknown role {msg.role!r}; allowed: {', '.join(ROLES)}"
                )
            out.append({"role": msg.role, "content": text})
        else:
            out.append({"role": "user", "content": text})
    if tools_text:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": (out[0]["content"].rstrip() + "\n\n" + tools_text).strip()}
        else:
            out.insert(0, {"role": "system", "content": tools_text})
    # The chat template needs string contents; an empty conversation is the caller's error (engine checks).
    return out


def _tool_name_for(messages: Sequence[BaseMessage], tool_call_id: str) -> str | None:
    for msg in messages:
        if isinstance(msg, AIMessage):
            for tc in msg.tool_calls:
                if tc.get("id") == tool_call_id:
                    return tc["name"]
    return None


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^0-9a-z]+", text.lower()) if len(w) > 2}


def pick_tool(tools: Sequence[Mapping[str, Any]], hint: str) -> str:
    """The bound tool whose name and description share most words with ``hint`` (the user's last
    message); ties go to the first tool. Used when a call of *some* tool is required, so that a tiny
    model only has to write the arguments."""
    words = _words(hint)
    best, best_score = tools[0]["function"]["name"], -1
    for tool in tools:
        fn = tool["function"]
        score = 3 * len(_words(fn["name"].replace("_", " ")) & words) + len(_words(fn.get("description") or "") & words)
        if score > best_score:
            best, best_score = fn["name"], score
    return best


def tool_choice_name(tool_choice: Any, tools: Sequence[Mapping[str, Any]], hint: str = "") -> tuple[bool, str | None]:
    """(render tools?, forced tool name, or None when the model decides)."""
    names = [t["function"]["name"] for t in tools]
    if tool_choice in (None, "auto", False):
        return True, None
    if tool_choice == "none":
        return False, None
    if tool_choice in ("any", "required", True):
        return True, pick_tool(tools, hint)
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        return True, str(name) if name else pick_tool(tools, hint)
    if isinstance(tool_choice, str):
        if tool_choice not in names:
            raise ValueError(f"tool_choice {tool_choice!r} is not one of the bound tools {names}")
        return True, tool_choice
    raise ValueError(f"unsupported tool_choice {tool_choice!r}")


def forced_prefix(name: str | None, tools: Sequence[Mapping[str, Any]] = ()) -> str:
    """Text prefilled into the answer so that even a tiny model produces a parseable call: the call's
    opening up to the first argument's name (or the whole call when the tool takes no arguments)."""
    if name is None:
        return ""
    if name == "":
        return TOOL_OPEN + '{"name": "'
    head = TOOL_OPEN + json.dumps({"name": name})[:-1] + ', "arguments": '
    fn = next((t.get("function", t) for t in tools if t.get("function", t).get("name") == name), None)
    if fn is None:
        return head + "{"
    params = fn.get("parameters") or {}
    props = list((params.get("properties") or {}).keys())
    if not props:
        return head + "{}}"
    required = [p for p in params.get("required") or [] if p in props]
    first = (required or props)[0]
    opening = '"' if (params["properties"][first] or {}).get("type") == "string" else ""
    return head + "{" + json.dumps(first) + ": " + opening


_DECODER = json.JSONDecoder()


def _loads_lenient(text: str) -> Any:
    text = text.strip()
    for suffix in ("", "}", "}}", '"}', '"}}'):
        try:
            obj, _ = _DECODER.raw_decode(text + suffix)
            return obj
        except json.JSONDecodeError:
            continue
    raise ValueError("not JSON")


def _fix_args(args: Any) -> Any:
    if isinstance(args, str):
        try:
            return json.loads(args)
        except json.JSONDecodeError:
            return args
    return args


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Split generated text into (content, tool_calls, invalid_tool_calls)."""
    if TOOL_OPEN not in text:
        return text, [], []
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    pieces = re.split(re.escape(TOOL_OPEN), text)
    content_parts = [pieces[0]]
    for piece in pieces[1:]:
        body, sep, after = piece.partition(TOOL_CLOSE)
        content_parts.append(after if sep else "")
        call_id = "call_" + uuid.uuid4().hex[:24]
        try:
            obj = _loads_lenient(body)
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                raise ValueError("no tool name")
            args = _fix_args(obj.get("arguments", obj.get("parameters", obj.get("args", {}))))
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
            calls.append({"name": obj["name"], "args": args, "id": call_id, "type": "tool_call"})
        except ValueError as exc:
            name = None
            m = re.search(r'"name"\s*:\s*"([^"]*)"', body)
            if m:
                name = m.group(1)
            invalid.append(
                {"name": name, "args": body.strip(), "id": call_id, "error": str(exc), "type": "invalid_tool_call"}
            )
    content = "".join(content_parts).strip()
    return content, calls, invalid
