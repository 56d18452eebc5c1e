"""Stage 1: CSV and Parquet inputs become RequestItems; bad inputs are JobErrors naming the row."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.errors import JobError
from batchrun.job.schema import Job, load_job
from batchrun.load import inputs
from batchrun.load.inputs import check_input, iter_batches
from batchrun.load.sources import ID
from batchrun.models import InputSummary, RequestItem


def make_job(folder: Path, input_: dict[str, Any], **sections: dict[str, Any]) -> Job:
    """Write a job file in `folder` with the given input section and load it (the request
    section gets a model when it names none)."""
    sections["request"] = {"model": "claude-sonnet-5-5", **sections.get("request", {})}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "input": input_, **sections}), encoding="utf-8")
    return load_job(path)


def items(job: Job, **kwargs: Any) -> list[RequestItem]:
    return [item for batch in iter_batches(job, **kwargs) for item in batch]


def error_of(job: Job, **kwargs: Any) -> str:
    with pytest.raises(JobError) as info:
        check_input(job, **kwargs)
    return str(info.value)


def prompts(found: list[RequestItem]) -> list[str]:
    return [item.messages[0]["content"] for item in found]


@pytest.fixture
def qa_csv(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "qa.csv"
    path.write_text(
        "id,question,tone\n007,What is 2+2?,dry\n008,Où est «Paris»?,warm\n010,Why?,dry\n",
        encoding="utf-8",
    )
    return path


# --- rendering ----------------------------------------------------------------------------


def test_csv_rows_become_user_messages_with_string_ids(tmp_path: Path, qa_csv: Path) -> None:
    """CSV cells are strings (007 stays 007); the prompt is one user message, system rendered."""
    job = make_job(
        tmp_path,
        {
            "path": "data/qa.csv",
            "id_column": "id",
            "prompt": "Q: {question}",
            "system": "Be {tone}",
        },
    )
    assert items(job) == [
        RequestItem("007", 0, ({"role": "user", "content": "Q: What is 2+2?"},), "Be dry", 0),
        RequestItem("008", 0, ({"role": "user", "content": "Q: Où est «Paris»?"},), "Be warm", 1),
        RequestItem("010", 0, ({"role": "user", "content": "Q: Why?"},), "Be dry", 2),
    ]


def test_escaped_braces_and_non_ascii(tmp_path: Path, qa_csv: Path) -> None:
    """`{{` and `}}` render as braces; non-ASCII text in template and cells is kept."""
    job = make_job(tmp_path, {"path": "data/qa.csv", "prompt": "«{question}» {{json}} → {tone}"})
    assert prompts(items(job))[1] == "«Où est «Paris»?» {json} → warm"


def test_id_defaults_to_row_number_across_a_glob(tmp_path: Path) -> None:
    """Without id_column the id is the 0-based row number, counted across all matched files."""
    pl.DataFrame({"q": ["a", "b"]}).write_csv(tmp_path / "p1.csv")
    pl.DataFrame({"q": ["c"]}).write_csv(tmp_path / "p2.csv")
    job = make_job(tmp_path, {"path": "p*.csv", "prompt": "{q}"})
    found = items(job)
    assert [(i.id, i.row) for i in found] == [("0", 0), ("1", 1), ("2", 2)]
    assert prompts(found) == ["a", "b", "c"]


def test_parquet_ids_are_cast_to_strings(tmp_path: Path) -> None:
    """Parquet ids of any scalar type become strings; numeric template cells render as text."""
    pl.DataFrame({"id": [7, 8], "n": [1.5, 2.0], "q": ["x", "y"]}).write_parquet(
        tmp_path / "a.parquet"
    )
    job = make_job(tmp_path, {"path": "a.parquet", "id_column": "id", "prompt": "{q}={n}"})
    found = items(job)
    assert [i.id for i in found] == ["7", "8"]
    assert prompts(found) == ["x=1.5", "y=2.0"]


def test_samples_expand_in_order(tmp_path: Path, qa_csv: Path) -> None:
    """Each row yields `samples` items, sample 0..n-1, rows in file order."""
    job = make_job(
        tmp_path,
        {"path": "data/qa.csv", "id_column": "id", "prompt": "{question}"},
        request={"samples": 3},
    )
    assert [(i.id, i.sample) for i in items(job)] == [
        (ident, s) for ident in ["007", "008", "010"] for s in range(3)
    ]
    assert check_input(job) == InputSummary(rows=3, requests=9, columns=["id", "question", "tone"])


def test_limit_takes_the_first_rows(tmp_path: Path, qa_csv: Path) -> None:
    """`limit` keeps the first N input rows, before samples are expanded."""
    job = make_job(
        tmp_path,
        {"path": "data/qa.csv", "id_column": "id", "prompt": "{question}"},
        request={"samples": 2},
    )
    assert [(i.id, i.sample) for i in items(job, limit=2)] == [
        ("007", 0),
        ("007", 1),
        ("008", 0),
        ("008", 1),
    ]
    assert check_input(job, limit=2) == InputSummary(2, 4, ["id", "question", "tone"])
    assert check_input(job, limit=100).rows == 3


def test_limit_across_files(tmp_path: Path) -> None:
    """`limit` counts rows across the files of a glob, and checks only those rows."""
    pl.DataFrame({"q": ["a", "b"]}).write_csv(tmp_path / "p1.csv")
    pl.DataFrame({"q": [None, "d"]}).write_csv(tmp_path / "p2.csv")  # row 1 of p2 is bad
    job = make_job(tmp_path, {"path": "p*.csv", "prompt": "{q}"})
    assert prompts(items(job, limit=2)) == ["a", "b"]
    assert check_input(job, limit=2).rows == 2
    assert "p2.csv: data row 1 (1-based)" in error_of(job, limit=3)


def test_limit_must_be_positive(tmp_path: Path, qa_csv: Path) -> None:
    """A limit below 1 is a JobError."""
    job = make_job(tmp_path, {"path": "data/qa.csv", "prompt": "{question}"})
    assert error_of(job, limit=0) == "--limit must be at least 1 (got 0)"


def test_batches_are_bounded_and_ordered(tmp_path: Path) -> None:
    """Batches come from at most batch_rows rows each and keep row order."""
    pl.DataFrame({"q": [f"q{i}" for i in range(2500)]}).write_parquet(tmp_path / "a.parquet")
    job = make_job(tmp_path, {"path": "a.parquet", "prompt": "{q}"}, request={"samples": 2})
    batches = list(iter_batches(job, batch_rows=300))
    assert all(0 < len(b) <= 600 for b in batches)
    flat = [i for b in batches for i in b]
    assert [i.row for i in flat] == [r for r in range(2500) for _ in range(2)]
    assert prompts(flat)[-1] == "q2499"


SMALL_CHUNKS = 4  # files read 4 rows at a time, so a few rows cross chunk boundaries


def test_chunks_join_across_files_and_limit(tmp_path: Path) -> None:
    """Reading in chunks keeps order, row numbers across files, batch bounds and the limit."""
    pl.DataFrame({"q": [f"a{i}" for i in range(7)]}).write_parquet(tmp_path / "p1.parquet")
    pl.DataFrame({"q": [f"b{i}" for i in range(6)]}).write_parquet(tmp_path / "p2.parquet")
    job = make_job(tmp_path, {"path": "p*.parquet", "prompt": "{q}"}, request={"samples": 2})
    expected = [f"a{i}" for i in range(7)] + [f"b{i}" for i in range(6)]
    for batch_rows in (1, 3, 4, 100):
        batches = list(iter_batches(job, batch_rows=batch_rows, chunk_rows=SMALL_CHUNKS))
        assert all(0 < len(b) <= 2 * batch_rows for b in batches)
        flat = [i for b in batches for i in b]
        assert [(i.id, i.row, i.sample) for i in flat] == [
            (str(r), r, s) for r in range(13) for s in range(2)
        ]
        assert prompts(flat)[::2] == expected
    for limit in (3, 4, 7, 9, 13, 50):
        found = items(job, limit=limit, chunk_rows=SMALL_CHUNKS)
        assert prompts(found)[::2] == expected[:limit]
        assert check_input(job, limit=limit, chunk_rows=SMALL_CHUNKS).rows == min(limit, 13)


def test_problems_past_the_first_chunk_name_their_rows(tmp_path: Path) -> None:
    """Null ids, null cells and bad conversations are counted and listed across chunks."""
    good = '[{"role": "user", "content": "fine"}]'
    ids = ["a", None, "c", "", "e", None, "g", None, "i", None, "k"]
    cells = [good] * 5 + ["[]", good, good, "[]", good, "nope"]
    pl.DataFrame({"id": ids, "m": cells}).write_csv(tmp_path / "c.csv")
    job = make_job(tmp_path, {"path": "c.csv", "id_column": "id", "messages_column": "m"})
    null_id = "input.id_column 'id' is null or empty; every row needs an id"
    assert error_of(job, chunk_rows=SMALL_CHUNKS).splitlines() == [
        *[f"c.csv: data row {n} (1-based): {null_id}" for n in (2, 4, 6, 8, 10)],
        "c.csv: data row 6 (1-based): input.messages_column 'm': the cell must be a non-empty "
        'list of {role, content} messages, e.g. [{"role": "user", "content": "Hi"}]',
        "c.csv: data row 9 (1-based), id 'i': input.messages_column 'm': the cell must be a "
        'non-empty list of {role, content} messages, e.g. [{"role": "user", "content": "Hi"}]',
        "c.csv: data row 11 (1-based), id 'k': input.messages_column 'm': the cell is not valid "
        "JSON: Expecting value at character 0",
    ]
    pl.DataFrame({"q": ["x"] * 5 + [None, "x", "  ", None, "x"]}).write_csv(tmp_path / "q.csv")
    job = make_job(tmp_path, {"path": "q.csv", "prompt": "{q}"})
    assert error_of(job, chunk_rows=SMALL_CHUNKS).splitlines() == [
        "q.csv: data row 6 (1-based): column 'q' is null (input.prompt uses it)",
        "q.csv: data row 8 (1-based): the rendered prompt is empty (input.prompt: '{q}')",
        "q.csv: data row 9 (1-based): column 'q' is null (input.prompt uses it)",
    ]


def test_duplicate_ids_are_found_past_a_hash_collision(tmp_path: Path) -> None:
    """Ids are compared by hash first; equal hashes are checked on the ids themselves, so a
    collision is no duplicate and a real duplicate is still reported with its count."""
    by_length = pl.col(ID).str.len_bytes().cast(pl.UInt64)
    pl.DataFrame({"id": ["ab", "cd", "ef"], "q": ["x"] * 3}).write_csv(tmp_path / "a.csv")
    job = make_job(tmp_path, {"path": "a.csv", "id_column": "id", "prompt": "{q}"})
    assert check_input(job, id_hash=by_length).rows == 3
    pl.DataFrame({"id": ["ab", "cd", "ab", "e"], "q": ["x"] * 4}).write_csv(tmp_path / "a.csv")
    assert error_of(job, id_hash=by_length).startswith(
        "a.csv: input.id_column 'id' has duplicate ids: 'ab' (2 rows); ids must be unique"
    )


def test_system_template_rendering_empty_means_none(tmp_path: Path) -> None:
    """A system template that renders to nothing sends no system prompt."""
    pl.DataFrame({"q": ["a"], "s": [""]}).write_parquet(tmp_path / "a.parquet")
    job = make_job(tmp_path, {"path": "a.parquet", "prompt": "{q}", "system": "{s}"})
    assert items(job)[0].system is None


@settings(max_examples=25)
@given(
    st.lists(st.text(min_size=1).filter(str.strip), min_size=1, max_size=5),
    st.text(),
    st.text(),
)
def test_rendering_equals_str_format(values: list[str], before: str, after: str) -> None:
    """The vectorised rendering gives what str.format gives, braces in the text included."""

    def escape(text: str) -> str:
        return text.replace("{", "{{").replace("}", "}}")

    template = escape(before) + "{v}" + escape(after)
    with tempfile.TemporaryDirectory() as folder:
        pl.DataFrame({"v": values}).write_parquet(Path(folder) / "a.parquet")
        job = make_job(Path(folder), {"path": "a.parquet", "prompt": template})
        assert prompts(items(job)) == [template.format(v=v) for v in values]


# --- messages_column ----------------------------------------------------------------------


def test_messages_from_parquet_list_of_structs(tmp_path: Path) -> None:
    """A Parquet list of {role, content} structs becomes the conversation, in order."""
    conversations = [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
        ],
    ]
    pl.DataFrame({"id": ["a", "b"], "m": conversations}).write_parquet(tmp_path / "c.parquet")
    job = make_job(tmp_path, {"path": "c.parquet", "id_column": "id", "messages_column": "m"})
    found = items(job)
    assert [list(i.messages) for i in found] == conversations
    assert check_input(job).rows == 2


def test_messages_with_content_blocks_drop_null_struct_fields(tmp_path: Path) -> None:
    """Content blocks from Parquet structs keep only the fields that are set."""
    blocks = [{"type": "text", "text": "hello", "cache_control": None}]
    pl.DataFrame({"m": [[{"role": "user", "content": blocks}]]}).write_parquet(
        tmp_path / "c.parquet"
    )
    job = make_job(tmp_path, {"path": "c.parquet", "messages_column": "m"})
    check_input(job)
    assert items(job)[0].messages == (
        {"role": "user", "content": [{"type": "text", "text": "hello"}]},
    )


def test_messages_from_json_text_in_csv(tmp_path: Path) -> None:
    """A CSV column of JSON text holds conversations; a system template can go with them."""
    conv = [{"role": "user", "content": "hé"}, {"role": "assistant", "content": "{"}]
    pl.DataFrame({"m": [json.dumps(conv, ensure_ascii=False)], "s": ["terse"]}).write_csv(
        tmp_path / "c.csv"
    )
    job = make_job(tmp_path, {"path": "c.csv", "messages_column": "m", "system": "Be {s}"})
    check_input(job)
    assert items(job) == [RequestItem("0", 0, tuple(conv), "Be terse", 0)]


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [
        ("not json", "the cell is not valid JSON: Expecting value at character 0"),
        ('{"role": "user"}', "must be a non-empty list of {role, content} messages"),
        ("[]", "must be a non-empty list"),
        ('[{"role": "system", "content": "x"}]', "message 1 has role 'system'"),
        (
            '[{"role": "assistant", "content": "x"}]',
            "must start with a user message, not assistant",
        ),
        ('[{"role": "user", "content": "  "}]', "message 1 has empty content"),
        ('[{"role": "user", "content": []}]', "message 1 has empty content"),
        ('[{"role": "user", "content": [{"type": "text", "text": ""}]}]', "empty content"),
        ('[{"role": "user", "content": "x", "name": "n"}]', "exactly role and content"),
        ('[{"role": "user", "content": 3}]', "message 1 has empty content"),
        (
            '[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]',
            "messages 1 and 2 are both user: roles must alternate",
        ),
        (
            '[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, '
            '{"role": "assistant", "content": "c"}]',
            "messages 2 and 3 are both assistant",
        ),
        (
            '[{"role": "user", "content": "a"}, {"role": "assistant", "content": "So, "}]',
            "message 2 (the assistant prefill) ends in whitespace",
        ),
        (
            '[{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]',
            "message 2 has empty content",
        ),
        ('[{"role": "user", "content": [{"text": "x"}]}]', "message 1 has empty content"),
        ("[" * 5000, "is not valid JSON"),
    ],
)
def test_bad_messages_cell_names_row_and_id(tmp_path: Path, cell: str, fragment: str) -> None:
    """Each malformed conversation is reported with file, data row, id and column."""
    good = '[{"role": "user", "content": "fine"}]'
    pl.DataFrame({"id": ["a", "b"], "m": [good, cell]}).write_csv(tmp_path / "c.csv")
    job = make_job(tmp_path, {"path": "c.csv", "id_column": "id", "messages_column": "m"})
    message = error_of(job)
    assert message.startswith("c.csv: data row 2 (1-based), id 'b': input.messages_column 'm': ")
    assert fragment in message
    with pytest.raises(JobError, match="data row 2"):
        items(job)


def test_null_messages_cell(tmp_path: Path) -> None:
    """A missing conversation is an error naming the row."""
    pl.DataFrame({"m": [None]}, schema={"m": pl.String}).write_parquet(tmp_path / "c.parquet")
    job = make_job(tmp_path, {"path": "c.parquet", "messages_column": "m"})
    assert error_of(job) == (
        "c.parquet: data row 1 (1-based): input.messages_column 'm': the cell is null; "
        "every row needs a conversation"
    )


def test_complete_api_takes_text_content_only(tmp_path: Path) -> None:
    """For api: complete, content blocks cannot be sent: refused at validation."""
    cell = json.dumps([{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    pl.DataFrame({"m": [cell]}).write_csv(tmp_path / "c.csv")
    job = make_job(tmp_path, {"path": "c.csv", "messages_column": "m"}, request={"api": "complete"})
    assert "api complete takes text content only" in error_of(job)


def test_messages_column_of_wrong_type(tmp_path: Path) -> None:
    """A messages column that is neither text nor a list of structs is refused by type."""
    pl.DataFrame({"m": [1]}).write_parquet(tmp_path / "c.parquet")
    job = make_job(tmp_path, {"path": "c.parquet", "messages_column": "m"})
    assert error_of(job).startswith("c.parquet: input.messages_column column 'm' is Int64;")


# --- bad inputs ---------------------------------------------------------------------------


def test_missing_template_column_names_key_and_columns(tmp_path: Path, qa_csv: Path) -> None:
    """A template column the file lacks is named, with the template key, a guess and the columns."""
    job = make_job(tmp_path, {"path": "data/qa.csv", "prompt": "{questoin}", "system": "{mood}"})
    assert error_of(job).splitlines() == [
        "data/qa.csv: input.prompt uses column 'questoin', which the file does not have; "
        "did you mean 'question'? (columns: id, question, tone)",
        "data/qa.csv: input.system uses column 'mood', which the file does not have "
        "(columns: id, question, tone)",
    ]


def test_missing_id_column(tmp_path: Path, qa_csv: Path) -> None:
    """An id_column the file lacks is named."""
    job = make_job(tmp_path, {"path": "data/qa.csv", "id_column": "ID", "prompt": "{question}"})
    assert error_of(job).startswith(
        "data/qa.csv: input.id_column uses column 'ID', which the file does not have; "
        "did you mean 'id'?"
    )


def test_null_template_cell_names_row_id_and_column(tmp_path: Path) -> None:
    """A null cell a template uses is an error naming file, 1-based data row, id and column."""
    (tmp_path / "a.csv").write_text("id,q,s\nx1,hello,terse\nx2,,terse\nx3,hi,\n", encoding="utf-8")
    job = make_job(tmp_path, {"path": "a.csv", "id_column": "id", "prompt": "{q}", "system": "{s}"})
    assert error_of(job).splitlines() == [
        "a.csv: data row 2 (1-based), id 'x2': column 'q' is null (input.prompt uses it)",
        "a.csv: data row 3 (1-based), id 'x3': column 's' is null (input.system uses it)",
    ]
    with pytest.raises(JobError, match=r"a\.csv: data row 2 \(1-based\), id 'x2'"):
        items(job)


def test_empty_rendered_prompt(tmp_path: Path) -> None:
    """A prompt that renders to blank text is an error naming the row."""
    (tmp_path / "a.csv").write_text('q\nfine\n"  "\n', encoding="utf-8")
    job = make_job(tmp_path, {"path": "a.csv", "prompt": "{q}"})
    assert (
        error_of(job)
        == "a.csv: data row 2 (1-based): the rendered prompt is empty (input.prompt: '{q}')"
    )


def test_null_ids_are_listed_with_rows(tmp_path: Path) -> None:
    """Rows without an id are errors, listed by row number (at most five, then a count)."""
    (tmp_path / "a.csv").write_text(
        "id,q\n" + "\n".join([",x"] * 7 + ["k,x"]) + "\n", encoding="utf-8"
    )
    job = make_job(tmp_path, {"path": "a.csv", "id_column": "id", "prompt": "{q}"})
    assert error_of(job).splitlines() == [
        *[
            f"a.csv: data row {n} (1-based): input.id_column 'id' is null or empty; "
            "every row needs an id"
            for n in range(1, 6)
        ],
        "... and 2 more like this",
    ]


def test_duplicate_ids_are_listed_with_counts(tmp_path: Path) -> None:
    """Duplicate ids, across files too, are reported with their counts, most repeated first."""
    ids = ["a", "a", "a", "b", "b", "c", "d", "d", "e", "e", "f", "f", "g", "g", "h"]
    pl.DataFrame({"id": ids[:8], "q": ["x"] * 8}).write_csv(tmp_path / "p1.csv")
    pl.DataFrame({"id": ids[8:], "q": ["x"] * 7}).write_csv(tmp_path / "p2.csv")
    job = make_job(tmp_path, {"path": "p*.csv", "id_column": "id", "prompt": "{q}"})
    assert error_of(job) == (
        "p*.csv: input.id_column 'id' has duplicate ids: 'a' (3 rows), 'b' (2 rows), "
        "'d' (2 rows), 'e' (2 rows), 'f' (2 rows), and 1 more; ids must be unique: fix the "
        "data, or remove input.id_column to number the rows instead"
    )


def test_non_utf8_csv_names_the_file_and_line(tmp_path: Path) -> None:
    """A CSV that is not UTF-8 is a JobError naming the file, the line and the fix."""
    (tmp_path / "a.csv").write_bytes(b"q\nok\n\xff\xfe bad\n")
    job = make_job(tmp_path, {"path": "a.csv", "prompt": "{q}"})
    message = error_of(job)
    assert message.startswith("a.csv: line 3: not UTF-8 text (byte 0xff at offset 5): save it")
    with pytest.raises(JobError, match=r"a\.csv: line 3: not UTF-8"):
        items(job)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("id,q\nr1,ok\n".encode("utf-16"), "a.csv: is UTF-16 text, not UTF-8"),
        (b"id,q\xe9\nr1,ok\n", "a.csv: line 1: not UTF-8 text (byte 0xe9 at offset 4)"),
        (b"id,q\nr1,\x00\n", "a.csv: holds NUL bytes"),
    ],
)
def test_csv_encoding_is_sniffed(tmp_path: Path, data: bytes, fragment: str) -> None:
    """UTF-16, NUL bytes and a bad header byte are caught before polars reads on with them."""
    (tmp_path / "a.csv").write_bytes(data)
    job = make_job(tmp_path, {"path": "a.csv", "id_column": "id", "prompt": "{q}"})
    assert error_of(job).startswith(fragment)


def test_non_utf8_far_into_a_csv_is_located(tmp_path: Path) -> None:
    """A bad byte past the first MiB, and a character split between reads, are placed right."""
    line = "r,\u00e9t\u00e9 \u2014 long enough\n"
    body = line * (2 * (1 << 20) // len(line.encode()))
    (tmp_path / "a.csv").write_bytes(b"id,q\n" + body.encode() + b"x,\xc3(\n")
    job = make_job(tmp_path, {"path": "a.csv", "prompt": "{q}"})
    lines = body.count("\n") + 2
    assert error_of(job).startswith(f"a.csv: line {lines}: not UTF-8 text (byte 0xc3 ")


def test_ragged_csv_names_the_line(tmp_path: Path) -> None:
    """A line with more fields than the header is named, with the usual cause."""
    (tmp_path / "a.csv").write_text("id,q\nr1,ok\nr2,a, b\n", encoding="utf-8")
    job = make_job(tmp_path, {"path": "a.csv", "prompt": "{q}"})
    assert error_of(job) == (
        "a.csv: line 3: 3 fields, but the header has 2; put cells that hold commas in double quotes"
    )


def test_truncated_parquet_names_the_file(tmp_path: Path) -> None:
    """A truncated Parquet file is a JobError naming the file."""
    pl.DataFrame({"q": ["x"] * 1000}).write_parquet(tmp_path / "a.parquet")
    data = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "a.parquet").write_bytes(data[: len(data) // 2])
    job = make_job(tmp_path, {"path": "a.parquet", "prompt": "{q}"})
    message = error_of(job)
    assert message.startswith("a.parquet: not a readable Parquet file (")
    assert "cut short" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "a.csv: the file is empty; a CSV needs a header row and at least one data row"),
        ("q\n", "input.path 'a.csv': the input has a header but no data rows; add rows"),
    ],
)
def test_empty_csv(tmp_path: Path, content: str, expected: str) -> None:
    """An empty CSV, or one with a header only, is a JobError."""
    (tmp_path / "a.csv").write_text(content, encoding="utf-8")
    job = make_job(tmp_path, {"path": "a.csv", "prompt": "{q}"})
    assert error_of(job).startswith(expected)


def test_mixed_kinds_in_one_glob(tmp_path: Path) -> None:
    """A glob matching both CSV and Parquet files is refused."""
    pl.DataFrame({"q": ["x"]}).write_csv(tmp_path / "a.csv")
    pl.DataFrame({"q": ["x"]}).write_parquet(tmp_path / "b.parquet")
    job = make_job(tmp_path, {"path": "*", "prompt": "{q}"})
    with pytest.raises(JobError):
        check_input(job)
    job = make_job(tmp_path, {"path": "[ab].*", "prompt": "{q}"})
    assert error_of(job) == (
        "input.path '[ab].*' matches both .csv and .parquet files; "
        "use a pattern that matches one kind, e.g. *.csv"
    )


def test_unknown_extension_names_the_file(tmp_path: Path) -> None:
    """Only .csv and .parquet are read; another file is named."""
    (tmp_path / "a.json").write_text("[]", encoding="utf-8")
    job = make_job(tmp_path, {"path": "a.json", "prompt": "{q}"})
    assert error_of(job) == (
        "a.json: input.path names a .json file; input files must be .csv or .parquet "
        "(convert it, or fix input.path)"
    )


def test_missing_input_file(tmp_path: Path) -> None:
    """A missing input file is a JobError naming input.path."""
    job = make_job(tmp_path, {"path": "nope.csv", "prompt": "{q}"})
    assert error_of(job) == (
        "input.path: no such file: nope.csv (relative paths start at the job file's folder, "
        f"{tmp_path.resolve()}; fix input.path)"
    )


def test_nested_template_column_is_refused(tmp_path: Path) -> None:
    """A template column must hold scalars, not lists."""
    pl.DataFrame({"q": [[1, 2]]}).write_parquet(tmp_path / "a.parquet")
    job = make_job(tmp_path, {"path": "a.parquet", "prompt": "{q}"})
    assert error_of(job) == "a.parquet: input.prompt column 'q' is List(Int64), not a scalar"


def test_input_outside_job_folder_is_named_absolute(tmp_path: Path) -> None:
    """A file outside the job's folder is named by its absolute path."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "a.csv").write_text("q\n\n", encoding="utf-8")
    (tmp_path / "a.csv").write_text('q\n"  "\n', encoding="utf-8")
    job = make_job(tmp_path / "jobs", {"path": str(tmp_path / "a.csv"), "prompt": "{q}"})
    assert error_of(job).startswith(f"{tmp_path / 'a.csv'}: data row 1 (1-based)")


@pytest.mark.parametrize(
    ("hashes", "repeated"),
    [([], []), ([[1]], []), ([[1, 1]], [1]), ([[2, 1, 2], [3, 3], [3]], [2, 3]), ([[5], [5]], [5])],
)
def test_repeated_hashes(hashes: list[list[int]], repeated: list[int]) -> None:
    """The duplicate check's first step: which hashes occur more than once, across chunks."""
    chunks = [pl.Series("h", values, dtype=pl.UInt64) for values in hashes]
    assert sorted(inputs._repeated(chunks)) == repeated
    assert chunks == []
