"""What every stream fold shares: the :class:`Fold` protocol, event dispatch, JSON parsing.

Part of :mod:`batchrun.apis`: an API's fold consumes the decoded events of one attempt and yields
a :class:`~batchrun.models.Completion`. Pure code: no I/O, no retries, no clocks. A stream that
fails (an ``error`` event, a malformed payload, no final event) raises an
:class:`~batchrun.errors.AttemptError`; its partial text never becomes a result. What a fold
measured (``content``, ``output_tokens_seen``) stays on the fold, never on the error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import msgspec

from batchrun.apis.sse import ServerSentEvent
from batchrun.errors import AttemptError, RetryableError
from batchrun.models import Completion

__all__ = ["Classify", "Fold", "FoldBase", "loads", "payload_int", "payload_str", "stream_error"]

MAX_MESSAGE = 300  # error messages stay short: never the whole payload
_decode = msgspec.json.Decoder().decode

# An API's error classification, as a fold needs it for an ``error`` event: (type, message).
Classify = Callable[[str, str], AttemptError]


class Fold(Protocol):
    """Consumes one attempt's events; ``result()`` once the stream has ended."""

    done: bool
    output_tokens_seen: int | None

    content: int  # events so far that carried model output (for ttft and chunk times)
    text_started: bool  # a text delta has come (for ttft_text_s: the answer itself began)

    def feed(self, event: ServerSentEvent) -> bool:
        """Take one event; ``True`` iff it carried model output."""
        ...

    def feed_all(self, events: Sequence[ServerSentEvent]) -> None:
        """Take the events of one read, in order (``content`` counts those with output)."""
        ...

    def result(self) -> Completion:
        """The completion; ``RetryableError("stream_error")`` if the final event never came."""
        ...


def stream_error(message: str) -> RetryableError:
    return RetryableError("stream_error", message[:MAX_MESSAGE])


def loads(data: str) -> Any:
    """``json.loads``, several times faster for what it accepts: msgspec decodes, and whatever
    msgspec refuses (NaN, 1e400, lone surrogates, deep nesting, malformed text) gets the stdlib's
    own answer or error."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return json.loads(data)


def _payload(name: str, data: str) -> dict[str, Any]:
    try:
        payload = loads(data)
    except (ValueError, RecursionError) as exc:
        raise stream_error(f"{name} event data is not JSON ({type(exc).__name__})") from exc
    if not isinstance(payload, dict):
        raise stream_error(f"{name} event data is a JSON {type(payload).__name__}, not an object")
    return payload


def _error_from(payload: dict[str, Any], classify: Classify) -> AttemptError:
    """The error an ``error`` event announces; ``error.type`` missing counts as ``api_error``."""
    error = payload.get("error")
    if not isinstance(error, dict):
        error = {}
    error_type = error.get("type")
    message = error.get("message")
    # Not cut here: the message is scrubbed of secrets first, then capped, where it enters
    # the run (batchrun.call.attempt); the SSE decoder bounds its size.
    return classify(
        error_type if isinstance(error_type, str) and error_type else "api_error",
        message if isinstance(message, str) else "error event in the stream",
    )


def payload_int(obj: Any, key: str) -> int | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def payload_str(obj: Any, key: str) -> str | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


class FoldBase:
    """Dispatch shared by the folds: event name to handler, JSON parsing, ``error`` events
    classified by the API's own table (``classify``)."""

    _events: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, classify: Classify) -> None:
        self._classify = classify
        self.done = False
        self.output_tokens_seen: int | None = 0
        self.content = 0
        self.text_started = False

    def feed_all(self, events: Sequence[ServerSentEvent]) -> None:
        for event in events:
            self.feed(event)

    def feed(self, event: ServerSentEvent) -> bool:
        if self.done:
            return False  # the server closes after its final event; anything later is noise
        name = event.event
        if name in self._events:
            payload = _payload(name, event.data)
        elif name == "message":
            # No `event:` line: fall back on the payload's own "type", if it has one.
            try:
                payload = loads(event.data)
            except (ValueError, RecursionError):
                return False
            kind = payload.get("type") if isinstance(payload, dict) else None
            if not isinstance(kind, str) or kind not in self._events:
                return False
            name = payload["type"]
        else:
            return False  # ping, and event types newer than this code
        if name == "error":
            raise _error_from(payload, self._classify)
        if not self._handle(name, payload):
            return False
        self.content += 1
        return True

    def _handle(self, name: str, payload: dict[str, Any]) -> bool:
        raise NotImplementedError

    @staticmethod
    def _incomplete(what: str) -> RetryableError:
        return stream_error(f"the stream ended before its final event ({what})")
