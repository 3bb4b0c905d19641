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

from segloop.agent.records import EpisodeResult, final_picture, save_episode
from segloop.demos.backends import BackendChoice, Backends
from segloop.demos.session import DemoSession, image_fingerprint
from segloop.tools.images import ImageError, load_image, save_image, save_mask
from segloop.tools.masks import rle_encode
from segloop.tools.redaction import redact

# Longest side of the images shown in the chat: enough to read an overlay, small enough to stream.
CHAT_IMAGE_SIDE = 512
# How often a running request looks whether Stop was clicked, in seconds.
STOP_POLL_S = 0.05


@dataclass
class Screen:
    """What the UI shows after a step. ``final`` is the last mask over the image, ``files`` the
    downloads (mask PNG, COCO RLE JSON); both stay None (unchanged on screen) until an episode ends,
    and ``clear`` empties them when a new episode starts (and when it ends without a mask to show:
    failed, stopped, EMPTY or "no such object": nothing is offered as if it were an answer)."""

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


def outcome_text(trajectory: Any, choice: BackendChoice) -> str:
    """One line on how the episode ended; a refusal, and an answer that is a guess (the request has words the
    agent does not know), say so."""
    if trajectory.failure is not None:
        if trajectory.failure.kind == "policy":
            return describe_policy_error(trajectory.failure.reason, choice)
        return f"The episode failed ({trajectory.failure.kind}): {redact(trajectory.failure.reason)}"
    words = ", ".join(repr(w) for w in trajectory.unknown_words)
    if trajectory.refused:
        return (f"REFUSED: the agent cannot read {words}, so it did not answer (no mask). Ask with the words it "
                "knows, or use a vision-language model backend.")
    # The answer stands, but the agent could not read the whole request: said with every outcome below.
    guess = f" This is a GUESS: the agent does not know {words}." if trajectory.unknown_words else ""
    return _outcome(trajectory) + guess


def _outcome(trajectory: Any) -> str:
    """How an answered episode ended."""
    turns = len(trajectory.turns)
    area = trajectory.final_area_share
    if trajectory.submitted:
        if trajectory.no_target:
            return f"Done in {turns} turns: the agent says there is no such object."
        if trajectory.empty:
            return (f"Done in {turns} turns: the agent submitted an EMPTY mask (it did not say there is no such "
                    "object): it found nothing to segment. Try a clearer request or another model.")
        return f"Done in {turns} turns: mask submitted ({area:.2%} of the image)."
    if trajectory.empty:
        return (f"The agent used all {trajectory.max_turns} turns without submitting, and its last candidate is an "
                "EMPTY mask. Try a clearer request, more turns (--max-turns) or another model.")
    return (f"The agent used all {trajectory.max_turns} turns without submitting; shown is its last candidate "
            f"mask ({area:.2%} of the image). Try a clearer request, more turns (--max-turns) or another model.")


# Exception class names (the episode records "ConnectError: ...") that mean nobody answers at the URL.
_UNREACHABLE = ("ConnectError", "ConnectTimeout", "ConnectionError", "ConnectionRefusedError", "UnsupportedProtocol")


def describe_policy_error(error: str, choice: BackendChoice) -> str:
    """A user-facing line for an episode the policy could not finish (its ``Failure`` of kind "policy")."""
    kind, _, detail = error.partition(": ")
    url = redact(choice.server)
    if choice.kind == "openai":
        if kind in _UNREACHABLE or "cannot connect" in detail.lower():
            return f"Cannot reach the server at {url}: is it running, and is the URL right?"
        if kind.endswith("Timeout") or "no answer within" in detail:
            return f"The server at {url} did not answer in time."
        return f"The server at {url} failed: {redact(detail or kind)}"
    return f"The agent failed: {redact(detail or kind)}"


def describe_failure(exc: BaseException) -> str:
    """A user-facing line for an agent that could not be built or raised mid-episode."""
    first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
    return f"The agent failed: {redact(first_line)}"


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
    if (problem := backends.problem(choice)) is not None:
        yield Screen(session.chat, problem)
        return
    try:
        image = load_image(image_path)
    except ImageError as exc:
        reason = str(exc).split(": ", 1)[-1]
        yield Screen(session.chat, f"This image cannot be used: {reason}")
        return
    from segloop.agent.episode import MIN_IMAGE_SIDE

    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        height, width = image.shape[:2]
        yield Screen(session.chat, f"This image cannot be used: it is {width}x{height} pixels, too small to look at "
                                   f"and zoom into (at least {MIN_IMAGE_SIDE} pixels on each side).")
        return

    # From here until the request ends, the Stop button reaches it (``DemoSession.request_stop``).
    session.running, session.stop_requested = True, False
    try:
        async for screen in _run(session, image, query, choice, backends, out_dir):
            yield screen
    finally:
        session.running = session.stop_requested = False


async def _run(session: DemoSession, image: np.ndarray, query: str, choice: BackendChoice, backends: Backends,
               out_dir: Path) -> AsyncIterator[Screen]:
    """The request on a usable image: the agent's episode, streamed."""
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
    from segloop.agent.policy import PolicyUnavailable

    try:
        note = await backends.check(choice)
    except PolicyUnavailable as exc:  # the preflight: the server cannot serve this agent; no episode is started
        session.interrupted = True
        text = describe_policy_error(f"{type(exc).__name__}: {exc}", choice)
        session.chat.append({"role": "assistant", "content": [f"**Not started** · {text}"]})
        yield Screen(session.chat, text)
        return
    if note:
        session.chat.append({"role": "assistant", "content": [f"⚠️ Note: {note}"]})
    if session.stop_requested:  # Stop while the model was loading: no episode was started
        session.interrupted = True
        yield _stopped(session, [], out_dir / episode_id)
        return

    from segloop.agent.policy import unknown_words
    from segloop.policies.registry import unknown_words_note

    if words := unknown_words(agent.policy, query):
        note = unknown_words_note(agent.policy.name, words, "demo")
        session.chat.append({"role": "assistant", "content": [
            f"⚠️ Note: {note[0].upper()}{note[1:]}. Or choose “OpenAI-compatible server” under Backend."]})
        yield Screen(session.chat, "Starting (the agent does not know some of these words)…")

    stopped: list[EpisodeResult] = []

    def save_stopped(result: EpisodeResult) -> None:
        save_episode(result, out_dir / episode_id, image)
        stopped.append(result)

    max_turns = backends.spec.episode.max_turns
    try:
        async with contextlib.aclosing(agent.stream(image, query, episode_id=episode_id, thread_id=thread_id,
                                                    on_stop=save_stopped)) as stream:
            while True:
                item = await _next_unless_stopped(stream, session)
                if item is None:  # Stop was clicked: the stream is closed and the episode saved as stopped
                    await stream.aclose()
                    session.interrupted = True
                    yield _stopped(session, stopped, out_dir / episode_id)
                    return
                if isinstance(item, EpisodeResult):
                    # A failed policy may leave its thread mid-turn: do not continue it.
                    session.interrupted = item.trajectory.failure is not None
                    yield _finish(session, item, image, out_dir, choice)
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


_STOP = object()


async def _next_unless_stopped(stream: Any, session: DemoSession) -> Any:
    """The stream's next item, or None once Stop was clicked. A turn in progress is cancelled (its policy
    call or tool step with it): the episode ends within the current turn, not after the next ones."""
    if session.stop_requested:
        return None
    step = asyncio.ensure_future(anext(stream, _STOP))
    try:
        while not step.done():
            await asyncio.wait({step}, timeout=STOP_POLL_S)
            if session.stop_requested and not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await step  # the stream's own clean-up runs: the episode so far is saved (``on_stop``)
                return None
    except asyncio.CancelledError:  # this request itself was cancelled: end the turn before passing it on
        step.cancel()
        await asyncio.gather(step, return_exceptions=True)
        raise
    item = step.result()
    if item is _STOP:
        raise RuntimeError("the episode ended without a result")
    return item


def _stopped(session: DemoSession, stopped: list[Any], episode_dir: Path) -> Screen:
    """The screen after Stop: the turns so far stay, nothing is offered as an answer, the page is ready."""
    turns = len(stopped[0].trajectory.turns) if stopped else 0
    text = f"Stopped after {turns} turn{'s' if turns != 1 else ''}."
    saved = f" The turns so far are saved to {episode_dir}." if stopped else ""
    session.chat.append({"role": "assistant", "content": [f"**Stopped** · {text}"]})
    return Screen(session.chat, f"{text}{saved} The next request starts a new conversation.", clear=True)


def _finish(session: DemoSession, result: EpisodeResult, image: np.ndarray, out_dir: Path,
            choice: BackendChoice) -> Screen:
    episode_id = result.trajectory.episode_id
    episode_dir = save_episode(result, out_dir / episode_id, image)
    text = outcome_text(result.trajectory, choice)
    session.chat.append({"role": "assistant", "content": [f"**Result** · {text}"]})
    t = result.trajectory
    if t.failure is not None or not result.mask.any():
        # Failed, EMPTY or "no such object": no mask to show or download as if it were an answer.
        return Screen(session.chat, f"{text} Saved to {episode_dir}.", clear=True)
    # The downloads are named after the episode, so files saved from several runs do not collide.
    rle_path = session.work_dir / f"{episode_id}_mask_rle.json"
    rle_path.write_text(json.dumps(rle_encode(result.mask)))
    mask_path = save_mask(result.mask, session.work_dir / f"{episode_id}_mask.png")
    overlay = final_picture(image, result.mask)
    return Screen(session.chat, f"{text} Saved to {episode_dir}.", overlay, [str(mask_path), str(rle_path)])


def _shrink(image: np.ndarray) -> np.ndarray:
    import cv2

    height, width = image.shape[:2]
    scale = CHAT_IMAGE_SIDE / max(height, width)
    if scale >= 1:
        return image
    return cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
