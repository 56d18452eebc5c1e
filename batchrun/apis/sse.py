"""Server-sent events: bytes in, events out, following the WHATWG parsing rules.

Part of stage 3 (call): the client feeds each network chunk to :class:`SSEDecoder` and hands the
events it returns to a fold in :mod:`batchrun.apis`. This module does no I/O, knows nothing of
HTTP or of the Anthropic payloads, and never raises on odd input but one: a line, or an event's
data, longer than :data:`MAX_SIZE` characters (4 MiB) raises a retryable ``stream_error``
rather than grow without bound. Otherwise, whatever the bytes, they decode to some (possibly
empty) list of events.

Rules kept (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
LF, CRLF and CR end lines, also when a CRLF pair is split between chunks; a leading BOM is
dropped; ``:`` starts a comment; a line without a colon is a field with an empty value; one space
after the colon is stripped; ``data`` lines join with ``\\n``; a blank line dispatches, unless no
``data`` line came; ``id`` containing NUL is ignored and the last id carries over to later
events; ``retry`` counts only when all ASCII digits; unknown fields are ignored. At the end of
the body an unterminated event is discarded, as the standard says.

``retry`` belongs to the event it arrived in (as in httpx-sse) rather than setting a
connection-wide reconnection time: batchrun never reconnects to a stream, it retries the request.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from typing import NamedTuple

from batchrun.errors import RetryableError

__all__ = ["MAX_SIZE", "SSEDecoder", "ServerSentEvent"]

# The longest line, and the most data one event may hold, in characters. Anthropic's events
# are a few hundred bytes; a whole long answer in one event is still far below this.
MAX_SIZE = 4 * 1024 * 1024

# One whole event in the shape Anthropic sends, line endings already made LF. ``.`` is any
# character but LF (no DOTALL), as ``[^\n]`` is, and the regex engine scans it faster.
_BLOCK = re.compile(r"event: (.*)\ndata: (.*)\n\n")
_BLOCKS = re.compile(r"(?:event: .*\ndata: .*\n\n)*")


class ServerSentEvent(NamedTuple):
    """One dispatched event. ``id`` is the last event id seen so far on the stream.

    A named tuple: a 200-token stream makes some 200 of them, and a tuple is several times
    cheaper to create than a frozen dataclass."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


# Made straight from its four fields, in C: the named tuple's own ``__new__`` is a Python
# function, and calling it was most of the cost of taking a block of the usual shape.
_new_event = tuple.__new__


class SSEDecoder:
    """Incremental decoder: feed chunks split anywhere, get the events they complete.

    ``max_size`` bounds a line and an event's data (in characters): past it, ``feed`` raises
    ``RetryableError("stream_error")``, having kept at most about that much.
    """

    __slots__ = (
        "_data",
        "_data_size",
        "_decoder",
        "_event",
        "_last_id",
        "_max",
        "_partial",
        "_partial_size",
        "_retry",
        "_skip_lf",
    )

    def __init__(self, max_size: int = MAX_SIZE) -> None:
        self._max = max_size
        # utf-8-sig drops one BOM at the start of the stream, even one split across chunks.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._partial: list[str] = []  # pieces of the current, unterminated line
        self._partial_size = 0  # their length
        self._skip_lf = False  # the last text ended in CR: a LF starting the next is its pair
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0  # characters in _data, checked in _lines (the only path that joins)
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode ``chunk`` and return the events completed by it, in order."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        if "\r" in text:
            # A CR at the very end already ends its line; remember it to swallow a LF that
            # may open the next chunk, so that a split CRLF counts once.
            self._skip_lf = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            # Joining once per line keeps a long line that trickles in linear, not quadratic.
            self._partial_size += len(text)
            if self._partial_size > self._max:
                raise self._too_large("a line")
            self._partial.append(text)
            return []
        if self._partial:
            if self._partial_size + text.find("\n") > self._max:
                raise self._too_large("a line")
            self._partial.append(text)
            text = "".join(self._partial)
            self._partial.clear()
            self._partial_size = 0
        if len(text) > self._max:
            self._check_lines(text)  # only a chunk larger than the bound can hide a long line
        end = text.rfind("\n") + 1
        if end < len(text):
            self._partial.append(text[end:])
            self._partial_size = len(text) - end
        return self._events(text, end)

    def _check_lines(self, text: str) -> None:
        start = 0
        while (nl := text.find("\n", start)) >= 0:
            if nl - start > self._max:
                raise self._too_large("a line")
            start = nl + 1
        if len(text) - start > self._max:
            raise self._too_large("a line")

    def _too_large(self, what: str) -> RetryableError:
        self.flush()  # what was kept is dropped now, not when the caller lets go of us
        return RetryableError(
            "stream_error", f"{what} of the event stream exceeds {self._max:,} characters"
        )

    def flush(self) -> list[ServerSentEvent]:
        """End of body: discard any unterminated line or event and reset. Never dispatches."""
        self._decoder.reset()
        self._partial.clear()
        self._partial_size = 0
        self._skip_lf = False
        self._event = ""
        self._data = []
        self._data_size = 0
        self._retry = None
        return []

    def _events(self, text: str, end: int) -> list[ServerSentEvent]:
        """The events that the whole lines in ``text[:end]`` complete.

        Anthropic's events are all ``event: NAME\\ndata: JSON\\n\\n``. Between events (no field
        of the next one read yet) such a block is taken in one step, and once per call every
        block up to the last blank line at once when all of them have that shape; any other
        line goes through :meth:`_lines`, which implements the rules.
        """
        events: list[ServerSentEvent] = []
        pos = 0
        bulk = True
        while pos < end:
            between = not (self._data or self._event) and self._retry is None
            if between and (m := _BLOCK.match(text, pos)):
                name, data = m.groups()
                events.append(
                    _new_event(ServerSentEvent, (name or "message", data, self._last_id, None))
                )
                pos = m.end()
                if bulk and pos < end:
                    bulk = False
                    pos = self._bulk(text, pos, end, events)
                continue
            nl = text.find("\n", pos)
            events += self._lines((text[pos:nl],))
            pos = nl + 1
        return events

    def _bulk(self, text: str, pos: int, end: int, events: list[ServerSentEvent]) -> int:
        """Take every block from ``pos`` to the last blank line before ``end`` if all have the
        usual shape; where the taken text ends (``pos`` if it was not taken)."""
        stop = text.rfind("\n\n", pos, end) + 2
        if stop <= pos + 1 or not _BLOCKS.fullmatch(text, pos, stop):
            return pos
        last_id = self._last_id
        new, cls = _new_event, ServerSentEvent
        events += [
            new(cls, (name or "message", data, last_id, None))
            for name, data in _BLOCK.findall(text, pos, stop)
        ]
        return stop

    def _lines(self, lines: Iterable[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(
                        ServerSentEvent(
                            self._event or "message", "\n".join(data), self._last_id, self._retry
                        )
                    )
                    data = self._data = []
                    self._data_size = 0
                self._event = ""
                self._retry = None
                continue
            colon = line.find(":")
            if colon == 0:
                continue  # a comment; servers send these as keep-alives
            if colon < 0:
                field, value = line, ""
            else:
                field = line[:colon]
                value = line[colon + 2 :] if line.startswith(" ", colon + 1) else line[colon + 1 :]
            if field == "data":
                self._data_size += len(value) + 1
                if self._data_size > self._max:
                    raise self._too_large("an event")
                data.append(value)
            elif field == "event":
                self._event = value
            elif field == "id":
                if "\0" not in value:
                    self._last_id = value
            elif field == "retry" and value.isdigit() and value.isascii() and len(value) < 16:
                self._retry = int(value)
        return events
