"""One request in the demo: run an episode on the session's conversation and describe every step of it
as chat messages, a status line, the final overlay and the download files.

``respond`` is an async generator of ``Screen``s, one per streamed turn and one at the end; the Gradio
app only maps them onto its components, so this module runs (and is tested) without a browser. Every
failure a user can cause ends as a clear status line, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segloop.demos.backends import BackendChoice, Backends
from segloop.demos.session import DemoSession, image_fingerprint
from segloop.tools.images import ImageError, load_image, save_image, save_mask
from segloop.tools.masks import rle_encode

# Longest side of the images shown in the chat: enough to read an overlay, small enough to stream.
CHAT_IMAGE_SIDE = 512


@dataclass
class Screen:
    """What the UI shows after a step. ``final`` is the last mask over the image, ``files`` the
    downloads (mask PNG, COCO RLE JSON); both stay None (unchanged on screen) until an episode ends,
    and ``clear`` empties them when a new episode starts."""

    chat: list[dict[str, Any]]
    status: str
    final: np.ndarray | None = None
    files: list[str] = field(default_factory=list)
    clear: bool = False


def turn_title(turn: int, tool: str) -> str:
    """The heading of a turn's message; the browser test reads turns back by it."""
    return f"Turn {turn} · {tool}"


def _turn_message(event: Any, image_path: Path | None) -> dict[str, Any]:
    tool = event.action.name if event.action is not None else "invalid call"
    lines = [f"**{turn_title(event.turn + 1, tool)}**"]
    if event.thought:
        lines.append(f"*{event.thought}*")
    call = event.call_text or event.raw_text
    lines.append(f"```\n{call.strip()}\n```")
    if event.observation:
        # An invalid call's observation is the error the model was shown.
        lines.append(f"⚠️ {event.observation}" if event.error is not None else event.observation)
    content: list[Any] = ["\n\n".join(lines)]
    if image_path is not None:
        content.append({"path": str(image_path), "alt_text": f"overlay after turn {event.turn + 1}"})
    return {"role": "assistant", "content": content}


def final_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The submitted mask over the whole image, at the image's own size (rounded to whole tokens)."""
    from segloop.tools.overlay import render_overlay
    from segloop.tools.views import full_view

    height, width = image.shape[:2]
    return render_overlay(image, full_view(width, height, max_side=max(width, height)), mask)


def outcome_text(trajectory: Any, choice: BackendChoice) -> str:
    """One line on how the episode ended."""
    turns = len(trajectory.turns)
    area = trajectory.final_area_share
    if trajectory.policy_error:
        return describe_policy_error(trajectory.policy_error, choice)
    if trajectory.submitted:
        if trajectory.no_target:
            return f"Done in {turns} turns: the agent says there is no such object (empty mask)."
        return f"Done in {turns} turns: mask submitted ({area:.2%} of the image)."
    return (f"The agent used all {trajectory.max_turns} turns without submitting; shown is its last candidate "
            f"mask ({area:.2%} of the image). Try a clearer request, more turns (--max-turns) or another model.")


# Exception class names (the episode records "ConnectError: ...") that mean nobody answers at the URL.
_UNREACHABLE = ("ConnectError", "ConnectTimeout", "ConnectionError", "ConnectionRefusedError", "UnsupportedProtocol")


def describe_policy_error(error: str, choice: BackendChoice) -> str:
    """A user-facing line for an episode the policy could not finish (``Trajectory.policy_error``)."""
    kind, _, detail = error.partition(": ")
    if choice.kind == "openai":
        if kind in _UNREACHABLE or "connect" in detail.lower():
            return f"Cannot reach the server at {choice.url}: is it running, and is the URL right?"
        if kind.endswith("Timeout") or "no answer within" in detail:
            return f"The server at {choice.url} did not answer in time."
        return f"The server at {choice.url} failed: {detail or kind}"
    return f"The agent failed: {detail or kind}"


def describe_failure(exc: BaseException) -> str:
    """A user-facing line for an agent that could not be built or raised mid-episode."""
    first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
    return f"The agent failed: {first_line}"


async def respond(session: DemoSession, image_path: str | None, query: str, choice: BackendChoice,
                  backends: Backends, out_dir: Path) -> AsyncIterator[Screen]:
    """Run ``query`` on the image at ``image_path`` and yield what to show after every step."""
    query = (query or "").strip()
    if image_path is None:
        yield Screen(session.chat, "Upload an image or pick a sample first.")
        return
    if not query:
        yield Screen(session.chat, "Type what to segment, e.g. “the red circle left of the blue square”.")
        return
    if (problem := choice.problem()) is not None:
        yield Screen(session.chat, problem)
        return
    try:
        image = load_image(image_path)
    except ImageError as exc:
        reason = str(exc).split(": ", 1)[-1]
        yield Screen(session.chat, f"This image cannot be used: {reason}")
        return

    thread_id, continues = session.thread_for(image_fingerprint(image), choice.key)
    episode_id = session.next_episode_id()
    user_content: list[Any] = [query]
    if not continues:
        shown = session.work_dir / f"{episode_id}_input.png"
        save_image(_shrink(image), shown)
        user_content.append({"path": str(shown), "alt_text": "the image"})
    session.chat.append({"role": "user", "content": user_content})
    yield Screen(session.chat, "Continuing the conversation…" if continues else "Starting…", clear=True)

    try:
        agent = await asyncio.to_thread(backends.agent, choice)
    except Exception as exc:  # a model that cannot load is a user-facing state, not a crash
        yield Screen(session.chat, describe_failure(exc))
        return

    from segloop.agent.episode import EpisodeResult, save_episode

    def save_stopped(result: EpisodeResult) -> None:
        save_episode(result, out_dir / episode_id)

    max_turns = backends.spec.episode.max_turns
    try:
        async with contextlib.aclosing(agent.stream(image, query, episode_id=episode_id, thread_id=thread_id,
                                                    on_stop=save_stopped)) as stream:
            async for item in stream:
                if isinstance(item, EpisodeResult):
                    # A failed policy may leave its thread mid-turn: do not continue it.
                    session.interrupted = bool(item.trajectory.policy_error)
                    yield _finish(session, item, image, out_dir, choice, save_episode)
                    return
                overlay_path = None
                if item.image is not None:
                    overlay_path = session.work_dir / f"{episode_id}_turn_{item.turn + 1:02d}.png"
                    save_image(item.image, overlay_path)
                session.chat.append(_turn_message(item, overlay_path))
                yield Screen(session.chat, f"Turn {item.turn + 1} of at most {max_turns}…")
    except asyncio.CancelledError:
        session.interrupted = True
        raise
    except Exception as exc:
        session.interrupted = True
        yield Screen(session.chat, describe_failure(exc))


def _finish(session: DemoSession, result: Any, image: np.ndarray, out_dir: Path, choice: BackendChoice,
            save_episode: Any) -> Screen:
    episode_id = result.trajectory.episode_id
    episode_dir = Path(save_episode(result, out_dir / episode_id))
    # The downloads are named after the episode, so files saved from several runs do not collide.
    rle_path = session.work_dir / f"{episode_id}_mask_rle.json"
    rle_path.write_text(json.dumps(rle_encode(result.mask)))
    mask_path = save_mask(result.mask, session.work_dir / f"{episode_id}_mask.png")
    overlay = final_overlay(image, result.mask)
    text = outcome_text(result.trajectory, choice)
    session.chat.append({"role": "assistant", "content": [f"**Result** · {text}"]})
    return Screen(session.chat, f"{text} Saved to {episode_dir}.", overlay, [str(mask_path), str(rle_path)])


def _shrink(image: np.ndarray) -> np.ndarray:
    import cv2

    height, width = image.shape[:2]
    scale = CHAT_IMAGE_SIDE / max(height, width)
    if scale >= 1:
        return image
    return cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
