"""The command line: argv → job → run → exit code. No logic of its own.

``batchrun JOB.yaml`` (or ``batchrun run JOB.yaml``) runs a job; ``validate``, ``sim`` and the
other subcommands are words before the job file (a job file named like one is ``./run``).
``-q``, ``-v`` and ``--log-format`` go anywhere on every command. Errors the user can fix are
one paragraph on stderr with exit 2 (a traceback only with ``--debug``); stdout carries only
what a command is asked to print.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from batchrun.errors import (
    EXIT_INVALID,
    EXIT_IOERR,
    EXIT_LOCKED,
    JobError,
    JudgingStopped,
    RunFolderError,
    RunLockedError,
)

if TYPE_CHECKING:
    from batchrun.job.schema import Job
    from batchrun.models import RunOutcome

__all__ = ["main"]

_OVERVIEW = """\
commands:
  batchrun JOB.yaml [options]      run the job (resumes an earlier run in the same folder);
                                   also: batchrun run JOB.yaml [options]
  batchrun JOB.yaml --cancel       batch mode: cancel the run's open batches
  batchrun validate JOB.yaml       check the job file and its input; sends nothing
  batchrun JOB.yaml --shard K/N    run shard K of N (0 .. N-1) into <output.dir>/shard-K-of-N/;
                                   --shards N alone reads K from JOB_COMPLETION_INDEX
  batchrun JOB.yaml --shards N --local   run the N shards as processes here, then merge
  batchrun merge JOB.yaml          combine the job's shard folders into <output.dir>
  batchrun sim [--port P]          serve the built-in Anthropic API simulator on loopback
  batchrun score JOB.yaml          score the run folder with the job's scorers (judges only)
  batchrun report RUN_DIR [RUN_B]  summary of a run (and report.html), or two runs compared
  batchrun cache info|clear        the response cache shared across runs (cache.mode)

output: a live progress line on a terminal (retries counted on it; -v prints each retry);
JSON log lines on stderr otherwise (cron); -q prints only the closing summary and errors.

exit codes: 0 every row ok; 1 some rows ended in error; 2 the job or its input is invalid;
3 aborted by an error no retry can fix (bad key, permission, unknown model, spending limit);
69 the endpoint could not be reached (run again to resume); 74 the run folder could not be
written (disk full, I/O or permission error); 75 another run holds the run folder;
130/143 interrupted by SIGINT/SIGTERM (finished rows are on disk; run again to resume).
"""


_COMMANDS = ("run", "validate", "sim", "report", "cache", "score", "merge")


def _output_options() -> argparse.ArgumentParser:
    """-q, -v and --log-format: taken by every command, before or after its word."""
    parser = argparse.ArgumentParser(add_help=False)
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=-1,
        default=0,
        help="print only the closing summary and errors (no progress line, no log lines)",
    )
    loudness.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=1,
        help="print every log line, the detail of single requests (each retry) and debug "
        "lines included",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="log lines as JSON or readable console lines, whatever stderr is (default: "
        "console on a terminal, JSON otherwise)",
    )
    return parser


def _command(args: list[str]) -> str:
    """Take the command word out of ``args`` (the first word after any output options);
    without one, the command is ``run``."""
    index = 0
    while index < len(args) and args[index] in ("-q", "--quiet", "-v", "--verbose"):
        index += 1
    if index < len(args) and args[index] == "--log-format":
        index += 2
    elif index < len(args) and args[index].startswith("--log-format="):
        index += 1
    if index < len(args) and args[index] in _COMMANDS:
        return args.pop(index)
    return "run"


def _job_file(
    parser: argparse.ArgumentParser,
    job: str = "the job file",
    overrides: str = "override a job key by its dotted path (value parsed as YAML); "
    "repeatable, e.g. --set limits.concurrency=64",
) -> None:
    """The job file and its --set overrides: every command that reads a job takes them."""
    parser.add_argument("job", metavar="JOB.yaml", help=job)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=overrides
    )


def _job_args(parser: argparse.ArgumentParser) -> None:
    _job_file(parser)
    parser.add_argument(
        "--limit", type=_positive_int, metavar="N", help="only the first N input rows (a smoke run)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchrun",
        parents=[_output_options()],
        description="Run a prompt set through Anthropic's streaming APIs into Parquet.",
        epilog=_OVERVIEW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _job_args(parser)
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="ignore earlier results in the run folder and start over",
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="on resume, send again the rows that ended in error",
    )
    parser.add_argument(
        "--rerun-changed",
        action="store_true",
        help="on resume, send again the rows whose request the job now asks differently "
        "(a changed model, prompt or variant), replacing them; their earlier attempts stay",
    )
    parser.add_argument(
        "--cancel",
        action="store_true",
        help="batch mode: cancel the run folder's open batches and collect what they finished "
        "(canceled requests become error rows); sends nothing new",
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGINT/SIGTERM, how long requests in flight may take to finish before they "
        "are abandoned and left for the next run (default 10)",
    )
    _shard_args(parser)
    parser.add_argument(
        "--local",
        action="store_true",
        help="run the --shards N shards as N processes on this host (N: this host's cores when "
        "--shards is not given), with one progress line and one exit code, then merge them",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    return parser


def _shard_args(parser: argparse.ArgumentParser) -> None:
    """--shard K/N and --shards N: the run (or its prediction) of one shard of the job."""
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help="only shard K (0 .. N-1) of N: the rows whose stable hash of (variant, id) falls "
        "in it, into <output.dir>/shard-K-of-N/",
    )
    parser.add_argument(
        "--shards",
        type=_positive_int,
        metavar="N",
        help="the job is split in N shards; without --shard, K is read from "
        "JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's pod index)",
    )


class _Version(argparse.Action):
    """``--version``, read from the installed metadata only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from batchrun import __version__

        parser.exit(message=f"batchrun {__version__}\n")


def _validate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchrun validate",
        parents=[_output_options()],
        description="Make every check the run makes before its first request (the job, its "
        "input, the API key variable, the run folder and its lock, whether the folder's "
        "results are this job's), sending nothing and writing nothing; then say what the run "
        "would do: requests to send, done already, to send again, estimated input tokens, and "
        "the estimated cost at list prices in stream and batch mode. Takes the options that "
        "shape a run. Exit 0 when the run would start; otherwise the code the run would exit "
        "with (2 invalid, 74 unusable run folder, 75 folder in use).",
    )
    _job_args(parser)
    parser.add_argument(
        "--fresh", action="store_true", help="as the run would with --fresh: start over"
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="as the run would with --retry-errors: send again the rows that ended in error",
    )
    parser.add_argument(
        "--rerun-changed",
        action="store_true",
        help="as the run would with --rerun-changed: send again the rows whose request changed",
    )
    parser.add_argument("--json", action="store_true", help="print the prediction as JSON")
    _shard_args(parser)
    return parser


def _merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchrun merge",
        parents=[_output_options()],
        description="Combine the job's shard folders (<output.dir>/shard-K-of-N/, written by "
        "--shard K/N) into <output.dir>: results.parquet, attempts.parquet, run.json, and "
        "scores.parquet and judgements.parquet when the shards have them. Streamed; merging "
        "again gives the same files. Refuses (exit 2) shard folders of another job (their "
        "request hashes), of two different N, or missing or unfinished shards. Exit 0 when "
        "every row is ok, 1 when some ended in error.",
    )
    _job_file(
        parser,
        "the job file the shards ran",
        "the --set options the shards ran with (output.dir, request keys, ...)",
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help="merge the shards there are even when some are missing or unfinished (run.json "
        "then says which, and the merged run is not complete)",
    )
    parser.add_argument(
        "--date",
        metavar="YYYY-MM-DD",
        help="with {date} in output.dir: the UTC day the shards started (default: today)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _sim_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchrun sim",
        parents=[_output_options()],
        description="Serve the built-in simulator of the Anthropic API (Messages and legacy "
        "Text Completions, streaming) until interrupted. Point a job at it with "
        "--set endpoint.base_url=http://127.0.0.1:PORT.",
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument(
        "--job",
        metavar="JOB.yaml",
        help="take the simulator's settings from this job file's sim: section",
    )
    parser.add_argument("--seed", type=int, help="seed of the generated text")
    parser.add_argument("--ttft-s", type=float, help="time to first token, seconds")
    parser.add_argument("--token-interval-s", type=float, help="time between tokens, seconds")
    return parser


def _report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchrun report",
        parents=[_output_options()],
        description="Summarise a finished or partial run folder on stdout and write a "
        "self-contained report.html (plots, slowest and failed rows) into it. With two folders, "
        "compare them: summaries side by side with deltas, and the rows whose completion "
        "changed (matched on id and sample). Exit 0; 2 when a folder holds no results.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="one run folder, or two")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    parser.add_argument("--no-html", action="store_true", help="do not write report.html")
    parser.add_argument(
        "--rows",
        type=_positive_int,
        default=20,
        metavar="N",
        help="slowest, failed or changed rows to list (default 20)",
    )
    parser.add_argument(
        "--by",
        metavar="COLUMN",
        help="also break the summary down by an input column (joined on id), e.g. --by topic",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _score_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchrun score",
        parents=[_output_options()],
        description="Score the job's run folder with its scorers: the rows no scorer has scored "
        "yet (a scorer added to a finished run scores every row, the others none), into "
        "scores.parquet. Sends no generation request; a model scorer sends its judge requests. "
        "Exit 0; 2 when the job is invalid or its folder holds no results.",
    )
    _job_file(parser)
    parser.add_argument(
        "--rescore", metavar="NAME", help="score every row again with the scorer NAME"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _cache_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchrun cache",
        parents=[_output_options()],
        description="The response cache that jobs with cache.mode: read_write fill and jobs "
        "with read or read_write take answers from. 'info' prints its entries, size on disk "
        "and oldest entry; 'clear' removes entries (all, or those older than --older-than "
        "days). The folder is --dir, else a job file's cache.dir (--job), else "
        "$XDG_CACHE_HOME/batchrun (~/.cache/batchrun).",
    )
    parser.add_argument("action", choices=("info", "clear"), help="what to do")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--dir", metavar="DIR", help="the cache folder")
    where.add_argument(
        "--job", metavar="JOB.yaml", help="take the folder from this job's cache.dir"
    )
    parser.add_argument(
        "--older-than",
        type=_positive_float,
        metavar="DAYS",
        help="clear: only entries stored more than DAYS days ago (fractions allowed)",
    )
    parser.add_argument("--json", action="store_true", help="info: print it as JSON")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = _command(args)
    debug = "--debug" in args
    parser, handler = {
        "sim": (_sim_parser, _sim),
        "validate": (_validate_parser, _validate),
        "report": (_report_parser, _report),
        "cache": (_cache_parser, _cache),
        "score": (_score_parser, _score),
        "merge": (_merge_parser, _merge),
        "run": (_run_parser, _run),
    }[command]
    ns = parser().parse_args(args)  # --help and usage errors end here, before anything loads
    # validate logs too (a damaged checkpoint part is a warning on stderr, never on stdout)
    from batchrun.telemetry.setup import configure_logging

    json_lines = None if ns.log_format is None else ns.log_format == "json"
    configure_logging(json_lines=json_lines, verbosity=ns.verbosity)
    try:
        return handler(ns)
    except JobError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"batchrun: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except RunLockedError as exc:
        print(f"batchrun: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except JudgingStopped as exc:  # `batchrun score`: the judge's run stopped as a run stops
        print(f"batchrun: scoring stopped: {exc}", file=sys.stderr)
        return exc.exit_code
    except (RunFolderError, OSError) as exc:
        # An OSError no stage translated is still an I/O error, not "some rows failed" (1).
        if debug:
            import traceback

            traceback.print_exc()
        print(f"batchrun: error: {_io_message(exc)}", file=sys.stderr)
        return EXIT_IOERR
    except KeyboardInterrupt:
        return 130


def _io_message(exc: RunFolderError | OSError) -> str:
    if isinstance(exc, RunFolderError):
        return str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    return f"I/O error: {exc.strerror or exc}{where}; rows written before it are intact"


def _load(ns: argparse.Namespace) -> Job:
    """The job file, read and checked; its warnings (an unknown or deprecated model) on stderr."""
    from batchrun.job.schema import load_job

    job = load_job(ns.job, ns.overrides)
    for warning in job.warnings:
        print(f"batchrun: warning: {warning}", file=sys.stderr)
    return job


def _validate(ns: argparse.Namespace) -> int:
    import asyncio

    from batchrun.preflight import describe, predict

    job = _sharded(_load(ns), ns, whole="leave --shards out to validate the whole job")
    seen = asyncio.run(
        predict(
            job,
            limit=ns.limit,
            fresh=ns.fresh,
            retry_errors=ns.retry_errors,
            rerun_changed=ns.rerun_changed,
        )
    )
    if ns.json:
        import json

        print(json.dumps(seen.as_json(), indent=2))
    else:
        print(describe(seen, shown=ns.job, retry_errors=ns.retry_errors))
    return 0


def _run(ns: argparse.Namespace) -> int:
    import asyncio

    from batchrun.run import run_job

    job = _load(ns)
    if ns.local:
        from batchrun.shard.local import run_local

        return run_local(
            job, ns.job, _passed_on(ns), shards=ns.shards, shard=ns.shard, limit=ns.limit
        )
    job = _sharded(job, ns)
    if ns.cancel:
        from batchrun.run import cancel_job

        outcome = asyncio.run(cancel_job(job, limit=ns.limit))
    else:
        outcome = asyncio.run(
            run_job(
                job,
                limit=ns.limit,
                fresh=ns.fresh,
                retry_errors=ns.retry_errors,
                rerun_changed=ns.rerun_changed,
                grace_s=ns.grace_s,
            )
        )
    print(_summary(outcome), file=sys.stderr)
    return outcome.exit_code


def _sharded(job: Job, ns: argparse.Namespace, whole: str | None = None) -> Job:
    """The job, or the shard of it that --shard K/N (or --shards N and JOB_COMPLETION_INDEX)
    names; ``whole``: how this command covers every shard, should K be missing."""
    from batchrun.shard import Shard

    if ns.shard is not None:
        shard = Shard.parse(ns.shard)
        if ns.shards is not None and ns.shards != shard.count:
            raise JobError(f"--shard {ns.shard} and --shards {ns.shards} disagree on N")
        return job.with_shard(shard)
    if ns.shards is not None:
        return job.with_shard(Shard.from_env(ns.shards, whole=whole))
    return job


def _passed_on(ns: argparse.Namespace) -> list[str]:
    """The options of this command line that each shard's process of --local runs with."""
    args = [arg for kv in ns.overrides for arg in ("--set", kv)]
    args += ["--limit", str(ns.limit)] if ns.limit is not None else []
    args += ["--grace-s", str(ns.grace_s)]
    flags = (
        ("--fresh", ns.fresh),
        ("--retry-errors", ns.retry_errors),
        ("--rerun-changed", ns.rerun_changed),
    )
    args += [flag for flag, on in flags if on]
    if ns.cancel:
        raise JobError("--cancel applies to one run folder: give --shard K/N, not --local")
    return args


def _merge(ns: argparse.Namespace) -> int:
    from batchrun.shard.merge import merge_job

    merged = merge_job(_load(ns), partial=ns.partial, day=ns.date)
    print(merged.line, file=sys.stderr)
    return merged.exit_code


def _summary(outcome: RunOutcome) -> str:
    """The closing lines: how the run ended, what --limit left out, its cost, where the results
    are."""
    ok, error = outcome.counts.get("ok", 0), outcome.counts.get("error", 0)
    covered = ""
    if outcome.limited:
        total = "?" if outcome.input_rows_total is None else f"{outcome.input_rows_total:,}"
        covered = f"{outcome.input_rows or 0:,} of {total} rows (--limit): "
    cost = f"; {outcome.cost}" if outcome.cost else ""
    line = (
        f"batchrun: {outcome.status}: {covered}{ok} ok, {error} error{cost}; "
        f"results in {outcome.run_dir / 'results.parquet'}"
    )
    if outcome.message:
        line += f"\nbatchrun: {outcome.message}"
    return line


def _report(ns: argparse.Namespace) -> int:
    from batchrun.report import report_command

    if len(ns.runs) > 2:
        _report_parser().error("give one run folder, or two to compare")
    return report_command(ns.runs, as_json=ns.json, html=not ns.no_html, rows=ns.rows, by=ns.by)


def _score(ns: argparse.Namespace) -> int:
    import asyncio

    from batchrun.score import score_run

    outcome = asyncio.run(score_run(_load(ns), rescore=ns.rescore))
    for name, rows in outcome.scored.items():
        unscored = outcome.unscored[name]
        print(
            f"batchrun: scored {rows} rows with {name} ({unscored} without a score)",
            file=sys.stderr,
        )
    if not outcome.scored:
        print("batchrun: every row has its scores already", file=sys.stderr)
    print(f"batchrun: scores in {outcome.run_dir / 'scores.parquet'}", file=sys.stderr)
    return 0


def _cache(ns: argparse.Namespace) -> int:
    import sqlite3
    from pathlib import Path

    from batchrun.record.response_cache import ResponseCache, cache_file

    folder: Path | str | None = ns.dir
    if ns.job:
        from batchrun.job.schema import load_job

        job = load_job(ns.job)
        folder = job.base_dir / Path(job.cache.dir).expanduser() if job.cache.dir else None
    cache = ResponseCache(cache_file(folder))
    try:
        if ns.action == "clear":
            older_than_s = ns.older_than * 86400 if ns.older_than is not None else None
            gone = cache.clear(older_than_s)
            print(f"removed {gone} entries from {cache.path}")
            return 0
        info = cache.info().as_json()
    except sqlite3.Error as exc:
        print(f"batchrun: error: {cache.path}: not a usable cache: {exc}", file=sys.stderr)
        return EXIT_IOERR
    if ns.json:
        import json

        print(json.dumps(info, indent=2))
    else:
        print(
            f"{info['path']}: {info['entries']} entries, {info['size_bytes']:,} bytes, "
            f"oldest {info['oldest'] or '-'}"
        )
    return 0


def _sim(ns: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from batchrun.sim import serve
    from batchrun.sim.config import SimConfig

    config = SimConfig()
    if ns.job:
        from batchrun.job.schema import load_job

        config = load_job(ns.job).sim
    changes = {
        key: value
        for key, value in (
            ("seed", ns.seed),
            ("ttft_s", ns.ttft_s),
            ("token_interval_s", ns.token_interval_s),
        )
        if value is not None
    }
    config = SimConfig.model_validate({**config.model_dump(), **changes})
    if ns.verbosity >= 0:
        print(
            f"batchrun sim: serving on http://{ns.host}:{ns.port} (Ctrl-C to stop)",
            file=sys.stderr,
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host=ns.host, port=ns.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
