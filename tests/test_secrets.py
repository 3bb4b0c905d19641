"""No secret leaves the process (issue 18 item 2 and the canary check): the API key, credentials in ``--base-url``
(userinfo, a secret-looking query parameter) and a server's echo of its request headers are redacted from every
file ``run``, ``batch`` and the demo write and every line they print."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from support.openai_server import Fault, OpenAIServer, scripted_turns

from segloop.agent.actions import Segment, Submit
from segloop.agent.parser import format_call
from segloop.cli import main as cli
from segloop.tools.images import save_image
from segloop.tools.redaction import (
    MASK,
    RedactingStream,
    redact,
    redact_value,
    register_secret,
    register_url_secrets,
)

SCRIPT = scripted_turns([format_call(Segment(bbox_2d=[20, 20, 120, 100])), format_call(Submit())])


def test_redaction_masks_registered_secrets_userinfo_query_secrets_and_bearer_tokens() -> None:
    key = f"sk-{uuid.uuid4().hex}"
    register_secret(key)
    register_secret("ab")  # too short to mask without destroying text
    assert redact(f"error: {key} was refused") == f"error: {MASK} was refused"
    assert redact(json.dumps({"headers": f'{{"Authorization": "Bearer {key}"}}'})).count(key) == 0
    assert redact("http://alice:s3cret@host:8000/v1") == f"http://{MASK}@host:8000/v1"
    assert redact("http://h/v1?api-key=K1&api-version=2024&token=T2#x") == f"http://h/v1?api-key={MASK}&api-version=2024&token={MASK}#x"
    assert redact("{'authorization': 'Basic YWxpY2U6czNjcmV0'}") == f"{{'authorization': 'Basic {MASK}'}}"
    escaped = html.escape("{'Authorization': 'Basic YWxpY2U6czNjcmV0'}")  # as report.html holds it
    assert "YWxpY2U6czNjcmV0" not in redact(escaped) and redact(escaped).startswith("{&#x27;Authorization&#x27;")
    assert redact("Bearer eyJhbGciOi.J9") == f"Bearer {MASK}"
    # Prose is left alone: "ab" was not registered, and neither a flag bearer nor a basic shape is a token.
    assert redact("the flag bearer stands by a basic shape; ab") == "the flag bearer stands by a basic shape; ab"
    assert redact_value({"url": "http://a:b@h/v1", "n": [1, key]}) == {"url": f"http://{MASK}@h/v1", "n": [1, MASK]}
    # A URL's secrets are masked wherever they are echoed, not only inside the URL.
    register_url_secrets(f"http://bob:pw-{key}@h/v1?api-key=q-{key}&api-version=2024")
    basic = base64.b64encode(f"bob:pw-{key}".encode()).decode()
    assert redact(f'{{"password": "pw-{key}", "key": "q-{key}", "header": "{basic}", "v": "2024"}}') == \
        f'{{"password": "{MASK}", "key": "{MASK}", "header": "{MASK}", "v": "2024"}}'

    class Sink:
        text = ""

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

    sink = Sink()
    print(f"key={key}", file=RedactingStream(sink))
    assert sink.text == f"key={MASK}\n"


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Canary secrets: the API key in the environment, a user and password and a query key for the base URL."""
    tag = uuid.uuid4().hex[:10]
    secrets = {"key": f"canary-key-{tag}", "user": f"canary-user-{tag}", "password": f"canary-pw-{tag}",
               "query": f"canary-query-{tag}"}
    secrets["basic"] = base64.b64encode(f"{secrets['user']}:{secrets['password']}".encode()).decode()
    monkeypatch.setenv("OPENAI_API_KEY", secrets["key"])
    return secrets


def _url(server: OpenAIServer, secrets: dict[str, str], userinfo: bool) -> str:
    """The server's URL with the canary query key, and the canary user and password when ``userinfo``."""
    url = server.base_url + f"?api-key={secrets['query']}"
    return url.replace("http://", f"http://{secrets['user']}:{secrets['password']}@") if userinfo else url


def _leaks(secrets: dict[str, str], texts: list[str], folder: Path) -> list[str]:
    """Where a canary shows up: in the texts given, or in any file under ``folder``."""
    found = [f"text {i}: {name}" for i, text in enumerate(texts) for name, value in secrets.items() if value in text]
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {name}" for name, value in secrets.items() if value.encode() in data]
    return found


# Per request: the preflight's two answer; the first episode's first turn is refused with the request's headers
# (its observation quotes them), its second answers; the next episode ends at once on a 404 quoting them.
FAULTS = [Fault(), Fault(), Fault(status=400, echo_headers=True, body="bad request"), Fault(),
          Fault(status=404, echo_headers=True, body="no such model")]


@pytest.mark.parametrize("userinfo", [False, True])
def test_run_and_batch_leak_no_canary(canary: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture,
                                      userinfo: bool) -> None:
    """The canary check for ``run`` and ``batch``: key sent as a bearer token (or userinfo sent as basic
    authentication), echoed back by the server in a refusal the model is shown and in an error that ends an
    episode; none of it in any file or console line."""
    image = np.full((120, 160, 3), 80, np.uint8)
    image[30:90, 40:120] = (200, 40, 40)
    save_image(image, tmp_path / "data" / "a.png")
    save_image(image[::-1], tmp_path / "data" / "b.png")
    manifest = tmp_path / "data" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": i, "image": f"{i}.png", "query": "the red block", "mask": None})
                                + "\n" for i in ("a", "b")))
    out = tmp_path / "out"
    with OpenAIServer(script=SCRIPT, faults=FAULTS) as server:
        url = _url(server, canary, userinfo)
        assert cli(["batch", "--data", str(manifest), "--policy", "openai", "--model", "m", "--base-url", url,
                    "--out", str(out / "batch"), "--concurrency", "1"]) == 1
        echoed = server.authorizations[2]
    assert (canary["basic"] if userinfo else canary["key"]) in echoed  # the server did see (and echo) them
    records = (out / "batch" / "trajectories.jsonl").read_text()
    # The echo reached the records (the refusal the model was shown, the reason the episode failed), masked.
    masked = f"request headers: {{'Authorization': '{'Basic' if userinfo else 'Bearer'} {MASK}'"
    assert f"bad request; {masked}" in records and f"no such model; {masked}" in records
    with OpenAIServer(script=SCRIPT, faults=FAULTS[:4]) as server:
        assert cli(["run", str(tmp_path / "data" / "a.png"), "the red block", "--policy", "openai", "--model", "m",
                    "--base-url", _url(server, canary, userinfo), "--out", str(out / "run"), "--verbose"]) in (0, 3)
    assert f"bad request; {masked}" in (out / "run" / "trajectory.json").read_text()
    printed = capsys.readouterr()
    assert "request headers" in printed.out + printed.err  # run --verbose prints the observation quoting them
    assert _leaks(canary, [printed.out, printed.err], out) == []


def test_the_demo_leaks_no_canary(canary: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The canary check for the demo: its command line's server gets the key (and the URL's credentials) and echoes
    them; not in the page (chat, status), the saved episodes, or the console."""
    from segloop.cli.agent_options import agent_spec, server_options
    from segloop.cli.demo import add_arguments
    from segloop.demos.backends import BackendChoice, Backends
    from segloop.demos.chat import respond
    from segloop.demos.session import DemoSession

    image = np.full((120, 160, 3), 80, np.uint8)
    image[30:90, 40:120] = (200, 40, 40)
    path = str(save_image(image, tmp_path / "a.png"))
    shown: list[str] = []
    with OpenAIServer(script=SCRIPT, faults=FAULTS) as server:
        import argparse

        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args(["--base-url", _url(server, canary, True), "--max-turns", "3"])
        backends = Backends(agent_spec(args, ground_truth=False), server_options(args))
        session = DemoSession.new(tmp_path / "work")
        choice = BackendChoice(kind="openai", url=backends.server_url, model="m")

        async def ask() -> None:
            for query in ("the red block", "the red block again"):
                async for screen in respond(session, path, query, choice, backends, tmp_path / "episodes"):
                    shown.append(screen.status)
                    shown.append(json.dumps(screen.chat))

        asyncio.run(ask())
        assert canary["basic"] in server.authorizations[2]
    assert any(f"'Authorization': 'Basic {MASK}'" in text for text in shown)  # the echo reached the page, masked
    printed = capsys.readouterr()
    assert _leaks(canary, [*shown, printed.out, printed.err], tmp_path / "episodes") == []
