"""The demo's request handling without a browser: sessions and threads, the messages a user sees for a
bad image, an unreachable server and a model that never submits, and a stopped episode.

The OpenAI-compatible server here is a real HTTP server on localhost that always answers with the same
tool call; the policy talks to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from support.openai_server import OpenAIServer, scripted_turns

from segloop.agent.episode import EpisodeConfig
from segloop.cli.demo import add_arguments, main
from segloop.demos.app import build_app
from segloop.demos.backends import BackendChoice, Backends
from segloop.demos.bundled import bundled_samples
from segloop.demos.chat import Screen, respond, turn_title
from segloop.demos.session import DemoSession, image_fingerprint
from segloop.policies.assembly import AgentSpec
from segloop.tools.images import save_image


def _run(session: DemoSession, image: str | None, query: str, choice: BackendChoice, backends: Backends,
         out: Path) -> list[Screen]:
    async def collect() -> list[Screen]:
        return [screen async for screen in respond(session, image, query, choice, backends, out)]

    return asyncio.run(collect())


@pytest.fixture
def session(tmp_path: Path) -> DemoSession:
    return DemoSession.new(tmp_path / "work")


@pytest.fixture
def sample_image(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    image = rng.integers(60, 120, size=(96, 128, 3), dtype=np.uint8)
    image[30:60, 40:80] = (220, 40, 40)
    return str(save_image(image, tmp_path / "red.png"))


# --- sessions --------------------------------------------------------------------------------------


def test_a_follow_up_on_the_same_image_and_backend_continues_the_thread(session: DemoSession) -> None:
    first, continues = session.thread_for("img1", "offline")
    assert not continues
    session.chat.append({"role": "user", "content": "x"})
    again, continues = session.thread_for("img1", "offline")
    assert continues and again == first and session.chat  # same conversation, chat kept
    other_image, continues = session.thread_for("img2", "offline")
    assert not continues and other_image != first and session.chat == []
    other_backend, continues = session.thread_for("img2", "openai|http://x|m")
    assert not continues and other_backend != other_image


def test_an_interrupted_thread_is_not_continued(session: DemoSession) -> None:
    first, _ = session.thread_for("img", "offline")
    session.interrupted = True
    second, continues = session.thread_for("img", "offline")
    assert not continues and second != first and not session.interrupted


def test_sessions_never_share_ids_or_folders(tmp_path: Path) -> None:
    a, b = DemoSession.new(tmp_path), DemoSession.new(tmp_path)
    assert a.session_id != b.session_id and a.work_dir != b.work_dir
    assert a.thread_for("img", "offline")[0] != b.thread_for("img", "offline")[0]
    assert a.next_episode_id() != b.next_episode_id()


def test_image_fingerprint_tells_pictures_apart() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    other = image.copy()
    other[0, 0, 0] = 1
    assert image_fingerprint(image) == image_fingerprint(image.copy())
    assert image_fingerprint(image) != image_fingerprint(other)
    assert image_fingerprint(image) != image_fingerprint(np.zeros((4, 16, 3), np.uint8))


def test_backend_choice_says_what_is_missing() -> None:
    assert BackendChoice().problem() is None
    assert "URL" in BackendChoice(kind="openai", model="m").problem()
    assert "model" in BackendChoice(kind="openai", url="http://localhost:1/v1").problem()
    assert BackendChoice(kind="openai", url=" http://h/v1 ", model=" m ").key == "openai|http://h/v1|m"


# --- requests that never reach the agent -----------------------------------------------------------


def test_missing_image_or_request_gives_a_clear_status(session: DemoSession, sample_image: str,
                                                       tmp_path: Path) -> None:
    backends = Backends(AgentSpec())
    (screen,) = _run(session, None, "the red square", BackendChoice(), backends, tmp_path)
    assert "Upload an image" in screen.status
    (screen,) = _run(session, sample_image, "   ", BackendChoice(), backends, tmp_path)
    assert "Type what to segment" in screen.status
    (screen,) = _run(session, sample_image, "the red square", BackendChoice(kind="openai"), backends, tmp_path)
    assert "URL" in screen.status
    assert session.chat == [] and session.thread_id is None


@pytest.mark.parametrize("content, reason", [(b"not an image at all", "not a readable image"),
                                             (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image")])
def test_a_bad_image_gives_a_clear_status(session: DemoSession, tmp_path: Path, content: bytes,
                                          reason: str) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(content)
    (screen,) = _run(session, str(bad), "the red square", BackendChoice(), Backends(AgentSpec()), tmp_path)
    assert screen.status.startswith("This image cannot be used:") and reason in screen.status
    assert session.chat == []


def test_a_tiny_image_gives_a_clear_status(session: DemoSession, tmp_path: Path) -> None:
    """Item 12: a 1x1 upload is refused in one line, before any turn."""
    tiny = save_image(np.zeros((1, 1, 3), np.uint8), tmp_path / "tiny.png")
    (screen,) = _run(session, str(tiny), "the red square", BackendChoice(), Backends(AgentSpec()), tmp_path)
    assert screen.status == ("This image cannot be used: it is 1x1 pixels, too small to look at and zoom into "
                             "(at least 28 pixels on each side).")
    assert session.chat == [] and not session.running


def test_a_truncated_image_gives_a_clear_status(session: DemoSession, sample_image: str, tmp_path: Path) -> None:
    data = Path(sample_image).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    (screen,) = _run(session, str(truncated), "the red square", BackendChoice(), Backends(AgentSpec()), tmp_path)
    assert screen.status.startswith("This image cannot be used:")


# --- the command line --------------------------------------------------------------------------------


def _args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_rejects_bad_options_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(_args("--max-turns", "0", "--out", str(tmp_path))) == 2
    assert main(_args("--port", "70000", "--out", str(tmp_path))) == 2
    assert main(_args("--model", str(tmp_path / "nonesuch"), "--out", str(tmp_path))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("segloop demo:") for line in err)
    assert "nonesuch" in err[2]


def test_the_app_builds_with_the_bundled_samples(tmp_path: Path) -> None:
    assert len(bundled_samples()) >= 2 and all(path.exists() for path, _ in bundled_samples())
    app = build_app(Backends(AgentSpec()), tmp_path / "out", tmp_path / "work")
    ids = {block.elem_id for block in app.blocks.values() if getattr(block, "elem_id", None)}
    assert {"input-image", "query", "send", "stop", "turns", "status", "final-overlay", "downloads"} <= ids


# --- episodes against a real OpenAI-compatible HTTP server ----------------------------------------

# The scripted server answers requests in turn: the demo's preflight (tested apart) would take the first replies.
NO_PREFLIGHT = {"preflight": False}
SEGMENT_REPLY = ('<think>The red block is in the middle.</think>'
                 '<tool_call>{"name": "segment", "arguments": {"bbox_2d": [40, 30, 80, 60]}}</tool_call>')
SUBMIT_REPLY = '<tool_call>{"name": "submit", "arguments": {}}</tool_call>'


class ScriptedServer:
    """A real HTTP server speaking the OpenAI chat-completions protocol: answers with ``replies`` in
    turn (the last one forever), after ``delay`` seconds; counts the requests it got."""

    def __init__(self, replies: list[str], delay: float = 0.0) -> None:
        self.replies, self.delay, self.requests = replies, delay, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                json.loads(self.rfile.read(length) or b"{}")
                reply = server.replies[min(server.requests, len(server.replies) - 1)]
                server.requests += 1
                time.sleep(server.delay)
                body = json.dumps({
                    "id": f"chat-{server.requests}", "object": "chat.completion", "created": 0, "model": "scripted",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": reply}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator:
    servers: list[ScriptedServer] = []

    def start(replies: list[str], delay: float = 0.0) -> ScriptedServer:
        servers.append(ScriptedServer(replies, delay))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _titles(chat: list[dict]) -> list[str]:
    return [part.split("**")[1] for message in chat if message["role"] == "assistant"
            for part in message["content"][:1] if part.startswith("**Turn")]


def test_a_model_that_never_submits_is_told_as_budget_spent(session: DemoSession, sample_image: str, serve,
                                                            tmp_path: Path) -> None:
    server = serve([SEGMENT_REPLY])
    backends = Backends(AgentSpec(episode=EpisodeConfig(max_turns=3)), NO_PREFLIGHT)
    choice = BackendChoice(kind="openai", url=server.url, model="scripted")
    screens = _run(session, sample_image, "the red block", choice, backends, tmp_path / "out")
    assert server.requests == 3
    last = screens[-1]
    assert "used all 3 turns without submitting" in last.status
    assert _titles(last.chat) == [turn_title(i, "segment") for i in (1, 2, 3)]
    saved = json.loads((tmp_path / "out" / f"demo-{session.session_id}-01" / "trajectory.json").read_text())
    assert len(saved["turns"]) == 3 and not saved["submitted"]
    # Its box is a few pixels of this small image: the candidate is empty, and nothing is offered as an answer.
    assert saved["empty"] and "EMPTY mask" in last.status
    assert last.final is None and last.files == [] and last.clear


def test_an_unreachable_server_is_told_in_one_line(session: DemoSession, sample_image: str, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    choice = BackendChoice(kind="openai", url=f"http://127.0.0.1:{port}/v1", model="m")
    backends = Backends(AgentSpec(episode=EpisodeConfig(max_turns=2)))
    screens = _run(session, sample_image, "the red block", choice, backends, tmp_path)
    message = f"Cannot reach the server at http://127.0.0.1:{port}/v1: is it running, and is the URL right?"
    assert screens[-1].status == message  # found by the preflight: no episode is started
    assert not list(tmp_path.glob("demo-*"))
    assert screens[-1].files == [] and screens[-1].final is None
    assert session.interrupted  # the next request starts a new conversation
    # Past the preflight (the server went down after it), the episode fails, is saved, and offers no mask.
    backends = Backends(AgentSpec(episode=EpisodeConfig(max_turns=2)), NO_PREFLIGHT)
    screens = _run(session, sample_image, "the red block", choice, backends, tmp_path)
    assert screens[-1].status.startswith(message) and "Traceback" not in screens[-1].status
    assert (tmp_path / f"demo-{session.session_id}-02" / "trajectory.json").is_file()
    assert screens[-1].files == [] and screens[-1].final is None and screens[-1].clear


def test_a_follow_up_continues_the_conversation(session: DemoSession, sample_image: str, serve,
                                                tmp_path: Path) -> None:
    server = serve([SEGMENT_REPLY, SUBMIT_REPLY, SEGMENT_REPLY, SUBMIT_REPLY])
    backends = Backends(AgentSpec(episode=EpisodeConfig(max_turns=4)), NO_PREFLIGHT)
    choice = BackendChoice(kind="openai", url=server.url, model="scripted")
    first = _run(session, sample_image, "the red block", choice, backends, tmp_path / "out")[-1]
    thread = session.thread_id
    assert first.status.startswith("Done in 2 turns")
    second = _run(session, sample_image, "now only its left half", choice, backends, tmp_path / "out")[-1]
    assert session.thread_id == thread
    users = [m for m in second.chat if m["role"] == "user"]
    assert [u["content"][0] for u in users] == ["the red block", "now only its left half"]
    assert len(users[0]["content"]) == 2 and len(users[1]["content"]) == 1  # the image is shown once
    assert _titles(second.chat) == [turn_title(1, "segment"), turn_title(2, "submit")] * 2


def test_stop_cancels_the_episode_and_the_next_request_starts_afresh(session: DemoSession, sample_image: str,
                                                                     serve, tmp_path: Path) -> None:
    server = serve([SEGMENT_REPLY], delay=1.0)
    backends = Backends(AgentSpec(episode=EpisodeConfig(max_turns=8)), NO_PREFLIGHT)
    choice = BackendChoice(kind="openai", url=server.url, model="scripted")

    async def run_then_stop() -> list[Screen]:
        seen: list[Screen] = []

        async def consume() -> None:
            async for screen in respond(session, sample_image, "the red block", choice, backends, tmp_path / "out"):
                seen.append(screen)

        task = asyncio.create_task(consume())
        while not any(s.status.startswith("Turn 1") for s in seen):
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    seen = asyncio.run(run_then_stop())
    stopped_at = server.requests
    time.sleep(1.5)
    assert server.requests <= stopped_at + 1  # no episode keeps running after the stop
    assert session.interrupted and len(_titles(seen[-1].chat)) < 8
    saved = list((tmp_path / "out").glob("*/trajectory.json"))  # the stopped episode is saved like any other
    assert len(saved) == 1
    record = json.loads(saved[0].read_text())
    assert record["stopped"] and not record["submitted"]
    assert 1 <= len(record["turns"]) == len(_titles(seen[-1].chat))
    thread = session.thread_id
    session.thread_for(image_fingerprint(np.zeros((2, 2, 3), np.uint8)), choice.key)
    assert session.thread_id != thread


def test_the_stop_button_ends_the_episode_within_the_turn(session: DemoSession, sample_image: str, serve,
                                                         tmp_path: Path) -> None:
    """Item 8, without a browser: ``request_stop`` (what the Stop button calls) while the server is thinking
    ends the episode in that turn: no further requests, "Stopped after N turns", the turns kept and saved,
    nothing offered as an answer, and the session ready for the next request."""
    server = serve([SEGMENT_REPLY], delay=1.0)
    backends = Backends(AgentSpec(episode=EpisodeConfig(max_turns=8)), NO_PREFLIGHT)
    choice = BackendChoice(kind="openai", url=server.url, model="scripted")
    assert not session.request_stop()  # nothing running: nothing to stop

    async def run_then_stop() -> tuple[list[Screen], int]:
        seen: list[Screen] = []
        stream = respond(session, sample_image, "the red block", choice, backends, tmp_path / "out")
        async for screen in stream:
            seen.append(screen)
            if screen.status.startswith("Turn 1 of at most"):
                await asyncio.sleep(0.3)  # the second turn's request is now with the server
                assert session.request_stop()
                requests = server.requests
        return seen, requests

    seen, requests_at_stop = asyncio.run(run_then_stop())
    time.sleep(1.5)
    assert server.requests == requests_at_stop  # the turn in flight was cancelled; none came after it
    last = seen[-1]
    assert last.status.startswith("Stopped after 1 turn. The turns so far are saved to ")
    assert last.status.endswith("The next request starts a new conversation.")
    assert _titles(last.chat) == [turn_title(1, "segment")] and "**Stopped**" in last.chat[-1]["content"][0]
    assert last.clear and last.files == [] and last.final is None
    record = json.loads(next((tmp_path / "out").glob("*/trajectory.json")).read_text())
    assert record["stopped"] and len(record["turns"]) == 1
    assert not session.running and not session.stop_requested and session.interrupted
    again = _run(session, sample_image, "the red block", BackendChoice(), backends, tmp_path / "out")
    assert "Saved to" in again[-1].status and "Stopped" not in again[-1].status


def test_the_final_mask_is_outlined_with_a_zoomed_inset_when_small(tmp_path: Path) -> None:
    """Item 10: a target a few pixels wide is visible in the final picture."""
    from segloop.agent.records import final_picture
    from segloop.tools.overlay import CONTOUR_RGB, INSET_RGB

    image = np.full((600, 800, 3), 90, np.uint8)
    mask = np.zeros((600, 800), bool)
    mask[500:506, 700:706] = True  # 6 px in an 800 px image
    picture = final_picture(image, mask)
    assert picture.shape == (600, 800, 3)
    outline = np.all(picture == CONTOUR_RGB, axis=-1)
    assert outline.sum() > 6 * 6 * 4  # the outline alone covers more than the mask: thick and repeated in the inset
    far_corner = picture[:300, :400]  # the inset sits in the corner farthest from the target
    assert np.all(far_corner == INSET_RGB, axis=-1).any() and np.all(far_corner == CONTOUR_RGB, axis=-1).any()
    big = np.zeros((600, 800), bool)
    big[100:400, 100:500] = True
    assert not np.all(final_picture(image, big)[300:, 400:] == INSET_RGB, axis=-1).any()  # a large mask: no inset


# --- trust at the edges (issue 18) --------------------------------------------------------------------------


def test_the_key_goes_only_to_the_command_line_server(session: DemoSession, sample_image: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 1: the page's URL box cannot send the demo's key elsewhere. The command line's server gets it; a typed
    one gets no key of ours; served beyond loopback, the page cannot name another server at all."""
    monkeypatch.setenv("OPENAI_API_KEY", "canary-key-8d1f")
    script = scripted_turns([SUBMIT_REPLY])
    with OpenAIServer(script=script) as own, OpenAIServer(script=script) as typed:
        options = {"base_url": own.base_url, "api_key_env": "OPENAI_API_KEY"}  # as server_options(args) gives them
        backends = Backends(AgentSpec(episode=EpisodeConfig(max_turns=2)), options)
        for server in (own, typed):
            choice = BackendChoice(kind="openai", url=server.base_url, model="m")
            screens = _run(session, sample_image, "the red block", choice, backends, tmp_path)
            assert "Done in 1 turns" in screens[-1].status
        assert own.authorizations and set(own.authorizations) == {"Bearer canary-key-8d1f"}
        assert typed.authorizations and set(typed.authorizations) == {None}
        exposed = Backends(AgentSpec(episode=EpisodeConfig(max_turns=2)), options, any_server=False)
        choice = BackendChoice(kind="openai", url=typed.base_url, model="m")
        (screen,) = _run(session, sample_image, "the red block", choice, exposed, tmp_path)
        assert screen.status.startswith(f"This demo talks only to the server it was started with, {own.base_url}")
        assert len(typed.authorizations) == 3  # the preflight's two and the episode's one, from before


def test_serving_beyond_loopback_warns_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from segloop.cli.demo import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("my-host.lan")
    launched: list[dict] = []

    class App:  # the Gradio app, not served
        def queue(self, **_):
            return self

        def launch(self, **options):
            launched.append(options)

    monkeypatch.setattr("segloop.demos.app.build_app", lambda backends, out: App())
    monkeypatch.setenv("OPENAI_API_KEY", "canary-key-8d1f")
    for host in ("127.0.0.1", "0.0.0.0"):
        assert main(_args("--host", host, "--policy", "random", "--out", str(tmp_path))) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [o["server_name"] for o in launched] == ["127.0.0.1", "0.0.0.0"]
    assert len(err) == 1 and err[0].startswith("segloop demo: WARNING: serving on 0.0.0.0:7860, beyond this machine, "
                                               "with no login: anyone who can reach it can run the agent, with this "
                                               "demo's API key to http://localhost:8000/v1,")


def test_a_server_that_drops_pictures_is_refused_before_any_episode(session: DemoSession, sample_image: str,
                                                                    tmp_path: Path) -> None:
    """Item 4 in the demo: the preflight refuses the server in the status line; no episode is started."""
    with OpenAIServer(script=scripted_turns([SUBMIT_REPLY]), drop_images=True) as server:
        backends = Backends(AgentSpec(episode=EpisodeConfig(max_turns=2)))
        choice = BackendChoice(kind="openai", url=server.base_url, model="m")
        screens = _run(session, sample_image, "the red block", choice, backends, tmp_path)
        assert len(server.requests) == 2
    assert screens[-1].status.startswith(f"The server at {server.base_url} failed: {server.base_url} drops pictures")
    assert not list(tmp_path.glob("demo-*"))


def _trajectory(**fields):
    from segloop.agent.records import Trajectory

    base = {"episode_id": "e", "thread_id": "t", "query": "the zebra", "image_size": (100, 80), "policy": "compact",
            "frame": "pixels", "max_side": 224, "max_turns": 4, "final_mask_rle": {"size": [80, 100], "counts": ""}}
    return Trajectory(**{**base, **fields})


def test_the_result_line_says_when_the_answer_is_a_guess_or_was_refused() -> None:
    """Item 11: an answer to a request with words the agent does not know is a guess, and says so."""
    from segloop.demos.chat import outcome_text

    turns = [{"turn": 0, "raw_text": SUBMIT_REPLY, "observation": "ok", "view_box": (0, 0, 100, 80), "policy_s": 0,
              "tool_s": 0}]
    guess = outcome_text(_trajectory(turns=turns, submitted=True, final_area_share=0.1, unknown_words=["zebra"]),
                         BackendChoice())
    assert guess == "Done in 1 turns: mask submitted (10.00% of the image). This is a GUESS: the agent does not know " \
                    "'zebra'."
    plain = outcome_text(_trajectory(turns=turns, submitted=True, final_area_share=0.1), BackendChoice())
    assert "GUESS" not in plain
    refused = outcome_text(_trajectory(refused=True, unknown_words=["zebra"]), BackendChoice())
    assert refused.startswith("REFUSED: the agent cannot read 'zebra'")


def test_the_unknown_words_note_gives_a_command_that_works() -> None:
    """Item 11: the note's command is a demo command line (not "start the demo with segloop run ..."), and it parses
    into a demo with a vision-language model on a server."""
    import re
    import shlex

    from segloop.cli import build_parser
    from segloop.cli.agent_options import agent_spec
    from segloop.policies.registry import unknown_words_note

    note = unknown_words_note("compact", ["zebra"], "demo")
    command = re.search(r": (segloop demo [^(]+) \(", note).group(1)
    argv = shlex.split(command)[1:]
    spec = agent_spec(build_parser(argv).parse_args(argv), ground_truth=False)
    assert spec.policy == "openai" and spec.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert spec.policy_options["base_url"] == "http://localhost:8000/v1"
    assert "segloop run" not in note


def test_stop_is_not_painted_as_an_alarm(tmp_path: Path) -> None:
    app = build_app(Backends(AgentSpec()), tmp_path / "out", tmp_path / "work")
    (stop,) = [block for block in app.blocks.values() if getattr(block, "elem_id", None) == "stop"]
    assert stop.variant == "secondary"


def test_the_page_names_the_agent_the_demo_was_started_with() -> None:
    from segloop.demos.app import command_line_label
    from segloop.policies.assembly import AgentSpec

    assert command_line_label(AgentSpec()) == "offline agent (bundled)"
    served = command_line_label(AgentSpec(policy="openai", model="Qwen/Qwen2.5-VL-7B-Instruct"))
    assert "bundled" not in served and "openai" in served and "Qwen2.5-VL-7B-Instruct" in served
