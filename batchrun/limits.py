"""Budgets that gate every attempt: the seam for requests- and tokens-per-minute limits.

The runner awaits ``acquire`` before each attempt (retries included) and reports the usage a
stream actually had with ``settle``. ``Unlimited`` is what a job without limits gets; the
rate-limited implementation (token buckets learned from the server's headers) fills this seam.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Budget", "Unlimited"]


class Budget(Protocol):
    async def acquire(self, body: dict[str, Any]) -> None:
        """Wait until the request ``body`` may be sent."""

    def settle(self, body: dict[str, Any], output_tokens: int | None) -> None:
        """Return what a finished attempt did not use of what ``acquire`` reserved."""


class Unlimited:
    """No limits: every attempt goes at once."""

    async def acquire(self, body: dict[str, Any]) -> None:
        return None

    def settle(self, body: dict[str, Any], output_tokens: int | None) -> None:
        return None
