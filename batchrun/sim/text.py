"""Simulator: the deterministic "model". Request content in, tokens and a stop reason out.

Pure functions, no I/O and no clock. The text is a function of the simulator's seed, the
request's content (not ``stream``, the token cap or the stop sequences, so a capped or stopped
reply is a prefix of the uncapped one) and the draw: the number of the reply the simulator
gives that exact body (a faulted attempt takes none). So the samples of one request differ, as on
the API at its default temperature, a retry after a fault gets the reply the fault interrupted,
and a run is reproducible for a fixed seed and order. A prompt that ends by offering answers
("Reply GRADE: C or GRADE: I.") gets a sentence of filler and then one of them, drawn the same
way, so a model-graded scorer grades. It must not know about HTTP or SSE.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Reply",
    "content_key",
    "estimate_tokens",
    "generate",
    "offered_answers",
    "random_for",
    "words",
]

# Fields that cut or transport the reply but do not change what the "model" would say.
_NOT_CONTENT = frozenset({"stream", "max_tokens", "max_tokens_to_sample", "stop_sequences"})

# Function words come up often, so that a test can stop on one (" the", " of") deterministically.
# (Word lists read better as prose, hence str.split.)
_COMMON = (  # noqa: SIM905
    "the the the of of and and to to a a in is that it for with as on was be by this are or at "
    "from not but we which can have an they their has more one all when will there its"
).split()
_CONTENT = (  # noqa: SIM905
    "model system river window garden signal market history theory language morning question "
    "answer problem method result simple quiet bright careful ancient modern common early "
    "distant gentle heavy honest local narrow patient rapid rough silent steady strange "
    "useful warm wide young building city country data evening forest friend island journey "
    "kitchen letter machine memory mountain music number ocean paper picture planet pattern "
    "process reason record season shadow story stream table teacher thought value village voice "
    "water weather winter world writer explain consider describe follow include measure notice "
    "offer prepare remember suggest understand carry change choose gather imagine improve "
    "observe produce return travel usually often perhaps quickly slowly together nearly rather "
    "almost simply clearly indeed however therefore meanwhile"
).split()
_ENDINGS = (".", ".", ".", ".", "!", "?")
# A prompt's last sentence offering answers: "Reply GRADE: C or GRADE: I." (or "A, B or C").
_OFFER = re.compile(r"\bReply (?:with )?([^\n]+? or [^\n]+?)[.!]?\s*$")


@dataclass(frozen=True, slots=True)
class Reply:
    """What the model says: the tokens in order (joined, the text) and why it stopped."""

    tokens: tuple[str, ...]
    stop_reason: str
    stop_sequence: str | None

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def content_key(body: dict[str, Any]) -> bytes:
    """A digest of the request's content: the body without the fields that only cut or carry it.

    ``output_config.effort`` is left out too: effort scales the reply's length (``scale``), so
    the same prompt at a lower effort gets a shorter reply of the same text.
    """
    content = {k: v for k, v in body.items() if k not in _NOT_CONTENT}
    config = content.get("output_config")
    if isinstance(config, dict) and "effort" in config:
        rest = {k: v for k, v in config.items() if k != "effort"}
        if rest:
            content["output_config"] = rest
        else:
            del content["output_config"]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


def random_for(seed: int, key: bytes, draw: int = 1, salt: bytes = b"") -> random.Random:
    """A generator seeded by (seed, key, draw, salt), the same in every process."""
    prefix = b"%d:" % seed if draw == 1 else b"%d:%d:" % (seed, draw)
    return random.Random(int.from_bytes(hashlib.sha256(prefix + salt + key).digest()[:16]))


def offered_answers(prompt: str) -> tuple[str, ...]:
    """The answers ``prompt`` offers in its last sentence ("Reply X or Y.", "Reply X, Y or
    Z."), in order; none when it ends otherwise."""
    found = _OFFER.search(prompt)
    if found is None:
        return ()
    return tuple(a.strip() for a in re.split(r",\s*|\s+or\s+", found.group(1)) if a.strip())


def estimate_tokens(chars: int) -> int:
    """A cheap input token count: about four characters a token, at least one."""
    return max(1, math.ceil(chars / 4))


def words(rng: random.Random) -> Iterator[str]:
    """Endless English-looking tokens, each word with its leading space, punctuation bare."""
    while True:
        length = rng.randint(4, 16)
        for i in range(length):
            word = rng.choice(_COMMON) if rng.random() < 0.45 else rng.choice(_CONTENT)
            yield " " + (word.capitalize() if i == 0 else word)
            if 0 < i < length - 1 and rng.random() < 0.08:
                yield ","
        yield rng.choice(_ENDINGS)


def generate(
    seed: int,
    key: bytes,
    *,
    min_tokens: int,
    max_tokens: int,
    cap: int,
    stop_sequences: Sequence[str] = (),
    natural_stop: str = "end_turn",
    leading_space: bool = False,
    draw: int = 1,
    scale: float = 1.0,
    answers: Sequence[str] = (),
) -> Reply:
    """The reply to the request whose :func:`content_key` is ``key``.

    Its natural length is drawn in [min_tokens, max_tokens]; ``cap`` (the request's max_tokens)
    cuts it with ``max_tokens``; the first stop sequence the text would contain cuts it just
    before that sequence with ``stop_sequence``. ``leading_space`` keeps the space before the
    first word, as the legacy API does; the Messages API starts with the bare word. ``draw``
    (1-based) numbers the replies to this body: each one is another reply. ``scale`` multiplies
    the natural length (effort). With ``answers`` (what the prompt offers: see
    :func:`offered_answers`), the reply is its first sentence and then one of them, drawn.
    """
    rng = random_for(seed, key, draw)
    natural = rng.randint(min_tokens, max(min_tokens, max_tokens))
    natural = max(1, round(natural * scale))
    stream = words(rng)
    tokens = [next(stream) for _ in range(natural)]
    if tokens[-1] not in _ENDINGS:
        tokens[-1] = "."
    if answers:  # a judge's reply: one sentence, then its verdict
        end = next(n for n, token in enumerate(tokens) if token in _ENDINGS)
        pick = random_for(seed, key, draw, b"answer").choice(list(answers))
        tokens = [*tokens[: end + 1], " " + pick]
        natural = len(tokens)
    if not leading_space:
        tokens[0] = tokens[0].lstrip()
    shown = tokens[:cap]
    stop_reason = natural_stop if natural <= cap else "max_tokens"
    return _apply_stops(shown, stop_reason, [s for s in stop_sequences if s])


def _apply_stops(tokens: list[str], stop_reason: str, stops: list[str]) -> Reply:
    """Cut ``tokens`` before the first stop sequence that their text completes, if any."""
    text = ""
    for n, token in enumerate(tokens):
        start = max(0, len(text) - max((len(s) for s in stops), default=0))
        text += token
        hits = [(i, s) for s in stops if (i := text.find(s, start)) >= 0]
        if hits:
            cut, stop = min(hits)
            return Reply(_cut(tokens[: n + 1], cut), "stop_sequence", stop)
    return Reply(tuple(tokens), stop_reason, None)


def _cut(tokens: list[str], length: int) -> tuple[str, ...]:
    """The tokens whose joined text is the first ``length`` characters (the last one may be cut)."""
    out: list[str] = []
    size = 0
    for token in tokens:
        if size + len(token) >= length:
            if length > size:
                out.append(token[: length - size])
            break
        out.append(token)
        size += len(token)
    return tuple(out)
