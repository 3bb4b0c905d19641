"""Secrets never leave the process: ``redact`` is the one function that removes them from text that is recorded
or printed.

It removes the values registered with ``register_secret`` (the API key a server policy read from the
environment), the userinfo of URLs (``http://user:KEY@host`` -> ``http://***@host``), secret-looking query
parameters (``?api-key=KEY`` -> ``?api-key=***``) and bearer tokens (``Authorization: Bearer KEY``, as a server
or proxy may echo its request's headers in an error). It is applied where text leaves segloop: the console
(every line the command line prints), the files a run or batch writes (records, run.json, metrics.json,
report.html), and where a server's own words enter (``policies.openai_compat``) and the demo shows them.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, TextIO

MASK = "***"
# Shorter values are not registered: masking every "ab" in a record would destroy it and protect nothing.
_MIN_SECRET = 4
_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_pattern: re.Pattern[str] | None = None

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"'<>]+@")
_SECRET_NAME = r"[\w.-]*(?:key|token|secret|passw(?:or)?d|pwd|auth|signature|sig|credential)[\w.-]*"
_QUERY_SECRET = re.compile(rf"(?i)([?&;]{_SECRET_NAME}=)[^&#\s\"'<>]*")
# A header echoed back ("Authorization: Bearer KEY", quoted as JSON, a repr or HTML does), and a bearer token
# elsewhere; a token holds a digit or punctuation, so that prose ("the flag bearer stands") is left alone.
_QUOTE = r"(?:[\"']|&quot;|&#x27;|&#39;)?"
_AUTHORIZATION = re.compile(rf"(?i)(authorization{_QUOTE}\s*[:=]\s*{_QUOTE}(?:(?:bearer|basic|token)\s+)?)"
                            r"[^\s\"',}&]+")
_BEARER = re.compile(r"(?i)(\bbearer\s+)(?=[A-Za-z0-9._~+/=-]*[0-9_~+/=-])[A-Za-z0-9._~+/=-]{8,}")


def register_secret(value: str | None) -> None:
    """Never record or print ``value`` (and its JSON-escaped spelling) from now on in this process."""
    global _pattern
    if not value or len(value) < _MIN_SECRET:
        return
    with _LOCK:
        spellings = {value, json.dumps(value)[1:-1]}
        if spellings <= _SECRETS:
            return
        _SECRETS.update(spellings)
        # Longest first, so a secret containing another is masked whole.
        _pattern = re.compile("|".join(re.escape(s) for s in sorted(_SECRETS, key=len, reverse=True)))


def register_url_secrets(url: str) -> None:
    """Register the secrets a URL carries, wherever they may be echoed: the password of its userinfo (and the basic
    authentication header made of it) and the values of its secret-looking query parameters."""
    import base64
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    if parts.password:
        register_secret(parts.password)
        register_secret(base64.b64encode(f"{parts.username or ''}:{parts.password}".encode()).decode())
    for name, value in parse_qsl(parts.query):
        if re.fullmatch(_SECRET_NAME, name, re.I):
            register_secret(value)


def redact(text: str) -> str:
    """``text`` without registered secrets, URL userinfo, secret-looking query parameters and bearer tokens."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    text = _QUERY_SECRET.sub(rf"\1{MASK}", text)
    text = _AUTHORIZATION.sub(rf"\1{MASK}", text)
    return _BEARER.sub(rf"\1{MASK}", text)


def redact_value(value: Any) -> Any:
    """A JSON-able value with every string in it (keys included) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


class RedactingStream:
    """A text stream that redacts what is written to it (the command line wraps stdout and stderr in one)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ... of the wrapped stream
        return getattr(self.stream, name)
