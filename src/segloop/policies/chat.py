"""Our transcript (``ChatMessage`` with image ids) as the messages a chat template or an OpenAI server reads,
and a server's answer read back as one canonical turn.

A message with an image becomes a content list, the image first and the text after it (the order Qwen-VL
models are trained on). Tool observations:
- for a chat template they stay ``role="tool"``: the checkpoint's own template decides how a tool turn is
  written (Qwen's wraps it in ``<|im_start|>user\\n<tool_response>...``);
- for an OpenAI server in ``prompt`` tool mode (the schemas are in the system prompt, the model writes its
  call as text) they are sent as ``role="user"`` whose content is wrapped in ``<tool_response>\\n`` ...
  ``\\n</tool_response>``. A ``tool`` message is refused by OpenAI-style servers unless it answers a
  structured ``tool_calls`` entry, and hosted APIs take no images in tool messages; the wrapped user turn is
  accepted everywhere, and on a Qwen template it renders to the very tokens the template writes for a
  ``tool`` message;
- in ``native`` tool mode (the schemas go through the API's ``tools=`` parameter) an assistant turn that made
  a call is sent as a structured ``tool_calls`` entry (id ``call00001``, ``call00002``, ... in order), its
  observation as a ``role="tool"`` message with that ``tool_call_id`` and the observation's picture in a user
  message right after it (tool messages carry text only on hosted APIs). A turn that made no call stays
  text, and its observation a wrapped user turn, as in prompt mode.

History hygiene: the model family's special-token strings (``SPECIAL_TOKENS``) are removed from every text
sent, since a server's template turns ``<|image_pad|>`` or ``<|im_start|>`` in echoed text into real special
tokens and the request fails (an image-token count mismatch, a broken turn structure); ``keep_images=K`` sends
only the last K pictures and replaces older ones with ``IMAGE_STUB``.

Reading an answer (``turn_from_message``): the turn is ``content`` (a string, or a list of parts, joined); when
``content`` holds no call, the first of ``message.tool_calls``; a server's ``reasoning_content`` (or vLLM's
``reasoning``) is the thought. The result is the canonical ``<think>...</think><tool_call>{...}</tool_call>``
text, whichever way the server split it.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from segloop.agent import prompts
from segloop.agent.parser import call_body, format_call, json_value, parse_turn
from segloop.agent.policy import ChatMessage
from segloop.tools.encoding import data_url

TOOL_OPEN = "<tool_response>\n"
TOOL_CLOSE = "\n</tool_response>"


def _image(images: Mapping[str, np.ndarray], image_id: str) -> np.ndarray:
    if image_id not in images:
        raise ValueError(f"the transcript refers to image {image_id!r}, which the context does not hold")
    array = np.asarray(images[image_id])
    if array.ndim != 3 or array.shape[2] < 3 or array.dtype != np.uint8:
        raise ValueError(f"image {image_id!r} must be uint8 (H, W, 3), got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array[..., :3])


def template_messages(messages: Sequence[ChatMessage], images: Mapping[str, np.ndarray]
                      ) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Messages for ``processor.apply_chat_template`` and the images they show, in order."""
    out: list[dict[str, Any]] = []
    shown: list[np.ndarray] = []
    for message in messages:
        if message.image_id is None:
            out.append({"role": message.role, "content": message.content})
            continue
        shown.append(_image(images, message.image_id))
        content = [{"type": "image"}]
        if message.content:
            content.append({"type": "text", "text": message.content})
        out.append({"role": message.role, "content": content})
    return out, shown


ToolMode = Literal["prompt", "native"]
TOOL_MODES: tuple[ToolMode, ...] = ("prompt", "native")
IMAGE_STUB = "[an earlier picture, not sent again]"

# The special-token strings of each model family's chat template, as regular expressions. ``chatml``: Qwen and
# Qwen-VL (<|im_start|>, <|im_end|>, <|endoftext|>, <|vision_start|>, <|image_pad|>, <|video_pad|>, <|box_start|>,
# ...), which is also the <|name|> form of Llama 3 (<|eot_id|>, <|start_header_id|>) and Phi (<|user|>, <|end|>);
# ``gemma``: Gemma's turn and image markers. The project's own tags (<think>, <tool_call>, <tool_response>) are
# plain text in every one of them and are kept.
SPECIAL_TOKENS: dict[str, str | None] = {
    "chatml": r"<\|[A-Za-z0-9_.:-]{1,48}\|>",
    "gemma": r"<(?:start_of_turn|end_of_turn|start_of_image|end_of_image|image_soft_token|bos|eos|pad)>",
    "none": None,
}
SpecialTokens = Literal["chatml", "gemma", "none"]


def special_token_stripper(family: str) -> Callable[[str], str]:
    """A function removing ``family``'s special-token strings from a text (identity for ``none``)."""
    if family not in SPECIAL_TOKENS:
        raise ValueError(f"unknown special-token family {family!r}; choose one of {', '.join(SPECIAL_TOKENS)}")
    pattern = SPECIAL_TOKENS[family]
    if pattern is None:
        return lambda text: text
    compiled = re.compile(pattern)
    return lambda text: compiled.sub("", text)


def call_id(index: int) -> str:
    """The id of the ``index``-th structured tool call of a conversation (9 alphanumerics: every server's
    id rules accept it, Mistral's included)."""
    return f"call{index:05d}"


def openai_messages(messages: Sequence[ChatMessage], images: Mapping[str, np.ndarray],
                    urls: Mapping[str, str] | None = None, *, tool_mode: ToolMode = "prompt",
                    keep_images: int | None = None, strip: Callable[[str], str] | None = None
                    ) -> list[dict[str, Any]]:
    """Messages for an OpenAI chat-completions request (see the module docstring for tool turns);
    ``urls`` holds data URLs already encoded, by image id; ``strip`` cleans every text sent
    (``special_token_stripper``)."""
    if tool_mode not in TOOL_MODES:
        raise ValueError(f"unknown tool mode {tool_mode!r}; choose one of {', '.join(TOOL_MODES)}")
    clean = strip or (lambda text: text)
    shown = set(sent_image_ids(messages, keep_images))
    out: list[dict[str, Any]] = []
    open_call: str | None = None  # the id of the structured call the next observation answers
    calls = 0
    for message in messages:
        text = clean(message.content)
        if message.role == "system" and tool_mode == "native":
            text = prompts.without_tool_schemas(text)
        if message.role == "assistant":
            structured = _structured_call(text) if tool_mode == "native" else None
            if structured is None:
                out.append({"role": "assistant", "content": text})
                open_call = None
            else:
                calls += 1
                open_call = call_id(calls)
                thought, name, arguments = structured
                out.append({"role": "assistant", "content": f"<think>{thought}</think>" if thought else "",
                            "tool_calls": [{"id": open_call, "type": "function",
                                            "function": {"name": name, "arguments": arguments}}]})
            continue
        image_part = None
        if message.image_id is not None:
            if message.image_id in shown:
                url = (urls or {}).get(message.image_id) or data_url(_image(images, message.image_id))
                image_part = {"type": "image_url", "image_url": {"url": url}}
            else:
                text = f"{IMAGE_STUB}\n{text}" if text else IMAGE_STUB
        if message.role == "tool" and open_call is not None:
            out.append({"role": "tool", "tool_call_id": open_call, "content": text})
            if image_part is not None:
                out.append({"role": "user", "content": [image_part]})
            open_call = None
            continue
        role = "user" if message.role == "tool" else message.role
        if message.role == "tool":
            wrapped = f"{TOOL_OPEN}{text}{TOOL_CLOSE}"
            if image_part is None:
                out.append({"role": role, "content": wrapped})
            else:  # the image goes inside the wrapper, where the template puts a tool message's image
                out.append({"role": role, "content": [{"type": "text", "text": TOOL_OPEN}, image_part,
                                                      {"type": "text", "text": f"{text}{TOOL_CLOSE}"}]})
            continue
        if image_part is None:
            out.append({"role": role, "content": text})
            continue
        parts: list[dict[str, Any]] = [image_part]
        if text:
            parts.append({"type": "text", "text": text})
        out.append({"role": role, "content": parts})
    return out


def sent_image_ids(messages: Sequence[ChatMessage], keep_images: int | None = None) -> list[str]:
    """The image ids a request shows: all of the transcript's, or the last ``keep_images``."""
    ids = [m.image_id for m in messages if m.image_id is not None]
    if keep_images is not None:
        if keep_images < 1:
            raise ValueError(f"keep_images must be at least 1, got {keep_images}")
        ids = ids[-keep_images:]
    return ids


def _structured_call(text: str) -> tuple[str | None, str, str] | None:
    """(thought, name, arguments as a JSON string) of a turn whose call is a JSON object with a name; None
    for a turn a structured call cannot carry (no call, broken JSON), which is then sent as text."""
    parsed = parse_turn(text)
    if parsed.raw_call is None:
        return None
    try:
        payload = json_value(call_body(parsed.raw_call))
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return None
    arguments = payload.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {})
    return parsed.thought, payload["name"], arguments


_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL)
_CALL_END = "</tool_call>"


def content_text(content: Any) -> str:
    """A message's ``content`` as text: a string, None, or a list of parts (strings or ``{"type": "text",
    "text": ...}``), joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                pieces.append(part["text"])
        return "".join(pieces)
    raise TypeError(f"message content is {type(content).__name__}, not text or a list of parts")


def turn_from_message(message: Mapping[str, Any]) -> tuple[str, str]:
    """The canonical turn text of a chat-completions ``message`` and where its call came from
    (``content``, ``tool_calls``, or ``none`` when it holds no call). See the module docstring."""
    content = content_text(message.get("content"))
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    if not isinstance(reasoning, str):
        reasoning = content_text(reasoning)
    reasoning = reasoning.strip()
    calls = message.get("tool_calls") or []
    if "<tool_call>" in content or not calls:
        # The call (if any) is in the text; a text continued past its call is cut there, as `stop` would.
        end = content.find(_CALL_END)
        if end >= 0:
            content = content[: end + len(_CALL_END)]
        if reasoning and "<think>" not in content:
            content = f"<think>{reasoning}</think>{content.lstrip()}"
        return content, "content" if "<tool_call>" in content else "none"
    call = calls[0] if isinstance(calls, list) else None
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return content, "none"
    name = function.get("name")
    arguments = function.get("arguments")
    thought = reasoning
    if not thought:  # text beside a structured call is the model's reasoning (a <think> block, or plain words)
        block = _THINK_BLOCK.search(content)
        thought = (block.group(0).removeprefix("<think>").removesuffix("</think>") if block else content).strip()
    if isinstance(arguments, str):
        # Kept as written when it is not JSON: the parser then tells the model its call is not valid JSON.
        with contextlib.suppress(ValueError):
            arguments = json_value(arguments) if arguments.strip() else {}
    if isinstance(arguments, str):
        payload = f'{{"name": {json.dumps(name)}, "arguments": {arguments}}}'
    else:
        payload = json.dumps({"name": name, "arguments": {} if arguments is None else arguments},
                             separators=(", ", ": "))
    call_text = f"<tool_call>{payload}</tool_call>"
    parsed = parse_turn(call_text)
    if parsed.action is not None:
        call_text = format_call(parsed.action)
    return (f"<think>{thought}</think>" if thought else "") + call_text, "tool_calls"
