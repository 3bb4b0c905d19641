"""A local HTTP server speaking the OpenAI chat-completions wire protocol, for testing the real client code.

``POST /v1/chat/completions`` answers ``{"id", "object", "created", "model", "choices": [{"index": 0,
"message": {"role": "assistant", "content": ...}, "finish_reason"}], "usage"}``. What it answers with:
- ``script``: a function of the request body (deterministic tests; ``scripted_turns`` answers turn k of a
  conversation, counted by its assistant messages, with the k-th text); or
- ``model_dir``: a transformers checkpoint (the tiny model) that really generates from the messages, images
  decoded from their data URLs, through the checkpoint's own chat template.

It honours ``stop`` as servers do (the text is cut before the stop string, ``finish_reason`` "stop"), can
wait ``latency_s`` before every answer (requests are served in parallel threads, as a batching server
overlaps them), fail the first ``fail_first`` requests with ``fail_status``, and require an API key. Every
request body is kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Script = Callable[[dict[str, Any]], str]


def scripted_turns(texts: Sequence[str]) -> Script:
    """Answer the k-th turn of any conversation with ``texts[k]`` (the last text once they run out)."""
    def answer(body: dict[str, Any]) -> str:
        turn = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        return texts[min(turn, len(texts) - 1)]
    return answer


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
            content = message["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image_url":
                        images.append(Image.fromarray(decode_data_url(part["image_url"]["url"])))
                        parts.append({"type": "image"})
                    else:
                        parts.append({"type": "text", "text": part.get("text", "")})
                content = parts
            messages.append({"role": message["role"], "content": content})
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt", add_special_tokens=False)
        greedy = float(body.get("temperature", 1.0)) == 0.0
        sampling = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": float(body.get("temperature", 1.0)),
            "top_p": float(body.get("top_p", 1.0)), "top_k": 0}
        limit = int(body.get("max_tokens", 64))
        with self.lock, torch.no_grad():
            out = self.model.generate(**inputs, **sampling, max_new_tokens=limit,
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        eos = self.model.generation_config.eos_token_id
        ended = bool(new) and new[-1] in (eos if isinstance(eos, list) else [eos])
        finish = "length" if len(new) >= limit and not ended else "stop"
        return self.processor.tokenizer.decode(new, skip_special_tokens=True), finish


class OpenAIServer:
    """``with OpenAIServer(script=...) as server:`` serves on ``server.base_url`` until the block ends."""

    def __init__(self, *, script: Script | None = None, model_dir: Path | None = None, latency_s: float = 0.0,
                 fail_first: int = 0, fail_status: int = 500, api_key: str | None = None,
                 model_name: str = "tiny") -> None:
        if (script is None) == (model_dir is None):
            raise ValueError("give exactly one of script and model_dir")
        self.answer: Callable[[dict[str, Any]], tuple[str, str]] = (
            (lambda body: (script(body), "stop")) if script is not None else _Generator(model_dir))
        self.latency_s = latency_s
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.api_key = api_key
        self.model_name = model_name
        self.requests: list[dict[str, Any]] = []
        self.failures = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections: set[tuple[str, int]] = set()  # client (host, port) pairs: one per TCP connection
        self._count_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: the client reuses connections
            # Headers and body go out as two writes; with Nagle's algorithm the body waits for the client's
            # delayed ACK (40 ms on Linux) on every answer.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "invalid API key"}})
                    return
                try:
                    body = json.loads(raw)
                    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                        raise ValueError("messages must be a list")
                except ValueError as exc:
                    self._send(400, {"error": {"message": f"bad request: {exc}"}})
                    return
                with server._count_lock:
                    server.requests.append(body)
                    server.connections.add(self.client_address[:2])
                    failing = server.failures < server.fail_first
                    server.failures += failing
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(body, failing, len(raw))
                finally:
                    with server._count_lock:
                        server.in_flight -= 1

            def _answer(self, body: dict[str, Any], failing: bool, prompt_chars: int) -> None:
                if server.latency_s:
                    time.sleep(server.latency_s)
                if failing:
                    self._send(server.fail_status, {"error": {"message": "injected failure"}})
                    return
                try:
                    text, finish = server.answer(body)
                except Exception as exc:  # a server answers 500 with a reason, it does not drop the connection
                    self._send(500, {"error": {"message": f"{type(exc).__name__}: {exc}"}})
                    return
                for stop in body.get("stop") or []:
                    at = text.find(stop)
                    if at >= 0:
                        text, finish = text[:at], "stop"
                # A rough token count from the request's size (re-serialising its images per answer cost more
                # CPU than the rest of the server, on the machine the client benchmarks run on).
                self._send(200, {
                    "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", server.model_name),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish}],
                    "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(text) // 4 + 1,
                              "total_tokens": prompt_chars // 4 + len(text) // 4 + 1},
                })

        return Handler


def main() -> None:
    """Serve from its own process (as vLLM would): prints the base URL, then serves until killed."""
    import argparse

    parser = argparse.ArgumentParser(description="a local OpenAI chat-completions server for tests and benchmarks")
    parser.add_argument("--script", help="JSON list of turn texts (scripted mode)")
    parser.add_argument("--model-dir", type=Path, help="a transformers checkpoint that generates the answers")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before every answer")
    args = parser.parse_args()
    script = scripted_turns(json.loads(args.script)) if args.script else None
    with OpenAIServer(script=script, model_dir=args.model_dir, latency_s=args.latency) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
