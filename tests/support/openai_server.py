"""A local HTTP server speaking the OpenAI chat-completions wire protocol, for testing the real client code.

It stands in for a server in two roles: faults (hangs, trickled bodies, 5xx storms with ``Retry-After``,
malformed answers, a proxy's 413, a server that fails on ``stop``), and the response shapes of vLLM, which
cannot run here. ``POST /v1/chat/completions`` answers as vLLM's OpenAI server does (non-streaming)::

    {"id": "chatcmpl-...", "object": "chat.completion", "created", "model",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": ..., ["tool_calls": [...]],
                  ["reasoning": ...]}, "finish_reason": "stop" | "length" | "tool_calls"}],
     "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}

- ``stop`` is applied first: the text is cut before the stop string, which is dropped (``finish_reason``
  "stop"), as vLLM does.
- ``reasoning_parser="reasoning"`` (vLLM's ``--reasoning-parser``; older vLLM named the field
  ``reasoning_content``, give that name to get it): the text up to ``</think>`` goes into that field, the
  rest stays ``content``.
- ``tool_parser=True`` (vLLM's ``--enable-auto-tool-choice --tool-call-parser hermes``): a request with ``tools``
  and ``tool_choice`` "auto" (or none given) has each ``<tool_call>{...}</tool_call>`` (or one left open by the
  stop string) moved into ``message.tool_calls`` (``{"id": "chatcmpl-tool-<hex>", "type": "function",
  "function": {"name", "arguments": <JSON string>}}``), ``content`` keeps the text before the first call or
  is null, and ``finish_reason`` is "tool_calls". Without ``tools`` (or with ``tool_choice`` "none") the text
  is left alone, as vLLM's parser is not run then.
- Without a tool parser, ``tools`` with ``tool_choice`` "auto" (the default once tools are given) is refused
  with vLLM's 400; ``tool_choice`` "required" is answered with the call as ``tool_calls`` (vLLM >= 0.8.3
  decodes it as guided JSON, with no thought).
- A ``tool`` message must answer an earlier assistant ``tool_calls`` id (400 otherwise, as OpenAI says).
- Errors are ``{"error": {"message", "type", "param", "code"}}``, vLLM's and OpenAI's shape.

What it answers with: ``script``, a function of the request body (``scripted_turns`` answers turn k of a
conversation, counted by its assistant messages, with the k-th text; ``ScriptSlot`` answers with whatever a
driver put there last); or ``model_dir``, a transformers checkpoint (the tiny model) that generates from the
messages through its own chat template (images decoded from their data URLs, structured ``tool_calls`` and
``tools`` rendered by the template), as ``transformers serve`` and vLLM do.

Faults: ``faults`` is a queue, one ``Fault`` taken per request (hang, trickle, status with ``Retry-After``,
malformed 200); ``storm_s`` answers 503 with ``Retry-After: 1`` to every request for that many seconds after
start; ``reject_stop`` answers any request carrying ``stop`` with a bare 500 (``transformers serve`` with a
vision model does); ``reject_special_tokens`` answers 500 when any text holds a ``<|...|>`` string (a
template turning echoed ``<|image_pad|>`` into a real image token fails so); ``max_body_bytes`` answers larger
requests with a proxy's 413 page; ``fail_first`` fails that many requests with ``fail_status`` (an outage a test
ends by setting it to 0); ``drop_images`` serves the model as text only (pictures are dropped before the prompt
is counted and answered, as stock ``transformers serve`` does with a checkpoint whose processor resolves to a bare
tokenizer); a ``Fault`` with ``echo_headers`` puts the request's headers into its error message (as some proxies
and debugging servers do: the API key with them). It can also wait ``latency_s`` before every answer (requests
are served in parallel threads, as a batching server overlaps them) and require an API key. Every request body is
kept in ``requests``, its size in ``request_sizes``, its ``Authorization`` header (or None) in
``authorizations``. Token counts (``usage``) are rough, a quarter of the request's
bytes, and left out when ``count_tokens`` is False (as some servers do).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Script = Callable[[dict[str, Any]], str]

_CALL = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)
_SPECIAL = re.compile(r"<\|[A-Za-z0-9_.:-]{1,48}\|>")
PROXY_413 = ("<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 "
             "Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


def scripted_turns(texts: Sequence[str]) -> Script:
    """Answer the k-th turn of any conversation with ``texts[k]`` (the last text once they run out)."""
    def answer(body: dict[str, Any]) -> str:
        turn = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        return texts[min(turn, len(texts) - 1)]
    return answer


class ScriptSlot:
    """A script whose answer a driver sets before each request (one request in flight at a time): a policy
    in the test process decides the turn, the server sends it over the wire."""

    def __init__(self) -> None:
        self.text = ""

    def __call__(self, body: dict[str, Any]) -> str:
        return self.text


@dataclass
class Fault:
    """One injected misbehaviour, used for one request: ``hang_s`` (accept, then answer nothing for that
    long), ``trickle_s`` (a valid answer whose body comes one byte per ``trickle_s``), ``status`` (with
    ``retry_after`` as the header's value and ``body`` as the error message, followed by the request's headers
    with ``echo_headers``), ``malformed`` (200 with a body that is not a chat completion), ``reset`` (the
    request is read, then the connection closed without an answer: a reset after connecting)."""

    hang_s: float = 0.0
    trickle_s: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    body: str = "injected failure"
    malformed: bool = False
    echo_headers: bool = False
    reset: bool = False


class _Generator:
    """The checkpoint behind the server: OpenAI messages -> chat template -> generate -> text."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        from segloop.policies.processors import load_processor

        self.processor = load_processor(str(model_dir))
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> tuple[str, str]:
        import torch
        from PIL import Image

        from segloop.tools.encoding import decode_data_url

        messages, images = [], []
        for message in body["messages"]:
            content = message.get("content") or ""
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image_url":
                        images.append(Image.fromarray(decode_data_url(part["image_url"]["url"])))
                        parts.append({"type": "image"})
                    else:
                        parts.append({"type": "text", "text": part.get("text", "")})
                content = parts
            rendered: dict[str, Any] = {"role": message["role"], "content": content}
            if message.get("tool_calls"):
                rendered["tool_calls"] = [{"type": "function", "function": {
                    "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
                    for c in message["tool_calls"]]
            messages.append(rendered)
        text = self.processor.apply_chat_template(messages, tools=body.get("tools"), tokenize=False,
                                                  add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt", add_special_tokens=False)
        greedy = float(body.get("temperature", 1.0)) == 0.0
        sampling = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": float(body.get("temperature", 1.0)),
            "top_p": float(body.get("top_p", 1.0)), "top_k": 0}
        limit = int(body.get("max_tokens", 64))
        with self.lock, torch.no_grad():
            if body.get("seed") is not None:
                torch.manual_seed(int(body["seed"]))
            out = self.model.generate(**inputs, **sampling, max_new_tokens=limit,
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        eos = self.model.generation_config.eos_token_id
        ended = bool(new) and new[-1] in (eos if isinstance(eos, list) else [eos])
        finish = "length" if len(new) >= limit and not ended else "stop"
        return self.processor.tokenizer.decode(new, skip_special_tokens=True), finish


def _error(message: str, status: int) -> dict[str, Any]:
    kind = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}.get(status, "InternalServerError")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def without_images(body: dict[str, Any]) -> dict[str, Any]:
    """The request as a text-only server sees it: every image part dropped."""
    messages = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": [p for p in content
                                              if not (isinstance(p, dict) and p.get("type") == "image_url")]}
        messages.append(message)
    return {**body, "messages": messages}


def _texts(body: dict[str, Any]) -> list[str]:
    out = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return out


def _tool_call_problem(body: dict[str, Any]) -> str | None:
    """OpenAI's rule: a tool message answers an earlier assistant's tool_calls id."""
    ids: set[str] = set()
    for message in body.get("messages", []):
        for call in message.get("tool_calls") or []:
            ids.add(call.get("id"))
        if message.get("role") == "tool" and message.get("tool_call_id") not in ids:
            return ("Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                    "'tool_calls'.")
    return None


def hermes_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """vLLM's hermes parser on a whole answer: (content before the first call or None, tool_calls)."""
    if "<tool_call>" not in text:
        return text, []
    calls = []
    for closed, open_ in _CALL.findall(text):
        try:
            payload = json.loads(closed or open_)
        except ValueError:
            return text, []  # vLLM's parser gives up: the text stays content
        calls.append({"id": f"chatcmpl-tool-{uuid.uuid4().hex[:16]}", "type": "function",
                      "function": {"name": payload["name"],
                                   "arguments": json.dumps(payload.get("arguments", {}), ensure_ascii=False)}})
    content = text[: text.find("<tool_call>")]
    return content or None, calls


class OpenAIServer:
    """``with OpenAIServer(script=...) as server:`` serves on ``server.base_url`` until the block ends."""

    def __init__(self, *, script: Script | None = None, model_dir: Path | None = None, latency_s: float = 0.0,
                 fail_first: int = 0, fail_status: int = 500, api_key: str | None = None,
                 model_name: str = "tiny", tool_parser: bool = False, reasoning_parser: str | None = None,
                 faults: Sequence[Fault] = (), storm_s: float = 0.0, reject_stop: bool = False,
                 reject_special_tokens: bool = False, max_body_bytes: int | None = None,
                 drop_images: bool = False, count_tokens: bool = True) -> None:
        if (script is None) == (model_dir is None):
            raise ValueError("give exactly one of script and model_dir")
        if reasoning_parser not in (None, "reasoning", "reasoning_content"):
            raise ValueError("reasoning_parser names the field: reasoning or reasoning_content")
        self.answer: Callable[[dict[str, Any]], tuple[str, str]] = (
            (lambda body: (script(body), "stop")) if script is not None else _Generator(model_dir))
        self.latency_s = latency_s
        # The first ``fail_first`` requests fail with ``fail_status`` (a test may set ``fail_first`` to 0 to end an
        # outage), then ``faults`` are used one per request.
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.failures = 0
        self.faults = list(faults)
        self.api_key = api_key
        self.model_name = model_name
        self.tool_parser = tool_parser
        self.reasoning_parser = reasoning_parser
        self.storm_s = storm_s
        self.reject_stop = reject_stop
        self.reject_special_tokens = reject_special_tokens
        self.max_body_bytes = max_body_bytes
        self.drop_images = drop_images
        self.count_tokens = count_tokens
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.request_sizes: list[int] = []
        self.statuses: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections: set[tuple[str, int]] = set()  # client (host, port) pairs: one per TCP connection
        self._count_lock = threading.Lock()
        self._closing = threading.Event()
        self._started = 0.0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> OpenAIServer:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()  # hung handlers return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _take_fault(self) -> Fault | None:
        with self._count_lock:
            if self.failures < self.fail_first:
                self.failures += 1
                return Fault(status=self.fail_status)
            return self.faults.pop(0) if self.faults else None

    def _message(self, body: dict[str, Any], text: str, finish: str) -> tuple[dict[str, Any], str]:
        """The assistant message vLLM builds from the generated ``text``."""
        for stop in body.get("stop") or []:
            at = text.find(stop)
            if at >= 0:
                text, finish = text[:at], "stop"
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.reasoning_parser and "</think>" in text:
            thought, _, rest = text.partition("</think>")
            message[self.reasoning_parser] = thought.removeprefix("<think>").strip()
            message["content"] = rest.lstrip("\n") or None
        tools, choice = body.get("tools"), body.get("tool_choice", "auto" if body.get("tools") else "none")
        if tools and choice == "required":
            _, calls = hermes_calls(message["content"] or "")
            message.update(content=None, tool_calls=calls[:1])
            message.pop(self.reasoning_parser or "", None)
            finish = "tool_calls"
        elif tools and choice == "auto" and self.tool_parser:
            content, calls = hermes_calls(message["content"] or "")
            if calls:
                message.update(content=content, tool_calls=calls)
                finish = "tool_calls"
        return message, finish

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: the client reuses connections
            # Headers and body go out as two writes; with Nagle's algorithm the body waits for the client's
            # delayed ACK (40 ms on Linux) on every answer.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def _send_bytes(self, status: int, data: bytes, content_type: str = "application/json",
                            headers: dict[str, str] | None = None, trickle_s: float = 0.0) -> None:
                with server._count_lock:
                    server.statuses.append(status)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if not trickle_s:
                    self.wfile.write(data)
                    return
                for i in range(len(data)):
                    if server._closing.wait(trickle_s):
                        return
                    try:
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                    except OSError:  # the client gave up (its deadline): nothing more to send
                        return

            def _send(self, status: int, payload: dict[str, Any], **kwargs: Any) -> None:
                self._send_bytes(status, json.dumps(payload).encode(), **kwargs)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path.split("?")[0] != "/v1/chat/completions":  # a query (?api-version=...) is no route
                    self._send(404, _error(f"no route {self.path}", 404))
                    return
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, _error("invalid API key", 401))
                    return
                if server.max_body_bytes is not None and length > server.max_body_bytes:
                    self._send_bytes(413, PROXY_413.encode(), content_type="text/html")
                    return
                try:
                    body = json.loads(raw)
                    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                        raise ValueError("messages must be a list")
                except ValueError as exc:
                    self._send(400, _error(f"bad request: {exc}", 400))
                    return
                with server._count_lock:
                    server.requests.append(body)
                    server.authorizations.append(self.headers.get("Authorization"))
                    server.request_sizes.append(length)
                    server.connections.add(self.client_address[:2])
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                size = len(raw)
                if server.drop_images:
                    body = without_images(body)
                    size = len(json.dumps(body))
                try:
                    self._answer(body, size)
                finally:
                    with server._count_lock:
                        server.in_flight -= 1

            def _answer(self, body: dict[str, Any], prompt_chars: int) -> None:
                if server.latency_s:
                    time.sleep(server.latency_s)
                if server.storm_s and time.monotonic() - server._started < server.storm_s:
                    self._send(503, _error("server overloaded", 503), headers={"Retry-After": "1"})
                    return
                fault = server._take_fault()
                if fault is not None and fault.hang_s:
                    server._closing.wait(fault.hang_s)
                    return  # the connection is dropped without an answer
                if fault is not None and fault.reset:
                    self.close_connection = True
                    return
                if fault is not None and fault.status is not None:
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
                    message = fault.body
                    if fault.echo_headers:  # the credentials first, as an authenticating proxy's error page has them
                        echoed = sorted(self.headers.items(), key=lambda item: item[0].lower() != "authorization")
                        message += f"; request headers: {dict(echoed)}"
                    self._send(fault.status, _error(message, fault.status), headers=headers)
                    return
                if fault is not None and fault.malformed:
                    self._send_bytes(200, b'{"object": "error", "message": "upstream')
                    return
                if server.reject_stop and body.get("stop"):
                    self._send_bytes(500, b"Internal Server Error", content_type="text/plain; charset=utf-8")
                    return
                if server.reject_special_tokens and any(_SPECIAL.search(t) for t in _texts(body)):
                    self._send_bytes(500, b"Internal Server Error", content_type="text/plain; charset=utf-8")
                    return
                tools = body.get("tools")
                choice = body.get("tool_choice", "auto" if tools else "none")
                if tools and choice == "auto" and not server.tool_parser:
                    self._send(400, _error('"auto" tool choice requires --enable-auto-tool-choice and '
                                           "--tool-call-parser to be set", 400))
                    return
                if (problem := _tool_call_problem(body)) is not None:
                    self._send(400, _error(problem, 400))
                    return
                try:
                    text, finish = server.answer(body)
                except Exception as exc:  # a server answers 500 with a reason, it does not drop the connection
                    self._send(500, _error(f"{type(exc).__name__}: {exc}", 500))
                    return
                message, finish = server._message(body, text, finish)
                # A rough token count from the request's size (re-serialising its images per answer cost more
                # CPU than the rest of the server, on the machine the client benchmarks run on).
                payload: dict[str, Any] = {
                    "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", server.model_name),
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                                 "stop_reason": None}],
                }
                if server.count_tokens:
                    payload["usage"] = {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(text) // 4 + 1,
                                        "total_tokens": prompt_chars // 4 + len(text) // 4 + 1}
                self._send(200, payload, trickle_s=fault.trickle_s if fault is not None else 0.0)

        return Handler


def main() -> None:
    """Serve from its own process (as vLLM would): prints the base URL, then serves until killed."""
    import argparse

    parser = argparse.ArgumentParser(description="a local OpenAI chat-completions server for tests and benchmarks")
    parser.add_argument("--script", help="JSON list of turn texts (scripted mode)")
    parser.add_argument("--model-dir", type=Path, help="a transformers checkpoint that generates the answers")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before every answer")
    parser.add_argument("--hang", action="store_true", help="never answer (a hung server)")
    parser.add_argument("--trickle", type=float, default=0.0, help="send every answer one byte per this many seconds")
    parser.add_argument("--storm", type=float, default=0.0, help="answer 503 (Retry-After: 1) for this many seconds")
    parser.add_argument("--tool-parser", action="store_true", help="as vLLM --enable-auto-tool-choice "
                                                                   "--tool-call-parser hermes")
    parser.add_argument("--reasoning-parser", choices=("reasoning", "reasoning_content"), default=None,
                        help="as vLLM --reasoning-parser, answering in this field")
    args = parser.parse_args()
    script = scripted_turns(json.loads(args.script)) if args.script else None
    faults = [Fault(hang_s=3600.0)] * 100000 if args.hang else []
    faults += [Fault(trickle_s=args.trickle)] * 100000 if args.trickle else []
    with OpenAIServer(script=script, model_dir=args.model_dir, latency_s=args.latency, faults=faults,
                      storm_s=args.storm, tool_parser=args.tool_parser,
                      reasoning_parser=args.reasoning_parser) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
