"""The run's secrets, and the scrubbing of every text a server sends before anything keeps it.

Part of stage 3 (call): :mod:`batchrun.call.endpoint` knows the API key (and the Redis
password of ``limits.redis_url``) and makes a :class:`Scrubber` of them; the seams where server
text enters (:mod:`batchrun.call.attempt`, :mod:`batchrun.batch.api`) pass every body, message
and header value they keep through it, so a server that echoes the key gets it written nowhere:
not in rows, run.json, traces or logs. Scrubbing comes before any truncation, so a key cut in
half by a length cap cannot leave its prefix behind. Pure code: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["MAX_TEXT", "NO_SECRETS", "REDACTED", "Scrubber", "redis_password"]

REDACTED = "[redacted]"
# Shorter values would match ordinary words; real keys are ~100 characters.
MIN_SECRET = 8
# Server text kept in a row or a log line (error messages, header values): at most this long.
MAX_TEXT = 1000


class Scrubber:
    """Replaces each secret, wherever it occurs in a text, with ``[redacted]``.

    One substring search per secret and text: cheap enough for every error and every finished
    completion, never run per stream event.
    """

    __slots__ = ("_raw", "secrets")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first: a secret that contains another is replaced whole.
        kept = {s for s in secrets if s is not None and len(s) >= MIN_SECRET}
        self.secrets = tuple(sorted(kept, key=len, reverse=True))
        self._raw = tuple(s.encode() for s in self.secrets)

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def short(self, text: str, limit: int = MAX_TEXT) -> str:
        """Scrubbed, then cut to ``limit`` characters (in that order)."""
        text = self.text(text)
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self.text(text)

    def raw(self, data: bytes) -> bytes:
        """A body as bytes: the secrets' UTF-8 forms replaced (JSON stays JSON)."""
        for secret in self._raw:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
        return data

    def deep(self, value: Any) -> Any:
        """A parsed JSON value with every string in it (keys too) scrubbed."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                self.text(k) if isinstance(k, str) else k: self.deep(v) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.deep(v) for v in value]
        return value


NO_SECRETS = Scrubber()


def redis_password(url: str | None) -> list[str]:
    """The password in a ``redis://user:pw@host`` URL, as written and as sent (unquoted)."""
    password = urlsplit(url).password if url else None
    return [] if password is None else [password, unquote(password)]
