"""The APIs batchrun speaks, behind one protocol: everything that differs between them is here.

An :class:`Api` owns its path and headers, the request body an item becomes, the fold of its
stream and of a batch result, its error classification, its GenAI operation name, which request
keys it accepts, and what a body will cost (the input-token estimate the rate budget uses). The
job schema takes its ``request.api`` choices from :data:`APIS`; nothing outside this package
branches on which API a job uses. Pure code: no I/O, no retries, no clocks.

Adding an API: a module here with a class that implements :class:`Api`, its instance in
:data:`APIS`, and its tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from batchrun.apis.complete import COMPLETE
from batchrun.apis.fold import Fold
from batchrun.apis.messages import MESSAGES
from batchrun.errors import AttemptError
from batchrun.models import Completion, RequestItem

__all__ = ["APIS", "Api", "Fold", "build_request", "get_api"]


class Api(Protocol):
    """One API: how an item is sent, and how its answers and errors are read."""

    name: str  # the job's request.api
    title: str  # for messages: "the Messages API"
    provider: str  # gen_ai.provider.name
    path: str  # the endpoint, under the job's base_url
    operation: str  # gen_ai.operation.name
    request_id_header: str  # the response header naming the request, for support
    text_only: bool  # conversations may hold text blocks only
    batchable: bool  # has a batch form (request.mode: batch)
    accepts: frozenset[str]  # the request.* keys it can send
    named_fields: Mapping[str, str]  # body fields batchrun sets -> the job key that sets them
    default_version: str  # the anthropic-version a job gets when it names none
    versions: frozenset[str] | None  # the anthropic-versions it speaks; None: any
    count_tokens_path: str | None  # where exact input counts come from, if anywhere

    def headers(self, api_key: str, version: str, betas: Sequence[str] = ()) -> dict[str, str]:
        """Authentication, versioning and beta headers of every request."""
        ...

    def body(self, item: RequestItem, params: Mapping[str, Any]) -> dict[str, Any]:
        """The streaming request body for ``item``; ``params`` are the request keys to send."""
        ...

    def estimate_input_tokens(self, body: Mapping[str, Any]) -> int:
        """A cheap estimate of a body's input tokens, for the rate budget."""
        ...

    def output_reservation(self, body: Mapping[str, Any]) -> int:
        """The most output tokens a body may use (its max_tokens)."""
        ...

    def count_tokens_body(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """What ``count_tokens_path`` takes for a body; ``None`` when it cannot count it."""
        ...

    def new_fold(self) -> Fold:
        """A fresh fold for the events of one streamed attempt."""
        ...

    def batch_completion(self, message: Any) -> Completion:
        """A batch result's answer as the Completion its stream would have folded into."""
        ...

    def classify(
        self,
        error_type: str,
        message: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
    ) -> AttemptError:
        """An error the server sent, as retryable, permanent or fatal for the run."""
        ...

    def error_body(self, raw: bytes, status: int, reason: str) -> tuple[str, str]:
        """The error type and message of a non-200 response's body."""
        ...

    def budget_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The response headers the rate budget learns from."""
        ...


APIS: Mapping[str, Api] = {api.name: api for api in (MESSAGES, COMPLETE)}


def get_api(name: str) -> Api:
    """The API a job names (the job schema has checked the name)."""
    return APIS[name]


def build_request(
    api: Api, item: RequestItem, params: Mapping[str, Any], betas: Sequence[str] = ()
) -> tuple[dict[str, Any], str]:
    """The JSON body for ``item`` and its hash: sha256 over the API path, the canonical body
    and the betas asked for (``anthropic-beta``; nothing when none, so hashes from before
    betas existed hold), which a resumed run compares to tell that the job still asks the
    same thing."""
    body = api.body(item, params)
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    beta = f"\nanthropic-beta: {','.join(betas)}" if betas else ""
    digest = hashlib.sha256(f"{api.path}\n{canonical}{beta}".encode()).hexdigest()
    return body, digest
