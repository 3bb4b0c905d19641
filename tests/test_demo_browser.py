"""The demo driven in a real headless Chromium: ``segloop demo`` runs as its own process on a free port,
and Playwright uploads a sample, sends a request, waits for the final overlay and checks what the page
shows against the episode the server saved (trajectory.json, downloads).

Chromium is Debian's (/usr/bin/chromium, installed by ``scripts/setup.sh --dev``); the tests never run
``playwright install``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.openai_server import OpenAIServer, scripted_turns

from segloop.demos.bundled import bundled_samples
from segloop.tools.masks import rle_decode

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]
MAX_TURNS = 4
TURN_HEADING = re.compile(r"Turn (\d+) · ([a-z_ ]+)")
# Where the screenshot for the README goes when SEGLOOP_UPDATE_SCREENSHOT=1.
README_SCREENSHOT = ROOT / "docs" / "demo.png"
# Where the tests leave their screenshots when set (the test's temporary folder otherwise).
SCREENSHOT_DIR = os.environ.get("SEGLOOP_SCREENSHOT_DIR")
SEGMENT_FOREVER = '<tool_call>{"name": "segment", "arguments": {"bbox_2d": [100, 100, 300, 300]}}</tool_call>'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(bash scripts/setup.sh --dev installs it)"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``segloop demo`` in a subprocess: (its URL, the folder it saves episodes in)."""
    with _serve_demo(tmp_path_factory, []) as (url, out, _log):
        yield url, out


@contextlib.contextmanager
def _serve_demo(tmp_path_factory: pytest.TempPathFactory, arguments: list[str],
                env: dict[str, str] | None = None) -> Iterator[tuple[str, Path, Path]]:
    """``segloop demo ARGUMENTS`` in a subprocess: (its URL, the folder it saves episodes in, its console log)."""
    out = tmp_path_factory.mktemp("episodes")
    port = _free_port()
    log = (tmp_path_factory.mktemp("log") / "demo.log").open("w")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1",
           "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio")), **(env or {})}
    command = [sys.executable, "-m", "segloop", "demo", "--port", str(port), "--out", str(out),
               "--segmenter", "grabcut", "--max-turns", str(MAX_TURNS), *arguments]
    proc = subprocess.Popen(
        command,
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"segloop demo exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"segloop demo did not start in 90 s: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, out, Path(log.name)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


def _open(browser: object, url: str):
    """A fresh browser context (its own cookies and storage: a separate person) on the demo."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#turns", timeout=30_000)
    return context, page


def _ask(page, image: Path, query: str) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(image))
    # The uploaded image is shown before the request goes out, so the server has the file.
    page.locator("#input-image img").first.wait_for(timeout=20_000)
    page.locator("#query textarea").fill(query)
    page.locator("#send").click()


def _wait_done(page, timeout_ms: int = 90_000) -> str:
    """Waits until the status line reports the saved episode (and, for a mask, its final overlay); returns the
    status text."""
    page.wait_for_function(
        "() => (document.querySelector('#status')?.innerText || '').includes('Saved to')", timeout=timeout_ms)
    status = page.locator("#status").inner_text()
    if "EMPTY" not in status and "no such object" not in status:
        page.locator("#final-overlay img").first.wait_for(timeout=20_000)
    return status


def _episode_dir(status: str) -> Path:
    match = re.search(r"Saved to (\S+?)\.?$", status.strip())
    assert match, status
    return Path(match.group(1))


def _shown_turns(page) -> list[tuple[int, str]]:
    text = page.locator("#turns").inner_text()
    return [(int(n), tool.strip()) for n, tool in TURN_HEADING.findall(text)]


def _tool_of(turn: dict) -> str:
    action = turn.get("action")
    return action["name"] if action else "invalid call"


def _check_against_trajectory(page, episode_dir: Path, first_turn: int = 1) -> dict:
    """The turns shown (from ``first_turn`` on) are the saved trajectory's turns, tool for tool, and the
    downloads hold the saved final mask."""
    trajectory = json.loads((episode_dir / "trajectory.json").read_text())
    shown = [t for t in _shown_turns(page)]
    # A follow-up's turns come after the earlier episodes' in the same chat: compare the last ones.
    shown = shown[len(shown) - len(trajectory["turns"]):]
    expected = [(i + 1, _tool_of(turn)) for i, turn in enumerate(trajectory["turns"])]
    assert shown == expected
    assert 1 <= len(expected) <= MAX_TURNS
    final = rle_decode(trajectory["final_mask_rle"])
    links = page.locator("#downloads a")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    if not final.any() or trajectory.get("failure"):  # an EMPTY or failed answer offers nothing to download
        assert hrefs == [] and page.locator("#final-overlay img").count() == 0
        return trajectory
    rle_href = next(h for h in hrefs if h and "mask_rle.json" in h)
    downloaded = page.request.get(rle_href).json()
    assert (rle_decode(downloaded) == final).all()
    return trajectory


def test_one_request_streams_turns_that_match_the_saved_trajectory(browser, demo, tmp_path: Path) -> None:
    url, out = demo
    image, query = bundled_samples()[0]
    context, page = _open(browser, url)
    try:
        _ask(page, image, query)
        status = _wait_done(page)
        episode_dir = _episode_dir(status)
        assert episode_dir.parent == out.resolve()
        trajectory = _check_against_trajectory(page, episode_dir)
        # Every turn with an observation image shows it: the input thumbnail plus one per such turn.
        with_images = sum(1 for turn in trajectory["turns"] if turn.get("observation_image"))
        assert page.locator("#turns img").count() >= with_images + 1
        assert query in page.locator("#turns").inner_text()
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        if os.environ.get("SEGLOOP_UPDATE_SCREENSHOT") == "1":
            shutil.copy(tmp_path / "demo.png", README_SCREENSHOT)
    finally:
        context.close()


def test_two_sessions_at_once_keep_their_own_state(browser, demo) -> None:
    url, _out = demo
    (image_a, query_a), (image_b, query_b) = bundled_samples()[1:3]
    context_a, page_a = _open(browser, url)
    context_b, page_b = _open(browser, url)
    try:
        _ask(page_a, image_a, query_a)
        _ask(page_b, image_b, query_b)
        dir_a = _episode_dir(_wait_done(page_a))
        dir_b = _episode_dir(_wait_done(page_b))
        assert dir_a != dir_b
        _check_against_trajectory(page_a, dir_a)
        _check_against_trajectory(page_b, dir_b)
        text_a, text_b = page_a.locator("#turns").inner_text(), page_b.locator("#turns").inner_text()
        assert query_a in text_a and query_b not in text_a
        assert query_b in text_b and query_a not in text_b
        traj_a = json.loads((dir_a / "trajectory.json").read_text())
        traj_b = json.loads((dir_b / "trajectory.json").read_text())
        assert traj_a["query"] == query_a and traj_b["query"] == query_b

        # A follow-up in A continues A's conversation and leaves B's page as it was.
        turns_b_before = _shown_turns(page_b)
        page_a.locator("#query textarea").fill(query_a)
        page_a.locator("#send").click()
        page_a.wait_for_function(
            "() => (document.querySelector('#status')?.innerText || '').includes('Saved to')"
            f" && !(document.querySelector('#status')?.innerText || '').includes('{dir_a.name}')",
            timeout=90_000)
        dir_a2 = _episode_dir(page_a.locator("#status").inner_text())
        _check_against_trajectory(page_a, dir_a2)
        assert page_a.locator("#turns").inner_text().count(query_a) == 2
        assert _shown_turns(page_b) == turns_b_before
    finally:
        context_a.close()
        context_b.close()


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    folder = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _status(page) -> str:
    return page.locator("#status").inner_text()


def _chat_follows_the_newest_turn(page) -> bool:
    """Whether every scrolling box of the chat is scrolled to its end (the newest turn in view)."""
    return page.evaluate("""() => {
        const box = document.querySelector('#turns');
        return [box, ...box.querySelectorAll('*')].filter(el => el.scrollHeight > el.clientHeight + 4
            && getComputedStyle(el).overflowY.match(/auto|scroll/))
          .every(el => el.scrollTop + el.clientHeight >= el.scrollHeight - 8);
    }""")


def _clipped_code(page) -> int:
    """How many code blocks in the chat are wider than their box (a tool call cut off at the edge)."""
    return page.evaluate("""() => [...document.querySelectorAll('#turns pre, #turns code')]
        .filter(el => el.scrollWidth > el.clientWidth + 1).length""")


def test_stop_ends_the_episode_within_the_turn_and_leaves_the_page_ready(browser, demo, tmp_path: Path) -> None:
    """Item 8: Stop, clicked in the browser while a slow server is thinking, ends the episode in that turn."""
    url, out = demo
    image, _ = bundled_samples()[0]
    with OpenAIServer(script=scripted_turns([SEGMENT_FOREVER]), latency_s=1.5) as server:
        context, page = _open(browser, url)
        try:
            page.locator("#backend-box").click()  # the accordion
            page.get_by_label("OpenAI-compatible server").check()
            page.locator("#url textarea, #url input").first.fill(server.base_url)
            page.locator("#model textarea, #model input").first.fill("scripted")
            _ask(page, image, "the medium striped circle")
            page.wait_for_function("() => /Turn 1 of at most/.test(document.querySelector('#status')?.innerText)",
                                   timeout=30_000)
            requests_at_stop = len(server.requests)
            page.locator("#stop").click()
            page.wait_for_function("() => /Stopped after \\d+ turn/.test(document.querySelector('#status')?.innerText)",
                                   timeout=10_000)
            status = _status(page)
            n = int(re.search(r"Stopped after (\d+) turn", status).group(1))
            time.sleep(2 * server.latency_s)  # long enough for one more turn, had the episode gone on
            assert _status(page) == status  # the page stays on its final word, not on "Turn k of at most"
            assert len(server.requests) <= requests_at_stop + 1  # the turn in flight at most; none after it
            assert [turn for turn, _ in _shown_turns(page)] == list(range(1, n + 1))  # the turns so far are kept
            assert n < MAX_TURNS
            assert page.locator("#downloads a").count() == 0  # nothing offered as an answer
            saved = re.search(r"saved to (\S+?)\.", status)
            trajectory = json.loads((Path(saved.group(1)) / "trajectory.json").read_text())
            assert trajectory["stopped"] and not trajectory["submitted"] and len(trajectory["turns"]) == n
            shot = _screenshot(page, tmp_path, "demo_after_stop.png")
            # The page is ready: the next request runs (a new conversation) to its end.
            page.get_by_label("offline agent (bundled)").check()
            page.locator("#query textarea").fill(bundled_samples()[0][1])
            page.locator("#send").click()
            status = _wait_done(page)
            assert "Stopped" not in status and _episode_dir(status).parent == out.resolve()
            assert shot.is_file()
        finally:
            context.close()


def test_a_follow_up_looks_again_for_its_own_target(browser, demo, tmp_path: Path) -> None:
    """Item 9: a follow-up on the same image with another target starts from the whole image, segments
    afresh and answers with another mask; item 10: the result is shown and the chat follows it."""
    url, _out = demo
    image, query = bundled_samples()[0]
    follow_up = "the large striped circle"
    context, page = _open(browser, url)
    try:
        _ask(page, image, query)
        first_dir = _episode_dir(_wait_done(page))
        page.locator("#query textarea").fill(follow_up)
        page.locator("#send").click()
        page.wait_for_function(
            "() => (document.querySelector('#status')?.innerText || '').includes('Saved to')"
            f" && !(document.querySelector('#status')?.innerText || '').includes('{first_dir.name}')",
            timeout=90_000)
        second_dir = _episode_dir(_status(page))
        first = json.loads((first_dir / "trajectory.json").read_text())
        second = json.loads((second_dir / "trajectory.json").read_text())
        assert second["query"] == follow_up and second["thread_id"] == first["thread_id"]  # the same conversation
        width, height = second["image_size"]
        assert second["turns"][0]["view_box"] == [0, 0, width, height]  # it looks at the whole image again
        assert second["turns"][0]["action"]["name"] != "submit"  # rather than re-submit the old mask at once
        first_mask, second_mask = rle_decode(first["final_mask_rle"]), rle_decode(second["final_mask_rle"])
        assert (first_mask != second_mask).any()  # another target, another answer
        text = page.locator("#turns").inner_text()
        assert text.index(query) < text.index(follow_up)
        _check_against_trajectory(page, second_dir)
        page.wait_for_timeout(500)
        assert _chat_follows_the_newest_turn(page)
        assert _clipped_code(page) == 0
        _screenshot(page, tmp_path, "demo_follow_up.png")
    finally:
        context.close()


SEGMENT_THEN_SUBMIT = [
    '<tool_call>{"name": "segment", "arguments": {"bbox_2d": [100, 100, 300, 300]}}</tool_call>',
    '<tool_call>{"name": "submit", "arguments": {}}</tool_call>']


@pytest.fixture(scope="module")
def served_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path, dict[str, str]]]:
    """``segloop demo --policy openai`` on the stand-in server, started with canary secrets: the API key in the
    environment and a key in the URL's query. (its URL, its episodes, its console log, the canaries)"""
    canary = {"key": f"canary-key-{os.getpid()}x", "query": f"canary-query-{os.getpid()}x"}
    with OpenAIServer(script=scripted_turns(SEGMENT_THEN_SUBMIT)) as server, \
            _serve_demo(tmp_path_factory, ["--policy", "openai", "--model", "scripted", "--base-url",
                                           f"{server.base_url}?api-key={canary['query']}"],
                        env={"OPENAI_API_KEY": canary["key"]}) as (url, out, log):
        yield url, out, log, canary
        assert set(server.authorizations) == {f"Bearer {canary['key']}"}  # the key went where it was meant to


def test_a_new_image_clears_the_last_answer_and_nothing_leaks(browser, served_demo) -> None:
    """Issue 18 items 11 and 1: Stop is not painted as an alarm while idle; picking another image clears the turns,
    the final mask and the downloads of the previous one. The page, the saved episodes and the demo's console hold
    none of the canary secrets it was started with."""
    url, out, log, canary = served_demo
    (image, query) = bundled_samples()[0]
    context, page = _open(browser, url)
    try:
        stop_classes = (page.locator("#stop").get_attribute("class") or "").split()
        assert "stop" not in stop_classes and "secondary" in stop_classes
        page.locator("#backend-box").click()
        assert canary["query"] not in page.content()  # the URL box shows the command line's server, redacted
        _ask(page, image, query)
        status = _wait_done(page)
        assert "mask submitted" in status and page.locator("#downloads a").count() == 2
        assert page.locator("#final-overlay img").count() == 1 and _shown_turns(page)
        page.locator("#samples tbody tr").nth(1).click()  # another image
        page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('New image')",
                               timeout=20_000)
        assert _shown_turns(page) == [] and page.locator("#turns img").count() == 0
        assert page.locator("#final-overlay img").count() == 0 and page.locator("#downloads a").count() == 0
        shown = page.content()
    finally:
        context.close()
    saved = [path.read_bytes() for path in out.rglob("*") if path.is_file()]
    assert saved and log.read_text()
    for value in canary.values():
        assert value not in shown and value not in log.read_text()
        assert not any(value.encode() in data for data in saved)
