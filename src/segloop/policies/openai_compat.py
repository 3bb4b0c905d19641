"""``OpenAIPolicy``: any OpenAI-compatible chat-completions endpoint (``vllm serve`` of a Qwen-VL model, or a
hosted model) as the policy.

Each turn sends the whole transcript (``policies.chat.openai_messages``: images as base64 PNG data URLs, tool
observations as ``<tool_response>``-wrapped user turns, see there why) and reads ``choices[0].message.content``.
Generation stops at ``</tool_call>``; servers drop a matched stop string from the text, so it is put back when
the text ends inside an open tool call.

At most ``concurrency`` requests are in flight, each on its own keep-alive connection: the policy keeps one
single-connection ``httpx.AsyncClient`` per slot rather than one client with a pool of ``concurrency``
connections, because httpcore's pool re-examines every connection (a ``getpeername`` and a ``poll`` each, and a
quadratic idle count) whenever a request enters or leaves it: about 1 ms of CPU per request at 32 connections,
more than everything else the client does.

Timeouts, connection failures, 5xx and 429 are retried with exponential backoff (``backoff_s * 2**attempt``,
or the server's ``Retry-After`` when it is shorter than ``max_backoff_s``) at most ``max_retries`` times; then,
and for any other refusal, ``OpenAIPolicyError`` says what went wrong (the graph ends that episode with it).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

import httpx
import numpy as np

from segloop.agent.policy import PolicyContext, PolicyTurn, PolicyUnavailable
from segloop.policies.chat import openai_messages
from segloop.tools.encoding import data_url
from segloop.tools.views import DEFAULT_MAX_SIDE, CoordFrame

_RETRY_STATUS = {429, 500, 502, 503, 504}


class OpenAIPolicyError(PolicyUnavailable):
    """The endpoint could not give a turn: unreachable, refused the request, or answered nonsense."""


class OpenAIPolicy:
    """See the module docstring. ``model`` is the served model's name; the API key is read from the
    environment variable ``api_key_env`` (no key is sent when it is unset, as a local vLLM expects)."""

    name = "openai"

    def __init__(self, model: str, *, base_url: str = "http://localhost:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 512, greedy: bool = False,
                 frame: CoordFrame = "pixels", max_side: int = DEFAULT_MAX_SIDE, concurrency: int = 32,
                 timeout_s: float = 120.0, max_retries: int = 4, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if max_retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("max_retries and backoff_s must be >= 0 and timeout_s > 0")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = os.environ.get(api_key_env) or None
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.greedy = greedy
        self.frame = frame
        self.max_side = max_side
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.usage = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}
        # The clients and the semaphore belong to one event loop; a new loop (a later asyncio.run) gets new ones.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[httpx.AsyncClient] = []
        self._gate: asyncio.Semaphore | None = None
        self._ssl: ssl.SSLContext | None = None
        # Each image is encoded once per episode (the transcript resends all of them every turn).
        self._urls: dict[str, dict[str, str]] = {}

    def _gate_for_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._gate is None:
            self._idle = []
            self._gate = asyncio.Semaphore(self.concurrency)
            self._loop = loop
        return self._gate

    def _client(self) -> httpx.AsyncClient:
        """An idle slot's client, or a new one (at most ``concurrency`` exist: the gate holds the others)."""
        if self._idle:
            return self._idle.pop()
        if self._ssl is None:  # loading the CA bundle costs ~70 ms: once, not once per client
            self._ssl = httpx.create_ssl_context()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, verify=self._ssl,
                                 limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                                 timeout=httpx.Timeout(self.timeout_s))

    async def aclose(self) -> None:
        """Close the idle clients (optional: they are also dropped with the policy)."""
        idle, self._idle = self._idle, []
        for client in idle:
            await client.aclose()

    async def _image_urls(self, context: PolicyContext) -> dict[str, str]:
        """Data URLs of the transcript's images; new ones encoded in worker threads, off the event loop."""
        urls = self._urls.setdefault(context.episode_id, {})
        missing = [m.image_id for m in context.messages
                   if m.image_id is not None and m.image_id not in urls and m.image_id in context.images]
        encoded = await asyncio.gather(*(asyncio.to_thread(_data_url, context.images[i]) for i in missing))
        urls.update(zip(missing, encoded, strict=True))
        return urls

    async def _body(self, context: PolicyContext) -> dict[str, Any]:
        body = {
            "model": self.model,
            "messages": openai_messages(context.messages, context.images, await self._image_urls(context)),
            "max_tokens": self.max_tokens,
            "temperature": 0.0 if self.greedy else self.temperature,
            "top_p": 1.0 if self.greedy else self.top_p,
            "stop": ["</tool_call>"],
        }
        if context.seed is not None:  # vLLM and OpenAI take a sampling seed per request
            body["seed"] = context.seed * 1000 + context.turn
        return body

    async def act(self, context: PolicyContext) -> PolicyTurn:
        payload = await self._post(await self._body(context))
        try:
            choice = payload["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise OpenAIPolicyError(f"{self.base_url}: the answer has no choices[0].message.content "
                                    f"({str(payload)[:120]})") from None
        if not isinstance(text, str):
            raise OpenAIPolicyError(f"{self.base_url}: message content is {type(text).__name__}, not text")
        finish = choice.get("finish_reason")
        if finish == "stop" and text.rfind("<tool_call>") > text.rfind("</tool_call>"):
            text += "</tool_call>"
        usage = payload.get("usage") or {}
        for key in ("prompt_tokens", "completion_tokens"):
            if isinstance(usage.get(key), int):
                self.usage[key] += usage[key]
        return PolicyTurn(text=text, info={"finish_reason": finish, "usage": usage})

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        async with self._gate_for_loop():
            client = self._client()
            try:
                return await self._attempts(client, body, url)
            finally:
                self._idle.append(client)

    async def _attempts(self, client: httpx.AsyncClient, body: dict[str, Any], url: str) -> dict[str, Any]:
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.usage["retries"] += 1
            self.usage["requests"] += 1
            wait = min(self.backoff_s * 2 ** attempt, self.max_backoff_s)
            try:
                response = await client.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self.timeout_s:g} s"
            except httpx.TransportError as exc:
                problem = f"cannot connect ({type(exc).__name__}: {exc})"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise OpenAIPolicyError(f"{url} answered 200 with a body that is not JSON") from None
                detail = response.text[:200].replace("\n", " ")
                problem = f"HTTP {response.status_code}: {detail}"
                if response.status_code not in _RETRY_STATUS:
                    raise OpenAIPolicyError(f"{url} refused the request ({problem})")
                wait = _retry_after(response, wait, self.max_backoff_s)
            if attempt < self.max_retries:
                await asyncio.sleep(wait)
        raise OpenAIPolicyError(f"{url} failed after {self.max_retries + 1} attempts: {problem}")

    def end_episode(self, episode_id: str) -> None:
        """Drop the episode's encoded images; a server policy has no token ledger to return."""
        self._urls.pop(episode_id, None)


def _data_url(image: np.ndarray) -> str:
    return data_url(np.ascontiguousarray(np.asarray(image)[..., :3]))


def _retry_after(response: httpx.Response, default: float, cap: float) -> float:
    value = response.headers.get("retry-after")
    try:
        return min(max(float(value), 0.0), cap) if value is not None else default
    except ValueError:
        return default
