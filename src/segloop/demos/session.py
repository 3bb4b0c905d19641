"""One browser session of the demo: which image and conversation it is on, and what it has shown.

Each Gradio session holds its own ``DemoSession`` in a ``gr.State``; nothing here is shared between
sessions. A follow-up request continues the LangGraph thread only while the image and the backend are
the ones the thread was started with; anything else starts a new thread.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def image_fingerprint(image: np.ndarray) -> str:
    """A short digest of the pixels: the same picture uploaded twice is the same conversation."""
    digest = hashlib.sha1(np.ascontiguousarray(image).tobytes())
    digest.update(repr(image.shape).encode())
    return digest.hexdigest()[:16]


@dataclass
class DemoSession:
    """Per-browser state. ``chat`` is the Chatbot's message list; ``work_dir`` holds this session's
    streamed overlays (the saved episodes go under the demo's ``--out``)."""

    session_id: str
    work_dir: Path
    thread_id: str | None = None
    thread_image: str | None = None
    thread_backend: str | None = None
    episodes: int = 0
    chat: list[dict[str, Any]] = field(default_factory=list)
    # Set when an episode was stopped mid-way: its thread may end between a policy and a tool step,
    # so the next request starts afresh rather than continue a half-written conversation.
    interrupted: bool = False
    # Whether a request is running, and whether the Stop button asked it to end (it does within the turn).
    running: bool = False
    stop_requested: bool = False

    @classmethod
    def new(cls, root: Path) -> DemoSession:
        session_id = uuid.uuid4().hex[:12]
        work_dir = root / session_id
        work_dir.mkdir(parents=True, exist_ok=True)
        return cls(session_id=session_id, work_dir=work_dir)

    def thread_for(self, image_key: str, backend_key: str) -> tuple[str, bool]:
        """The thread id for a request on this image with this backend, and whether it continues an
        earlier conversation."""
        continues = (
            self.thread_id is not None
            and not self.interrupted
            and self.thread_image == image_key
            and self.thread_backend == backend_key
        )
        if not continues:
            self.thread_id = f"{self.session_id}-{uuid.uuid4().hex[:8]}"
            self.thread_image = image_key
            self.thread_backend = backend_key
            self.chat = []
        self.interrupted = False
        return self.thread_id, continues

    def next_episode_id(self) -> str:
        self.episodes += 1
        return f"demo-{self.session_id}-{self.episodes:02d}"

    def request_stop(self) -> bool:
        """The Stop button: ask the running request to end its episode; False when none is running."""
        if self.running:
            self.stop_requested = True
        return self.running

    def reset(self) -> None:
        """Forget the conversation (the "new conversation" button)."""
        self.thread_id = self.thread_image = self.thread_backend = None
        self.chat = []
        self.interrupted = False
