"""``OpenAIPolicy``: any OpenAI-compatible chat-completions endpoint (``vllm serve`` of a Qwen-VL model, SGLang,
LMDeploy, ``transformers serve``, a hosted model) as the policy. ``OpenAIConfig`` holds every knob; the command
line turns it into flags (``segloop run/batch/demo --help`` lists them with their defaults).

Each turn sends the transcript (``policies.chat.openai_messages``) and reads the answer back as one canonical
``<think>...</think><tool_call>{...}</tool_call>`` text, whether the server left the call in ``content`` or moved
it into ``tool_calls`` and the thought into ``reasoning_content`` (``policies.chat.turn_from_message``).

Tool modes. ``prompt`` (default): the tools' JSON schemas are in the system prompt and the model writes its call
as text; this works on every server: vLLM with or without ``--enable-auto-tool-choice --tool-call-parser hermes``
(with a parser the call may come back in ``tool_calls``; it is read either way), and it is the mode for
checkpoints whose chat template does not render tools (Qwen2.5-VL's does not). ``native``: the schemas go
through the API's ``tools=`` parameter, calls are sent back as structured ``tool_calls`` and observations as
``role="tool"`` messages; it needs a chat template that renders tools (Qwen3-VL, Hermes-style) and, on vLLM, a
tool parser (``--enable-auto-tool-choice --tool-call-parser hermes``: vLLM refuses ``tool_choice="auto"``
without one) or ``--tool-choice required`` (vLLM >= 0.8.3, guided JSON, no thought).

Images. A view is never shown larger than its own pixels (``upscale = False``: a 500x375 photo is sent as
476x364, not enlarged to 1008x756) nor larger than ``max_side``, and is sent as JPEG at quality 85 by default
(``image_format``: jpeg, webp, or png for lossless); ``keep_images=K`` sends only the last K pictures.
Request bytes are recorded per turn.

Failures and retries (each request, one attempt at a time):
- every attempt has an overall deadline, ``request_timeout`` seconds for connecting, waiting and reading the
  whole body (a server that trickles its answer is cut off too); a timed-out request is retried once, so a
  hung server ends the turn within 2 x ``request_timeout`` + ``backoff``;
- connection failures, 429, 502, 503 and 504 are retried up to ``retries`` times, waiting what the server's
  ``Retry-After`` asks (seconds or an HTTP date) or ``backoff * 2**k``, never more than ``retry_after_cap``;
- a 200 whose body is not a chat completion is retried once;
- a refusal that would repeat (400, 422, a 500 naming a template or validation error) is not retried; an
  unexplained 500 is retried once. A 500 to a request carrying ``stop`` is retried once without it: if that
  answers, the server cannot take ``stop`` (``transformers serve`` with a vision model, an upstream bug), which
  is said once and remembered (the text is cut at ``</tool_call>`` here instead). The first such refusal of an
  episode answers the turn with an error observation the model can react to (``transformers serve`` answers 500
  when the model's call is not valid JSON; a context-length 400 lets it submit); a second one in a row ends the
  episode;
- 401, 403, 404 and 413 end the episode at once (413: the request only grows; the message says which knobs
  shrink it). Whatever ends the attempts raises ``OpenAIPolicyError`` (a ``PolicyUnavailable``): the episode
  failed, with the reason and the status of every attempt.

Each turn's ``PolicyTurn.info`` records the finish reason, the status of every attempt, retries, seconds
waited, token usage, request bytes (every attempt's), images sent, the seed sent and where the call came from;
``usage`` keeps the policy's totals.

At most ``concurrency`` requests are in flight, each on its own keep-alive connection: the policy keeps one
single-connection ``httpx.AsyncClient`` per slot rather than one client with a pool of ``concurrency``
connections, because httpcore's pool re-examines every connection (a ``getpeername`` and a ``poll`` each, and a
quadratic idle count) whenever a request enters or leaves it: about 1 ms of CPU per request at 32 connections,
more than everything else the client does.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import re
import ssl
import time
from typing import Any, Literal

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from segloop.agent.actions import tool_schemas
from segloop.agent.parser import json_value
from segloop.agent.policy import PolicyContext, PolicyTurn, PolicyUnavailable
from segloop.policies.chat import (
    SpecialTokens,
    ToolMode,
    openai_messages,
    sent_image_ids,
    special_token_stripper,
    turn_from_message,
)
from segloop.tools.encoding import ImageFormat, data_url
from segloop.tools.redaction import redact, register_secret, register_url_secrets
from segloop.tools.views import DEFAULT_MAX_SIDE, CoordFrame

log = logging.getLogger("segloop.openai")

STOP = "</tool_call>"
_TRANSIENT = {429, 502, 503, 504}
_FINAL = {401, 403, 404}
# A 500 that names one of these is the request's own fault: it would fail again.
_DETERMINISTIC = re.compile(r"template|jinja|validat|token|invalid|not supported|unsupported|mismatch", re.I)
# Statuses of an attempt that met no server able to answer: an episode that ends on these alone is an outage's.
_OUTAGE = {"no connection", "connection lost", "timeout", *_TRANSIENT}
# A request with a stop string failed (500) and answered without it this many times, with no request carrying
# it ever answered: the server cannot take `stop` (one stray 500 is not enough to decide).
STOP_EVIDENCE = 2
# How the server is reached: it may change between runs into one batch folder (resuming compares only the
# other fields, the ones that change results); every value used is still recorded.
CONNECTION_FIELDS = ("base_url", "api_key_env", "request_timeout", "retries", "backoff", "retry_after_cap",
                     "concurrency", "preflight")


def _default_base_url() -> str:
    return os.environ.get("OPENAI_BASE_URL") or "http://localhost:8000/v1"


class OpenAIConfig(BaseModel):
    """The knobs of ``--policy openai`` (each is a flag of ``segloop run``, ``batch`` and ``demo``)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(default_factory=_default_base_url, validate_default=True,
                          description="the server's OpenAI-compatible base URL ($OPENAI_BASE_URL when set)")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the API key (the "
                                                                  "key itself is never a flag nor recorded; none is "
                                                                  "sent when it is unset)")
    temperature: float = Field(1.0, ge=0, le=2, description="sampling temperature; 0 is greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_tokens: int = Field(512, ge=1, description="longest answer per turn, in tokens")
    stop: bool = Field(True, description=f"ask the server to stop at {STOP} (a server that fails requests "
                                         "carrying stop is detected and sent none)")
    request_timeout: float = Field(60.0, gt=0, description="overall deadline of one request in seconds (connect, "
                                                           "wait and the whole body); a timed-out request is "
                                                           "retried once")
    retries: int = Field(4, ge=0, description="retries of a request that failed transiently (no connection, 429, "
                                              "502, 503, 504)")
    backoff: float = Field(0.5, ge=0, description="first wait before a retry, in seconds, doubling each time "
                                                  "(unless the server's Retry-After says otherwise)")
    retry_after_cap: float = Field(60.0, ge=0, description="longest wait before a retry, in seconds, whatever "
                                                           "Retry-After asks")
    concurrency: int = Field(32, ge=1, description="requests in flight at most")
    tool_mode: ToolMode = Field("prompt", description="prompt: tool schemas in the system prompt, calls written as "
                                                      "text (any server); native: the API's tools= parameter, "
                                                      "tool_calls and role=tool messages (needs a template that "
                                                      "renders tools; on vLLM a tool parser)")
    tool_choice: Literal["omit", "auto", "required"] = Field("omit", description="native mode: the tool_choice sent "
                                                                                 "(omit: the server's default)")
    image_format: ImageFormat = Field("jpeg", description="how views are encoded: jpeg or webp at --image-quality, "
                                                          "png lossless")
    image_quality: int = Field(85, ge=1, le=100, description="JPEG/WebP quality")
    keep_images: int | None = Field(None, ge=1, description="send only the last K pictures of the history (older "
                                                            "ones become a short text stub); all when omitted")
    special_tokens: SpecialTokens = Field("chatml", description="special-token strings removed from echoed text: "
                                                                "chatml (Qwen/Qwen-VL <|...|>, also Llama 3, Phi), "
                                                                "gemma, none")
    max_side: int = Field(DEFAULT_MAX_SIDE, ge=28, description="longest side of a view sent, in pixels (views are "
                                                               "never enlarged beyond their own pixels)")
    frame: CoordFrame = Field("pixels", description="coordinates the model writes: pixels of the image shown "
                                                    "(Qwen2.5-VL) or norm1000 (Qwen3-VL)")
    preflight: bool = Field(True, description="before the first episode, check that the server serves the model and "
                                              "that pictures reach it (a request with one counts more prompt tokens); "
                                              "a server that drops them is refused")

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {value!r}")
        return value.rstrip("/")


class OpenAIPolicyError(PolicyUnavailable):
    """The endpoint could not give a turn: unreachable, hung, refused the request, or answered nonsense. ``info``
    records the failed request's attempts (``statuses``, ``retries``, ``waited_s``, ``request_bytes``) and whether
    they met only an outage (``unreachable``: no connection, timeouts, 429/502/503/504)."""


class _Refused(OpenAIPolicyError):
    """The server refused this request in a way that would repeat (400, 422, a 500 twice)."""

    def __init__(self, message: str, problem: str, info: dict[str, Any]) -> None:
        super().__init__(message, info)
        self.problem = problem


class _Attempts:
    """The record of one request's attempts: statuses, retries, waits; what goes into ``PolicyTurn.info``."""

    def __init__(self) -> None:
        self.statuses: list[int | str] = []
        self.waited_s = 0.0
        self.bytes_sent = 0

    @property
    def retries(self) -> int:
        return max(len(self.statuses) - 1, 0)

    def info(self) -> dict[str, Any]:
        """The attempts as a failed turn's record (``OpenAIPolicyError.info``)."""
        return {"statuses": list(self.statuses), "retries": self.retries, "waited_s": round(self.waited_s, 3),
                "request_bytes": self.bytes_sent,
                "unreachable": bool(self.statuses) and all(s in _OUTAGE for s in self.statuses)}


class OpenAIPolicy:
    """See the module docstring. ``model`` is the served model's name; options are ``OpenAIConfig``'s fields
    (or give ``config``)."""

    name = "openai"
    upscale = False  # a server model gains nothing from enlarged pixels; they only cost bytes

    def __init__(self, model: str, config: OpenAIConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise TypeError("give either config or options, not both")
        try:
            config = config or OpenAIConfig(**options)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
            raise ValueError(f"bad options for the openai policy: {problems}") from None
        self.config = config
        self.model = model
        self.base_url = config.base_url
        # A query in the base URL (``?api-key=...``, ``?api-version=...``) goes with every request, after the path.
        url = httpx.URL(config.base_url)
        self._root, self._params = url.copy_with(query=None), url.params
        self.endpoint = redact(f"{self._root}/chat/completions")  # as messages name it
        self.api_key = (os.environ.get(config.api_key_env) if config.api_key_env else None) or None
        # Echoed back in a server's error, they are masked in every record and line.
        register_secret(self.api_key)
        register_url_secrets(config.base_url)
        self.frame = config.frame
        self.max_side = config.max_side
        self.concurrency = config.concurrency
        self.usage = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0, "request_bytes": 0}
        self._strip = special_token_stripper(config.special_tokens)
        # None: not known yet; True: a request carrying `stop` was answered; False: the server fails requests that
        # carry it (decided on ``STOP_EVIDENCE`` requests, said once).
        self._stop_works: bool | None = None
        self._stop_failures = 0
        # The clients and the semaphore belong to one event loop; a new loop (a later asyncio.run) gets new ones.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[httpx.AsyncClient] = []
        self._gate: asyncio.Semaphore | None = None
        self._ssl: ssl.SSLContext | None = None
        # Each image is encoded once per episode (the transcript resends the ones kept every turn).
        self._urls: dict[str, dict[str, str]] = {}
        self._refused: dict[str, int] = {}  # episodes whose last request was refused

    @property
    def greedy(self) -> bool:
        """Temperature 0: the server decodes greedily (``batch``'s default)."""
        return self.config.temperature == 0

    # -- connections ----------------------------------------------------------------------------------
    def _gate_for_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._gate is None:
            self._idle = []
            self._gate = asyncio.Semaphore(self.concurrency)
            self._loop = loop
        return self._gate

    def _client(self) -> httpx.AsyncClient:
        """An idle slot's client, or a new one (at most ``concurrency`` exist: the gate holds the others)."""
        return self._idle.pop() if self._idle else self._new_client()

    def _new_client(self) -> httpx.AsyncClient:
        if self._ssl is None:  # loading the CA bundle costs ~70 ms: once, not once per client
            self._ssl = httpx.create_ssl_context()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        timeout = self.config.request_timeout
        return httpx.AsyncClient(base_url=self._root, params=self._params, headers=headers, verify=self._ssl,
                                 limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                                 timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    async def aclose(self) -> None:
        """Close the idle clients (optional: they are also dropped with the policy)."""
        idle, self._idle = self._idle, []
        for client in idle:
            await client.aclose()

    # -- a turn ---------------------------------------------------------------------------------------
    async def _image_urls(self, context: PolicyContext) -> dict[str, str]:
        """Data URLs of the images this request shows; new ones encoded in worker threads, off the event loop."""
        urls = self._urls.setdefault(context.episode_id, {})
        missing = [i for i in sent_image_ids(context.messages, self.config.keep_images)
                   if i not in urls and i in context.images]
        encoded = await asyncio.gather(*(asyncio.to_thread(self._data_url, context.images[i]) for i in missing))
        urls.update(zip(missing, encoded, strict=True))
        return urls

    def _data_url(self, image: np.ndarray) -> str:
        return data_url(np.ascontiguousarray(np.asarray(image)[..., :3]), self.config.image_format,
                        self.config.image_quality)

    async def _body(self, context: PolicyContext) -> dict[str, Any]:
        config = self.config
        messages = openai_messages(context.messages, context.images, await self._image_urls(context),
                                   tool_mode=config.tool_mode, keep_images=config.keep_images, strip=self._strip)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": config.max_tokens,
                                "temperature": config.temperature, "top_p": config.top_p, "stream": False}
        if config.stop and self._stop_works is not False:
            body["stop"] = [STOP]
        if context.seed is not None:  # vLLM, SGLang, transformers serve and OpenAI take a sampling seed per request
            body["seed"] = context.seed * 1000 + context.turn
        if config.tool_mode == "native":
            body["tools"] = tool_schemas()
            if config.tool_choice != "omit":
                body["tool_choice"] = config.tool_choice
        return body

    async def act(self, context: PolicyContext) -> PolicyTurn:
        body = await self._body(context)
        attempts = _Attempts()
        try:
            payload, sent = await self._post(body, attempts)
        except _Refused as refusal:
            # The first refusal of an episode answers the turn: the model is told and writes another turn (the
            # request changes with it: a refusal caused by the model's own answer, such as a call the server
            # cannot parse, goes away). Two in a row end the episode: the conversation itself is refused.
            if self._refused.get(context.episode_id):
                raise OpenAIPolicyError(f"{refusal} (twice in a row: the episode ends)", refusal.info) from None
            self._refused[context.episode_id] = 1
            return PolicyTurn(text="", info={
                "refused": refusal.problem, "statuses": attempts.statuses, "retries": attempts.retries,
                "waited_s": round(attempts.waited_s, 3), "request_bytes": attempts.bytes_sent,
                "observation_error": f"the server could not answer your last turn ({refusal.problem[:120]}). Write "
                                     'exactly one valid <tool_call>{"name": ..., "arguments": {...}}</tool_call>.'})
        self._refused.pop(context.episode_id, None)
        choice = payload["choices"][0]
        try:
            text, source = turn_from_message(choice["message"])
        except TypeError as exc:  # content that is neither text nor parts
            raise OpenAIPolicyError(redact(f"{self.endpoint} answered with a message segloop cannot read: {exc}"),
                                    attempts.info()) from None
        finish = choice.get("finish_reason")
        if "stop" in sent and finish == "stop" and text.rfind("<tool_call>") > text.rfind(STOP):
            text += STOP  # servers drop a matched stop string from the text
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        usage = {k: v for k, v in usage.items() if isinstance(v, int)}
        for key in ("prompt_tokens", "completion_tokens"):
            self.usage[key] += usage.get(key, 0)
        info: dict[str, Any] = {
            "finish_reason": finish, "source": source, "statuses": attempts.statuses,
            "retries": attempts.retries, "waited_s": round(attempts.waited_s, 3), "usage": usage,
            "request_bytes": attempts.bytes_sent, "images_sent": len(sent_image_ids(context.messages,
                                                                                   self.config.keep_images)),
        }
        if "seed" in sent:
            info["seed"] = sent["seed"]
        if self.config.stop and "stop" not in sent:
            info["stop_sent"] = False
        return PolicyTurn(text=text, info=info)

    # -- before the first episode ---------------------------------------------------------------------
    async def preflight(self) -> str | None:
        """Check what can be checked before any episode (``--no-preflight`` skips it): the server answers a chat
        request for this model, and a picture reaches the model (a request with one counts more prompt tokens than
        the same request without it). Raises ``OpenAIPolicyError`` in one line naming what is wrong; returns a note
        when the server reports no token counts (then pictures cannot be checked)."""
        if not self.config.preflight:
            return None
        text = {"type": "text", "text": "Describe the picture in one word."}
        picture = {"type": "image_url", "image_url": {"url": self._data_url(_PREFLIGHT_PICTURE)}}
        counts = []
        for content in ([text], [picture, text]):
            body = {"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": 1,
                    "temperature": 0.0, "stream": False}
            try:
                payload, _ = await self._post(body, _Attempts())
            except OpenAIPolicyError as exc:
                raise OpenAIPolicyError(f"the server does not answer a request for model {self.model!r}: {exc}",
                                        exc.info) from None
            usage = payload.get("usage")
            counts.append(usage.get("prompt_tokens") if isinstance(usage, dict) else None)
        without, with_picture = counts
        if not isinstance(without, int) or not isinstance(with_picture, int):
            return (f"{redact(self.base_url)} reports no prompt token counts: segloop cannot check that pictures "
                    "reach the model")
        if with_picture <= without:
            raise OpenAIPolicyError(
                f"{redact(self.base_url)} drops pictures: model {self.model!r} counts {with_picture} prompt tokens for "
                f"a request with one and {without} without, so it would answer without seeing the image (serve a "
                "vision-language model with its image processor; --no-preflight runs anyway)")
        return None

    # -- the wire -------------------------------------------------------------------------------------
    async def _post(self, body: dict[str, Any], attempts: _Attempts) -> tuple[dict[str, Any], dict[str, Any]]:
        """The answer to ``body`` and the body that got it (see the module docstring for the retry rules)."""
        async with self._gate_for_loop():
            slot = [self._client()]  # a timed-out attempt replaces the slot's client
            try:
                return await self._attempts(slot, body, attempts)
            finally:
                self._idle.append(slot[0])

    async def _attempts(self, slot: list[httpx.AsyncClient], body: dict[str, Any], attempts: _Attempts
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
        config = self.config
        url = self.endpoint
        data = json.dumps(body, separators=(",", ":")).encode()
        transient = timeouts = malformed = unexplained = 0
        dropped_stop = False

        def failed(problem: str) -> OpenAIPolicyError:
            return OpenAIPolicyError(self._failed(url, attempts, problem), attempts.info())

        while True:
            wait = 0.0
            self.usage["requests"] += 1
            self.usage["request_bytes"] += len(data)
            attempts.bytes_sent += len(data)
            if attempts.statuses:
                self.usage["retries"] += 1
            try:
                response = await asyncio.wait_for(slot[0].post("/chat/completions", content=data),
                                                  config.request_timeout)
            except (asyncio.TimeoutError, httpx.TimeoutException):
                attempts.statuses.append("timeout")
                # The cancelled exchange may have left the connection mid-response: the slot starts afresh.
                await slot[0].aclose()
                slot[0] = self._new_client()
                timeouts += 1
                if timeouts > 1:
                    raise failed(f"no answer within {config.request_timeout:g} s (the whole answer, body included), "
                                 "twice") from None
                wait = config.backoff
            except httpx.TransportError as exc:
                # Refused or unresolvable: nobody answers at the URL. Anything else (a reset, a closed connection)
                # happened after connecting.
                connect = isinstance(exc, httpx.ConnectError)
                attempts.statuses.append("no connection" if connect else "connection lost")
                transient += 1
                if transient > config.retries:
                    what = "cannot connect" if connect else "the connection was lost after connecting"
                    raise failed(f"{what} ({type(exc).__name__}: {exc})") from None
                wait = config.backoff * 2 ** (transient - 1)
            else:
                status = response.status_code
                attempts.statuses.append(status)
                if status == 200:
                    payload = _completion(response)
                    if payload is not None:
                        self._learn_stop(body, dropped_stop)
                        return payload, body
                    malformed += 1
                    if malformed > 1:
                        raise failed(f"answered 200 twice with a body that is not a chat completion: "
                                     f"{_detail(response)}")
                else:
                    detail = _detail(response)
                    problem = f"HTTP {status}: {detail}"
                    if status == 500:  # a server that failed mid-request may close the connection (uvicorn does)
                        await slot[0].aclose()
                        slot[0] = self._new_client()
                    if status in _TRANSIENT:
                        transient += 1
                        if transient > config.retries:
                            raise failed(problem)
                        wait = _retry_after(response, config.backoff * 2 ** (transient - 1))
                    elif status == 500 and _DETERMINISTIC.search(detail):
                        raise _Refused(self._failed(url, attempts, f"{problem} (a refusal; not sent again)"), problem,
                                       attempts.info())
                    elif status == 500 and "stop" in body and self._stop_works is not True and not dropped_stop:
                        # Maybe the server cannot take `stop`: this request's one retry goes without it.
                        body = {k: v for k, v in body.items() if k != "stop"}
                        data = json.dumps(body, separators=(",", ":")).encode()
                        dropped_stop = True
                        unexplained += 1
                    elif status == 500 and unexplained == 0:
                        unexplained += 1
                        wait = config.backoff
                    elif status in _FINAL:
                        raise failed(problem)
                    elif status == 413:
                        raise failed(f"{problem}: the request of {len(data)} bytes is too large for the server (send "
                                     "fewer or smaller pictures: --keep-images, --image-format, --image-quality, "
                                     "--max-side; it is not sent again)")
                    else:
                        raise _Refused(self._failed(url, attempts, f"{problem} (a refusal; not sent again)"), problem,
                                       attempts.info())
            if wait:
                wait = min(wait, config.retry_after_cap)
                attempts.waited_s += wait
                await asyncio.sleep(wait)

    def _learn_stop(self, body: dict[str, Any], dropped_stop: bool) -> None:
        """What an answered request says of `stop`, decided on the server's responses, never on one alone: an
        answer to a request carrying it proves it works; a request that failed (500) with it and was answered
        without it is evidence against it, and ``STOP_EVIDENCE`` of those (and no answer with it) decide. A
        transient failure (no connection, 503, a timeout) is evidence of nothing."""
        if "stop" in body:
            self._stop_works = True
        elif dropped_stop and self._stop_works is None:
            self._stop_failures += 1
            if self._stop_failures >= STOP_EVIDENCE:
                self._stop_works = False
                log.warning("%s fails requests that carry `stop` (HTTP 500) and answers them without it: segloop "
                            "sends no `stop` to it from now on and cuts each answer at %s itself",
                            redact(self.base_url), STOP)

    @staticmethod
    def _failed(url: str, attempts: _Attempts, problem: str) -> str:
        statuses = ", ".join(str(s) for s in attempts.statuses)
        count = len(attempts.statuses)
        return redact(f"{url}: {problem} ({count} attempt{'s' if count > 1 else ''}: {statuses}; "
                      f"{attempts.waited_s:.1f} s waited)")

    def end_episode(self, episode_id: str) -> None:
        """Drop the episode's encoded images; a server policy has no token ledger to return."""
        self._urls.pop(episode_id, None)
        self._refused.pop(episode_id, None)


# The preflight's picture: small, but larger than a vision encoder's smallest input (28 px tiles), with detail.
_PREFLIGHT_PICTURE = np.kron(np.indices((4, 4)).sum(axis=0) % 2 * 255, np.ones((16, 16)))[..., None].repeat(
    3, axis=2).astype(np.uint8)


def _completion(response: httpx.Response) -> dict[str, Any] | None:
    """The body when it is a chat completion with a message, else None (read as model text is: a huge integer in
    it is no reason to fail)."""
    try:
        payload = json_value(response.text)
        message = payload["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return payload if isinstance(message, dict) else None


def _detail(response: httpx.Response) -> str:
    """What a refusal says: OpenAI's and vLLM's ``{"error": {"message"}}``, older vLLM's ``{"message"}``,
    FastAPI's ``{"detail"}``, else the start of the body."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    message: Any = None
    if isinstance(payload, dict):
        error = payload.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or payload.get("message") or payload.get("detail")
    text = str(message) if message else response.text
    if message is None and "html" in response.headers.get("content-type", ""):
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)  # a proxy's error page
        text = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    return redact(" ".join(text.split()))[:200] or "(empty body)"


def _retry_after(response: httpx.Response, default: float) -> float:
    """The wait ``Retry-After`` asks for (seconds or an HTTP date), else ``default``."""
    value = (response.headers.get("retry-after") or "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" parses as a float, and would wait nothing; "inf" is capped by the caller
        return max(seconds, 0.0) if not math.isnan(seconds) else default
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(when.timestamp() - time.time(), 0.0)
