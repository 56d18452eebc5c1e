"""Limits: whether a request can ever fit the budget, and whether an attempt used what it took.

Pure decisions over a request body, its wants and an attempt's outcome; the rate budget acts on
them. A request that needs more than a bucket's whole minute is refused before it takes
anything (the API would refuse it however long it waited, and taking it would leave a debt that
stalls every other request for as long); an attempt that the server refused or never answered
gives back everything it took. No clock, no store, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from batchrun.models import Attempt
from batchrun.schedule.limits.bucket import Want
from batchrun.schedule.limits.budget import RequestTooLargeError

__all__ = ["MAX_BODY_BYTES", "refuse_if_never_fits", "unused"]

MAX_BODY_BYTES = 32 * 1024 * 1024  # the Messages API answers a larger body with 413


def unused(attempt: Attempt) -> bool:
    """Whether the attempt failed before the server did any work for it: an error status (400,
    413, 5xx, 529, ...) or no response at all (a refused connection, a connect timeout)."""
    return attempt.error is not None and attempt.http_status != 200


def refuse_if_never_fits(body: Mapping[str, Any], wants: Sequence[Want]) -> None:
    """Raise :class:`RequestTooLargeError` when a want exceeds its bucket's whole minute: the
    API refuses such a request however long it waits, so waiting would only stall the rest."""
    for want in wants:
        limit = want.spec.rate * 60.0
        if want.amount <= limit + 1e-6:
            continue
        kind = want.spec.name.replace("_", " ")
        how = "its max_tokens" if want.spec.name == "output_tokens" else "estimated"
        needs = (
            f"the request needs {want.amount:,.0f} {kind} ({how}), more than the limit of "
            f"{limit:,.0f} {kind} per minute; not sent"
        )
        size = len(json.dumps(body, ensure_ascii=False).encode())
        if size > MAX_BODY_BYTES:
            raise RequestTooLargeError(
                "request_too_large",
                f"the request body is {size / 2**20:,.1f} MB, over the API's "
                f"{MAX_BODY_BYTES // 2**20} MB limit; {needs}",
            )
        raise RequestTooLargeError("rate_limit_error", needs[0].upper() + needs[1:])
