"""Our transcript (``ChatMessage`` with image ids) as the messages a chat template or an OpenAI server reads.

A message with an image becomes a content list, the image first and the text after it (the order Qwen-VL
models are trained on). Tool observations:
- for a chat template they stay ``role="tool"``: the checkpoint's own template decides how a tool turn is
  written (Qwen's wraps it in ``<|im_start|>user\\n<tool_response>...``);
- for an OpenAI server they are sent as ``role="user"`` whose content is wrapped in ``<tool_response>\\n``
  ... ``\\n</tool_response>``. A ``tool`` message is refused by OpenAI-style servers unless it answers a
  structured ``tool_calls`` entry (ours are text), and hosted APIs take no images in tool messages; the
  wrapped user turn is accepted everywhere, and on a Qwen template it renders to the very tokens the
  template writes for a ``tool`` message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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


def openai_messages(messages: Sequence[ChatMessage], images: Mapping[str, np.ndarray],
                    urls: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Messages for an OpenAI chat-completions request (see the module docstring for tool turns);
    ``urls`` holds data URLs already encoded, by image id."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = "user" if message.role == "tool" else message.role
        text = f"{TOOL_OPEN}{message.content}{TOOL_CLOSE}" if message.role == "tool" else message.content
        if message.image_id is None:
            out.append({"role": role, "content": text})
            continue
        url = (urls or {}).get(message.image_id) or data_url(_image(images, message.image_id))
        parts: list[dict[str, Any]] = []
        if message.role == "tool":
            # The image goes inside the wrapper, where the template puts a tool message's image.
            parts.append({"type": "text", "text": TOOL_OPEN})
            text = f"{message.content}{TOOL_CLOSE}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
        if text:
            parts.append({"type": "text", "text": text})
        out.append({"role": role, "content": parts})
    return out

