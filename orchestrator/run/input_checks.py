"""Preflight of input files: the columns each source needs, on its first rows, and unique custom_ids.

A wrong file (the wrong columns, not JSON, UTF-16) would fail every row, so it is refused before
the job starts; a single bad line among good ones is a warning: it fails only its own row. Files
are streamed (local or s3://): the first rows are read, plus one pass over an OpenAI Batch file
for its custom_ids, holding 8 bytes per line.
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from orchestrator import defaults
from orchestrator.errors import Problem, StorageError
from orchestrator.spec.quality import REFERENCE_COLUMNS
from orchestrator.storage.reader import open_input

PROMPT_COLUMNS = ("prompt", "messages")
BATCH_COLUMNS = ("custom_id", "method", "url", "body")
SHOWN_LINES = 3  # bad lines named in one message
_LEADING_ID = re.compile(rb'\s*\{\s*"custom_id"\s*:\s*("(?:[^"\\]|\\.)*")\s*,')


@dataclass(frozen=True)
class Source:
    """One input a spec reads: its field, URI, the columns it needs and how strict its reader is."""

    field: str
    uri: str
    kind: str  # prompts | batch | real
    strict: bool = False  # its reader fails on any bad line (quality reference, mix), not just that row


@dataclass
class Findings:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def _missing(record: dict[str, Any], kind: str) -> str | None:
    """Why a record lacks what its source needs, or None."""
    if kind == "batch":
        absent = [c for c in BATCH_COLUMNS if c not in record]
        return f"missing {', '.join(absent)} (an OpenAI Batch line has {', '.join(BATCH_COLUMNS)})" if absent else None
    wanted = PROMPT_COLUMNS if kind == "prompts" else REFERENCE_COLUMNS
    if any(c in record for c in wanted):
        return None
    has = ", ".join(sorted(map(str, record))) or "none"
    return f"no {' or '.join(f'`{c}`' for c in wanted)} column (it has: {has})"


def parse_line(line: bytes) -> dict[str, Any] | str:
    """One JSONL line as an object, or why it is not one: decoding, JSON, an object."""
    try:
        text = line.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}); is the file UTF-8?"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at column {e.colno})"
    except RecursionError:
        return "nested too deep"
    return record if isinstance(record, dict) else "not a JSON object"


def _line_problem(line: bytes, kind: str) -> str | None:
    """Why one JSONL line is unusable, or None: decoding, JSON, an object, the columns."""
    record = parse_line(line)
    return record if isinstance(record, str) else _missing(record, kind)


def _first_lines(uri: str) -> list[tuple[int, bytes]]:
    """(1-based file line number, bytes) of the first INPUT_CHECK_LINES non-blank lines."""
    with open_input(uri) as f:
        numbered = ((n, line) for n, line in enumerate(f, start=1) if line.strip())
        return list(islice(numbered, defaults.INPUT_CHECK_LINES))


def _jsonl_findings(source: Source) -> Findings:
    lines = _first_lines(source.uri)
    bad = [(n, why) for n, line in lines if (why := _line_problem(line, source.kind)) is not None]
    found = Findings()
    if not bad:
        return found
    shown = "; ".join(f"line {n}: {why}" for n, why in bad[:SHOWN_LINES])
    if len(bad) == len(lines) or source.strict:
        lead = f"none of its first {len(lines)} rows is usable" if len(bad) == len(lines) else "a bad row"
        found.problems.append(Problem(source.field, f"{source.uri}: {lead}: {shown}"))
    else:
        found.warnings.append(Problem(source.field, f"{source.uri}: {len(bad)} of the first {len(lines)} rows "
                                                     f"will fail: {shown}"))
    return found


def _parquet_findings(source: Source) -> Findings:
    import pyarrow.parquet as pq

    found = Findings()
    if source.kind == "batch":
        found.problems.append(Problem(source.field, "an OpenAI Batch input file is JSONL"))
        return found
    try:
        with open_input(source.uri) as f:
            names = pq.ParquetFile(f).schema_arrow.names
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        found.problems.append(Problem(source.field, f"{source.uri} is not a readable Parquet file: {e}"))
        return found
    why = _missing(dict.fromkeys(names), source.kind)
    if why is not None:
        found.problems.append(Problem(source.field, f"{source.uri}: {why}"))
    return found


def custom_id_of(line: bytes) -> str | None:
    """A Batch line's custom_id as the output row carries it (str), or None when it has none.

    Lines that open with their only `"custom_id"` key (as OpenAI writes them) are read without
    parsing the rest: a full parse of a million-line file takes the most time of a validation.
    """
    first = _LEADING_ID.match(line)
    if first is not None and line.count(b'"custom_id"') == 1:
        quoted = first.group(1)
        try:
            return quoted[1:-1].decode() if b"\\" not in quoted else str(json.loads(quoted))
        except ValueError:
            pass
    try:
        record = json.loads(line)
    except ValueError:  # bad JSON or UTF-8: that row's own error
        return None
    value = record.get("custom_id") if isinstance(record, dict) else None
    return None if value is None else str(value)


def digest(custom_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=8).digest(), "big") | 1  # 0: no id


def repeated_digests(lines: Iterable[bytes]) -> set[int]:
    """Digests of custom_ids that occur more than once (a false match is ruled out later): one pass,
    8 bytes a line."""
    digests = array("Q")
    for line in lines:
        custom_id = custom_id_of(line) if line.strip() else None
        digests.append(0 if custom_id is None else digest(custom_id))
    return repeated(digests)


def repeated(digests: array) -> set[int]:  # type: ignore[type-arg]
    """The digests (other than 0, no id) that occur more than once, found by sorting."""
    import numpy as np

    ordered = np.sort(np.frombuffer(digests, dtype=np.uint64))
    repeats = ordered[1:][(ordered[1:] == ordered[:-1]) & (ordered[1:] != 0)]
    return {int(d) for d in np.unique(repeats)}


def first_repeat(lines: Iterable[bytes], repeated: set[int]) -> tuple[str, int, int, int] | None:
    """(custom_id, its first line, the line repeating it, how many ids repeat), streaming once more."""
    first: dict[str, int] = {}
    found: tuple[str, int, int] | None = None
    ids = set()
    for number, line in enumerate(lines, start=1):
        custom_id = custom_id_of(line) if line.strip() else None
        if custom_id is None or digest(custom_id) not in repeated:
            continue
        if custom_id in first:
            ids.add(custom_id)
            found = found or (custom_id, first[custom_id], number)
        first.setdefault(custom_id, number)
    return None if found is None else (*found, len(ids))


def repeat_message(repeat: tuple[str, int, int, int]) -> str:
    custom_id, first, again, count = repeat
    more = f" ({count} custom_ids repeat)" if count > 1 else ""
    return f"custom_id {custom_id!r} is on line {first} and again on line {again}{more}; every request needs a " \
           "unique custom_id"


def duplicate_id_problem(source: Source) -> Problem | None:
    """OpenAI's rule: every custom_id in a Batch file is unique (else two output rows share one)."""
    with open_input(source.uri) as f:
        repeated = repeated_digests(f)
    if not repeated:
        return None
    with open_input(source.uri) as f:
        repeat = first_repeat(f, repeated)
    return None if repeat is None else Problem(source.field, f"{source.uri}: {repeat_message(repeat)}")


def file_findings(source: Source, *, whole_file: bool = True) -> Findings:
    """Problems and warnings of one input file that exists and is readable; `whole_file=False` skips
    the pass over all of an OpenAI Batch file (its custom_ids), for when only warnings are wanted."""
    try:
        if source.uri.lower().endswith(".parquet"):
            return _parquet_findings(source)
        found = _jsonl_findings(source)
        if source.kind == "batch" and whole_file and not found.problems:
            problem = duplicate_id_problem(source)
            found.problems += [problem] if problem else []
        return found
    except (StorageError, OSError) as e:
        return Findings(problems=[Problem(source.field, f"cannot read input file {source.uri}: {e}")])
