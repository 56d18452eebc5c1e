"""What an unknown job key was meant to be: "did you mean", in order of likelihood.

For a key the job file's schema does not know, in its section, :func:`suggest` finds, first
found wins:

1. the same key written another way (``maxTokens``, ``max-tokens``, ``Max_Tokens``), in its
   own section;
2. batchrun's key for a name the API or other tools use (``max_tokens_to_sample``, ``stop``,
   ``system_prompt``, ``rpm``, ``cache_control``, ...), keys of the same section first;
3. a field of the Messages API request body that batchrun has no key for (``container``,
   ``mcp_servers``, ...): it goes in ``request.extra``, sent in the body as it is;
4. a near spelling among the keys of its own section;
5. the same key in another section (``concurrency`` at the top level), then a looser spelling
   in its own section;
6. a near spelling among the keys of other sections.

Suggestions are only keys the schema has, so a name whose key is not there is never offered.
Pure: no files, no YAML documents. :mod:`batchrun.job.messages` (the file) and
:mod:`batchrun.job.reader` (``--set``) put the answer into words, with the two hints here.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = [
    "API_ONLY_FIELDS",
    "OTHER_NAMES",
    "STREAM_HINT",
    "Suggestion",
    "extra_hint",
    "normalize",
    "section_keys",
    "suggest",
]

Loc = tuple[str | int, ...]

# Names the API and other clients use, mapped to batchrun's keys (dotted, several in order of
# preference). A target the schema lacks is skipped.
OTHER_NAMES: dict[str, tuple[str, ...]] = {
    # the request
    "max_tokens_to_sample": ("request.max_tokens",),  # the legacy Text Completions API
    "max_output_tokens": ("request.max_tokens",),
    "max_completion_tokens": ("request.max_tokens",),
    "max_new_tokens": ("request.max_tokens",),
    "stop": ("request.stop_sequences",),
    "n": ("request.samples",),
    "num_samples": ("request.samples",),
    "cache_control": ("request.prompt_cache",),
    "output_config": ("request.effort", "request.output_format"),
    "budget_tokens": ("request.thinking",),
    "batch": ("request.mode",),
    # the input
    "messages": ("input.messages_column", "input.prompt"),
    "system_prompt": ("input.system",),
    "user_prompt": ("input.prompt",),
    "template": ("input.prompt",),
    "prompt_template": ("input.prompt",),
    "file": ("input.path",),
    "input_file": ("input.path",),
    "input_path": ("input.path",),
    "id_col": ("input.id_column",),
    # the endpoint
    "api_key": ("endpoint.api_key_env",),
    "url": ("endpoint.base_url",),
    "host": ("endpoint.base_url",),
    "version": ("endpoint.anthropic_version",),
    "anthropic_beta": ("endpoint.betas",),
    "beta": ("endpoint.betas",),
    # limits, retries, timeouts, output
    "workers": ("limits.concurrency",),
    "max_workers": ("limits.concurrency",),
    "parallelism": ("limits.concurrency",),
    "max_concurrency": ("limits.concurrency",),
    "rpm": ("limits.requests_per_minute",),
    "itpm": ("limits.input_tokens_per_minute",),
    "otpm": ("limits.output_tokens_per_minute",),
    "max_cost": ("limits.max_cost_usd",),
    "budget_usd": ("limits.max_cost_usd",),
    "retries": ("retry.max_attempts",),
    "max_retries": ("retry.max_attempts",),
    "output_dir": ("output.dir",),
    "out_dir": ("output.dir",),
}

# Top-level fields of the Messages API request body (POST /v1/messages) that no batchrun key
# stands for; `request.extra` sends them as they are. The fields batchrun names (model,
# max_tokens, thinking, tools, metadata, ...) and those it builds (messages, system, stream,
# cache_control, output_config) are not here.
API_ONLY_FIELDS = frozenset(
    {"container", "context_management", "inference_geo", "mcp_servers", "speed"}
)
# How alike two names must be to call one a near spelling of the other (difflib's ratio); a
# looser match (difflib's 0.6) is offered only in the key's own section, after an exact key
# elsewhere: `seed` in limits is sim.seed, not limits.shared.
_CLOSE = 0.75

STREAM_HINT = (
    "batchrun sets stream itself: request.mode chooses stream (one streamed request per row) "
    "or batch (the Message Batches API)"
)


def extra_hint(key: str, *, override: bool = False) -> str:
    """Where an API field batchrun has no key for goes: ``request.extra``."""
    example = f"--set 'request.extra={{{key}: ...}}'" if override else f"extra: {{{key}: ...}}"
    return (
        f"{key} is a field of the Messages API request that batchrun has no key for: put it "
        f"under request.extra, which is sent in the request body as it is ({example})"
    )


@dataclass(frozen=True, slots=True)
class Suggestion:
    """What an unknown key was probably meant to be.

    ``keys``: the keys meant, as full paths, best first (same section first); ``exact``: the
    key is spelt right but belongs elsewhere; ``extra``: an API field for ``request.extra``;
    ``stream``: the API's ``stream`` flag, which batchrun sets itself.
    """

    keys: tuple[Loc, ...] = ()
    exact: bool = False
    extra: bool = False
    stream: bool = False


def normalize(name: str) -> str:
    """``maxTokens``, ``max-tokens`` and ``Max Tokens`` all as ``max_tokens``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[-\s.]+", "_", snake).lower()


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model inside an annotation, and whether it is the value type of a mapping (whose
    keys are names chosen by the user, as in ``prices: {MODEL: {...}}``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = get_origin(annotation)
    if origin is dict:
        model, _ = _model_in(get_args(annotation)[1])
        return model, model is not None
    if origin in (list, tuple, Union, types.UnionType):
        for arg in get_args(annotation):
            model, keyed = _model_in(arg)
            if model is not None:
                return model, keyed
    return None, False


def _model_at(root: type[BaseModel], section: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    skip_name = False
    for part in section:
        if isinstance(part, int) or skip_name:  # a list index, or a mapping's own key
            skip_name = False
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model, skip_name = _model_in(field.annotation)
    return model if not skip_name else None


def section_keys(root: type[BaseModel], section: Loc) -> list[str]:
    """The keys a section of the job file takes (none when the section is unknown)."""
    model = _model_at(root, section)
    return list(model.model_fields) if model is not None else []


def _all_keys(root: type[BaseModel], prefix: Loc = ()) -> Iterator[Loc]:
    """Every key reachable through sections (not through lists or mappings)."""
    for name, field in root.model_fields.items():
        yield (*prefix, name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from _all_keys(sub, (*prefix, name))


def _parse(path: str) -> Loc:
    return tuple(path.split("."))


def suggest(root: type[BaseModel], section: Loc, key: str) -> Suggestion | None:
    """What ``key``, unknown in ``section`` of a ``root`` document, was meant to be, if
    anything is likely."""
    here = section_keys(root, section)
    norm = normalize(key)
    by_norm = {normalize(k): k for k in here}
    if norm in by_norm and by_norm[norm] != key:  # 1. another way of writing a key here
        return Suggestion(((*section, by_norm[norm]),))
    everywhere = list(_all_keys(root))
    known = set(everywhere)
    targets = [t for t in map(_parse, OTHER_NAMES.get(norm, ())) if t in known]
    if targets:  # 2. another tool's name for a key, this section's first
        # A section inside a list holds its keys too: variants[0].request takes request's.
        names = tuple(p for p in section if isinstance(p, str))
        ours = [(*section, t[-1]) for t in targets if names[len(names) - len(t) + 1 :] == t[:-1]]
        return Suggestion((*ours, *(t for t in targets if (*section, t[-1]) not in ours)))
    if norm == "stream":
        return Suggestion(stream=True)
    if norm in API_ONLY_FIELDS:  # 3. an API field with no key
        return Suggestion(extra=True)
    close = difflib.get_close_matches(norm, list(by_norm), n=1, cutoff=_CLOSE)
    if close:  # 4. a near spelling here
        return Suggestion(((*section, by_norm[close[0]]),))
    elsewhere = [loc for loc in everywhere if normalize(str(loc[-1])) == norm]
    if elsewhere:  # 5. the same key in another section
        return Suggestion((elsewhere[0],), exact=True)
    close = difflib.get_close_matches(norm, list(by_norm), n=1)
    if close:  # 4, less sure: a looser spelling here
        return Suggestion(((*section, by_norm[close[0]]),))
    leaves = {normalize(str(loc[-1])): loc for loc in reversed(everywhere)}
    close = difflib.get_close_matches(norm, list(leaves), n=1, cutoff=_CLOSE)
    if close:  # 6. a near spelling elsewhere (a closer one than in its own section)
        return Suggestion((leaves[close[0]],))
    return None
