"""Limits: buckets shared by batchrun processes on many hosts, in Redis.

The same semantics as :class:`~batchrun.schedule.limits.sqlite.SqliteStore`, but each operation is
one Lua script run atomically by the server (EVALSHA), and time is the server's ``TIME`` read inside
the script, so the hosts' clocks never meet. Two keys per API key, base URL and model, named by
their :func:`~batchrun.schedule.limits.store.shared_scope` (never the key):
``batchrun:budget:{<scope>}:buckets`` (a hash: ``level:<name>`` and ``updated:<name>``) and
``...:paused_until``. The braces make them one Redis Cluster hash slot,
as a script's keys must be. Every write renews a TTL, so the state of a key no one uses expires; a
bucket that expired starts empty, like a new one. The connection opens on first use.

The Lua below mirrors ``bucket.refill``, ``bucket.take`` and ``bucket.adjust_level`` (the server
cannot run Python); the tests hold both to the same numbers. This module must not know about
requests.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from batchrun.schedule.limits.bucket import Adjust, Want
from batchrun.schedule.limits.store import PAUSED, StoreUnavailable

__all__ = ["DEFAULT_TTL_S", "RedisStore", "redacted_url", "redis_keys"]

DEFAULT_TTL_S = 3600.0  # idle this long, a scope's state is gone (a pause lasts its length)

# Shared by both scripts: the server's time, a bucket refilled to it, and a bucket written back.
# Floats cross as "%.17g" strings: Redis turns a Lua number reply into a (truncated) integer.
_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 5: TIME, then write
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl_ms = tonumber(ARGV[1])
local function fmt(x) return string.format('%.17g', x) end
local function refill(name, rate, capacity)
  local got = redis.call('HMGET', KEYS[1], 'level:' .. name, 'updated:' .. name)
  if not got[1] or not got[2] then return 0.0, now end  -- a new bucket starts empty
  local level, updated = tonumber(got[1]), tonumber(got[2])
  local elapsed = math.max(0.0, now - updated)  -- a clock that went back refills nothing
  return math.min(capacity, level + elapsed * rate), math.max(now, updated)
end
local function store(name, level, updated)
  redis.call('HSET', KEYS[1], 'level:' .. name, fmt(level), 'updated:' .. name, fmt(updated))
end
"""

# KEYS: buckets, paused_until. ARGV: ttl_ms, epsilon, then (name, rate, capacity, amount)...
# Returns {wait, reason}; reason '' when taken.
_TAKE = (
    _PRELUDE
    + """
local paused = tonumber(redis.call('GET', KEYS[2]))
if paused and paused > now then return {fmt(paused - now), 'paused'} end
local wants = {}
for i = 3, #ARGV, 4 do
  local w = {name = ARGV[i], rate = tonumber(ARGV[i + 1]), capacity = tonumber(ARGV[i + 2]),
             amount = tonumber(ARGV[i + 3])}
  w.level, w.updated = refill(w.name, w.rate, w.capacity)
  wants[#wants + 1] = w
end
local epsilon = tonumber(ARGV[2])
local wait, reason = 0.0, ''
for _, w in ipairs(wants) do
  local need = math.min(w.amount, w.capacity)
  local short = need - w.level
  if short > epsilon * math.max(1.0, need) then
    local s = short / w.rate
    if s > wait then wait, reason = s, w.name end
  end
end
for _, w in ipairs(wants) do  -- refilled even when short: a new bucket starts filling
  local level = w.level
  if reason == '' then level = level - w.amount end
  store(w.name, level, w.updated)
end
if #wants > 0 then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
return {fmt(wait), reason}
"""
)

# KEYS: buckets, paused_until. ARGV: ttl_ms, pause_s, then (name, rate, capacity, give, at_most
# or '')... Changes to one bucket apply in order, each to the level the previous one left.
_ADJUST = (
    _PRELUDE
    + """
for i = 3, #ARGV, 5 do
  local name, capacity = ARGV[i], tonumber(ARGV[i + 2])
  local level, updated = refill(name, tonumber(ARGV[i + 1]), capacity)
  level = math.min(capacity, level + tonumber(ARGV[i + 3]))
  if ARGV[i + 4] ~= '' then level = math.min(level, tonumber(ARGV[i + 4])) end
  store(name, level, updated)
end
if #ARGV > 2 then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
local pause_s = tonumber(ARGV[2])
if pause_s > 0 then
  local old = tonumber(redis.call('GET', KEYS[2]))
  local ends = now + pause_s
  if old and old > ends then ends = old end  -- a pause only ever grows
  local keep_ms = math.max(ttl_ms, math.ceil((ends - now) * 1000) + 1000)
  redis.call('SET', KEYS[2], fmt(ends), 'PX', keep_ms)
end
return 0
"""
)
_EPSILON = 1e-9  # bucket._EPSILON: float slack, so sleeping the computed wait is always enough


def redis_keys(scope: str) -> tuple[str, str]:
    """The buckets hash and the paused-until key of one API key, base URL and model."""
    prefix = f"batchrun:budget:{{{scope[:32]}}}"
    return f"{prefix}:buckets", f"{prefix}:paused_until"


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisStore:
    """A :class:`~batchrun.schedule.limits.store.BudgetStore` in Redis, safe across hosts.

    ``url`` is ``redis://`` or ``rediss://`` (TLS), with an optional ``user:password@`` and
    ``/db``. ``ttl_s`` is how long an unused scope's state lives; ``timeout_s`` bounds a
    connect and a reply. A lost server raises :class:`StoreUnavailable` (the budget then goes on
    in memory). Calls cross the network: the budget runs them off the event loop.
    """

    blocking = True

    def __init__(
        self,
        url: str,
        scope: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = redacted_url(url)
        self.keys = redis_keys(scope)
        self._ttl_ms = str(max(1000, round(ttl_s * 1000)))
        self._secret = urlsplit(url).password
        # No client-side retries: a lost server means falling back at once, not stalling.
        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._take = self._client.register_script(_TAKE)
        self._adjust = self._client.register_script(_ADJUST)
        self._lock = threading.Lock()  # one call at a time, as the SQLite store's

    def take(self, wants: Sequence[Want]) -> tuple[float, str | None]:
        args: list[str] = [self._ttl_ms, repr(_EPSILON)]
        for w in wants:
            args += [w.spec.name, repr(w.spec.rate), repr(w.spec.capacity), repr(float(w.amount))]
        wait, reason = self._run(self._take, args)
        if reason == "":
            return 0.0, None
        return float(wait), PAUSED if reason == "paused" else str(reason)

    def adjust(self, changes: Sequence[Adjust], *, pause_s: float = 0.0) -> None:
        args: list[str] = [self._ttl_ms, repr(float(pause_s))]
        for c in changes:
            at_most = "" if c.at_most is None else repr(float(c.at_most))
            spec = c.spec
            args += [spec.name, repr(spec.rate), repr(spec.capacity), repr(float(c.give)), at_most]
        self._run(self._adjust, args)

    def close(self) -> None:
        with self._lock:
            self._client.close()

    def _run(self, script: redis.commands.core.Script, args: list[str]) -> list[str]:
        with self._lock:
            try:
                result = script(keys=list(self.keys), args=args)
            except (redis.RedisError, OSError) as exc:
                message = str(exc)
                if self._secret:
                    message = message.replace(self._secret, "***")
                raise StoreUnavailable(f"{self.url}: {message}") from exc
        return list(result) if isinstance(result, list) else []
