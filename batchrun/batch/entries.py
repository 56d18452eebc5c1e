"""Batch mode's requests: an item as a batch entry, its ``custom_id``, and batches within limits.

A :class:`RequestItem` becomes an :class:`Entry`: the Messages body stream mode would send
(the item's variant's request), without ``stream``, under a ``custom_id`` the API accepts
(``^[a-zA-Z0-9_-]{1,64}$``). The id is deterministic: the variant (but ``default``) and the row
id made safe and cut short, the sample, and a hash of the key salted with the run folder's own
salt, so ids never collide and a batch can be recognised as this folder's
by the custom ids in its results. :class:`Splitter` groups entries within the API's limits.
Pure: no I/O. It must not know how entries are stored or sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from batchrun.apis import build_request
from batchrun.job.schema import Job
from batchrun.job.variants import DEFAULT as DEFAULT_VARIANT
from batchrun.models import RequestItem

__all__ = ["BatchLimits", "Entry", "Splitter", "body", "custom_id", "make_entry", "wire_custom_id"]

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")
_ENVELOPE = len(b'{"requests":[]}')
_WIRE_HEAD = b'{"custom_id":"'


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """The most one batch may hold: requests, and bytes of JSON body (the API: 100,000; 256 MB)."""

    max_requests: int = 100_000
    max_bytes: int = 256_000_000


def custom_id(salt: str, item_id: str, sample: int, variant: str = DEFAULT_VARIANT) -> str:
    """``[{variant}-]{safe id}-{sample}-{hash}``: readable in the console, unique, at most 64
    characters. The default variant's ids are those of folders from before variants."""
    key = f"{salt}\0{item_id}\0{sample}"
    readable = item_id
    if variant != DEFAULT_VARIANT:
        key, readable = f"{key}\0{variant}", f"{variant}-{item_id}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    tail = f"-{sample}-{digest}"
    return _UNSAFE.sub("_", readable)[: max(0, 64 - len(tail))] + tail


@dataclass(frozen=True, slots=True)
class Entry:
    """Where the answer to one request of a batch goes (variant, id, sample), and which attempt
    it is.

    ``request_hash`` is stream mode's hash of the same request, so a run folder can switch
    modes and still resume. ``first_at`` is when the request was first submitted (ISO 8601), for
    the row's ``started_at`` after retries. ``input_row`` is the item's row (``None`` in batch
    state written before it was kept). ``variant`` is ``default`` in batch state written before
    variants. The request itself travels as its wire form.
    """

    custom_id: str
    id: str
    sample: int
    request_hash: str
    attempt: int = 1
    first_at: str | None = None
    input_row: int | None = None
    variant: str = DEFAULT_VARIANT

    def to_json(self) -> dict[str, Any]:
        return {
            "custom_id": self.custom_id,
            "id": self.id,
            "sample": self.sample,
            "request_hash": self.request_hash,
            "attempt": self.attempt,
            "first_at": self.first_at,
            "input_row": self.input_row,
            "variant": self.variant,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        first_at, input_row = data.get("first_at"), data.get("input_row")
        variant = data.get("variant")
        return cls(
            custom_id=str(data["custom_id"]),
            id=str(data["id"]),
            sample=int(data["sample"]),
            request_hash=str(data["request_hash"]),
            attempt=int(data["attempt"]),
            first_at=first_at if isinstance(first_at, str) else None,
            input_row=input_row if isinstance(input_row, int) else None,
            variant=variant if isinstance(variant, str) else DEFAULT_VARIANT,
        )

    def retry(self, first_at: str | None) -> Entry:
        """This request again, as the next attempt."""
        return replace(self, attempt=self.attempt + 1, first_at=self.first_at or first_at)


def make_entry(job: Job, item: RequestItem, salt: str) -> tuple[Entry, bytes]:
    """``item`` as the first attempt of a batch entry, and its wire form: the
    ``{"custom_id": ..., "params": ...}`` object a batch body carries."""
    request = job.variant(item.variant).request
    params, request_hash = build_request(request.api_spec, item, request.params, job.endpoint.betas)
    params.pop("stream", None)
    entry = Entry(
        custom_id(salt, item.id, item.sample, item.variant),
        item.id,
        item.sample,
        request_hash,
        input_row=item.row,
        variant=item.variant,
    )
    # ASCII-only JSON: a lone surrogate in a prompt stays an escape, never invalid UTF-8 that
    # would make the whole batch unreadable. custom_id comes first (see wire_custom_id).
    wire = json.dumps({"custom_id": entry.custom_id, "params": params}, separators=(",", ":"))
    return entry, wire.encode()


def wire_custom_id(wire: bytes) -> str:
    """The custom_id of a wire form made by :func:`make_entry`, without parsing the params."""
    start = len(_WIRE_HEAD)
    return wire[start : wire.index(b'"', start)].decode()


class Splitter:
    """Groups wire forms, in order, into batches within the limits.

    :meth:`add` returns the group just completed when the new entry does not fit beside it;
    :meth:`rest` the last one. An entry too large for any batch is refused by :meth:`fits`.
    """

    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self._group: list[tuple[Entry, bytes]] = []
        self._used = _ENVELOPE

    def fits(self, wire: bytes) -> bool:
        return _ENVELOPE + len(wire) <= self.limits.max_bytes

    def add(self, entry: Entry, wire: bytes) -> list[tuple[Entry, bytes]] | None:
        extra = len(wire) + (1 if self._group else 0)  # the comma between entries
        full = None
        if self._group and (
            len(self._group) >= self.limits.max_requests
            or self._used + extra > self.limits.max_bytes
        ):
            full = self.rest()
            extra = len(wire)
        self._group.append((entry, wire))
        self._used += extra
        return full

    def rest(self) -> list[tuple[Entry, bytes]]:
        group, self._group, self._used = self._group, [], _ENVELOPE
        return group


def body(wires: Iterable[bytes]) -> bytes:
    """The JSON body of ``POST /v1/messages/batches`` from the entries' wire forms."""
    return b'{"requests":[' + b",".join(wires) + b"]}"
