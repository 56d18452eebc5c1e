"""The data types the pipeline's stages hand to each other.

Stages meet here and nowhere else: ``inputs`` makes :class:`RequestItem`, ``apis`` folds a stream
into a :class:`Completion`, an attempt is an :class:`Attempt`; the run tells its driver to
:class:`Stop` and ends with a :class:`RunOutcome`. No I/O, no behaviour beyond small derived
properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchrun.errors import AttemptError, EndpointUnreachable, FatalAPIError, RunFolderError

if TYPE_CHECKING:
    import asyncio
    import signal

__all__ = [
    "Attempt",
    "Completion",
    "InputSummary",
    "RequestItem",
    "RunOutcome",
    "RunStatus",
    "Stop",
]


@dataclass(frozen=True, slots=True)
class RequestItem:
    """One request to send: an input row's rendered conversation, for one sample.

    ``messages`` is a list of ``{"role": "user" | "assistant", "content": str | list}`` as the
    Messages API takes it; a prompt template yields one user message. ``row`` is the 0-based
    position of the input row across the input files, in the order they are read: the
    ``input_row`` column. ``variant`` names the job's variant the request runs under (``default``
    for a job without ``variants``); a request's key is (``variant``, ``id``, ``sample``).
    """

    id: str
    sample: int
    messages: tuple[dict[str, Any], ...]
    system: str | None = None
    row: int = 0
    variant: str = "default"


@dataclass(frozen=True, slots=True)
class InputSummary:
    """What a valid input holds: rows (after ``limit``), requests (rows x samples), columns."""

    rows: int
    requests: int
    columns: list[str]


@dataclass(frozen=True, slots=True)
class Completion:
    """What a stream that ran to its final event said.

    ``text`` joins every text delta of every text block in order (the legacy API: every
    ``completion`` fragment). ``content_json`` (Messages only) is the content blocks as a
    non-streaming response would hold them, as JSON. Token counts are the last values the stream
    sent; ``None`` where the API sends none (the legacy API never does). ``input_tokens`` is the
    API's own count, the uncached part of the input; the cache counts are beside it.
    ``usage_json`` is the final usage object as the API sent it (see
    :class:`~batchrun.apis.messages_fold.MessagesFold` for how a stream's two usages merge);
    ``reasoning_output_tokens`` is the thinking part of ``output_tokens`` when the API reports it.
    """

    text: str
    stop_reason: str | None
    stop_sequence: str | None = None
    content_json: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    response_id: str | None = None
    response_model: str | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_creation_5m_input_tokens: int | None = None
    cache_creation_1h_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None
    service_tier: str | None = None
    usage_json: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt did, successful or not: the raw material of both Parquet tables.

    Times are monotonic clock readings; ``chunk_offsets`` are seconds after ``sent_at``.
    ``output_tokens_seen`` counts the output that arrived, also when the attempt failed.
    ``ttft_text_s`` is when the first text delta arrived (after any thinking or tool input),
    seconds after ``sent_at``; ``None`` when no text came.
    ``ratelimit_headers`` holds the response headers the API's rate budget learns from
    (``anthropic-ratelimit-*`` and ``retry-after``, lower-case names).
    """

    sent_at: float = 0.0
    ended_at: float = 0.0
    http_status: int | None = None
    request_id: str | None = None
    chunk_offsets: list[float] = field(default_factory=list)
    completion: Completion | None = None
    error: AttemptError | None = None
    output_tokens_seen: int | None = None
    ratelimit_headers: dict[str, str] = field(default_factory=dict)
    ttft_text_s: float | None = None

    @property
    def ttft_s(self) -> float | None:
        return self.chunk_offsets[0] if self.chunk_offsets else None

    @property
    def e2e_s(self) -> float:
        return self.ended_at - self.sent_at


@dataclass
class Stop:
    """Why a run stops sending early, if it does: set by the run, watched by its driver.

    ``event`` is set by a fatal API error, a signal, a checkpoint that could not be written
    or an endpoint that cannot be reached (no new requests); ``interrupted`` by a signal only
    (requests in flight get the grace period).
    """

    event: asyncio.Event = field(default_factory=lambda: _event())
    interrupted: asyncio.Event = field(default_factory=lambda: _event())
    fatal: FatalAPIError | None = None
    signal: signal.Signals | None = None
    write_failed: RunFolderError | None = None  # checkpoints failed past the retry bound
    unreachable: EndpointUnreachable | None = None  # no attempt reached the endpoint


def _event() -> asyncio.Event:
    import asyncio  # not at import: `batchrun validate` never needs the event loop's ~40 ms

    return asyncio.Event()


class RunStatus(StrEnum):
    """How a run ended, as run.json, the summary line and the report say it."""

    COMPLETE = "complete"  # every request has a row (ok or error)
    ABORTED = "aborted"  # an error no retry can fix stopped it (exit 3)
    INTERRUPTED = "interrupted"  # SIGINT or SIGTERM
    WRITE_FAILED = "write_failed"  # the run folder could not be written (exit 74)
    UNREACHABLE = "unreachable"  # the endpoint could not be reached (exit 69)
    CAPPED = "capped"  # the spend cap (limits.max_cost_usd) stopped it (exit 4)
    CANCELED = "canceled"  # batch mode: --cancel
    CANCEL_REQUESTED = "cancel_requested"  # --cancel asked the run holding the folder


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended: where its files are, its counts and the process exit code."""

    run_dir: Path
    run_id: str
    counts: dict[str, int]
    exit_code: int
    status: RunStatus
    message: str | None = None
    sent: int = 0  # requests this run took on (the rest were already done)
    input_rows: int | None = None  # rows of the input the run covered (after --limit)
    input_rows_total: int | None = None  # rows of the whole input (before --limit)
    limited: bool = False  # --limit left some of the input's rows out of the run
    cost: str | None = None  # the cost in words, for the closing line (record.cost.cost_text)
