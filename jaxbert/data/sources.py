"""Random-access data sources: local JSONL(.gz), ArrayRecord files and TFDS ``data_source``.

Every source here implements the grain ``RandomAccessDataSource`` protocol (``__len__`` and
``__getitem__(int)``) and returns one record as a plain ``dict``. Sources also implement
``describe(index) -> str`` ("<file> line 17", "record 3 of <files>") so that pipeline errors
about a bad record can say where the record lives.

    src = JsonlSource(data_dir() / "rotten_tomatoes" / "train.jsonl")
    len(src), src[0]            # 10200, {"text": ..., "label": 1}
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ArrayRecordSource",
    "JsonlSource",
    "check_file",
    "data_dir",
    "describe_record",
    "read_jsonl_lines",
    "tfds_source",
    "write_array_record",
]

PathLike = str | os.PathLike


def check_file(path: Path, key: str | None = None, kind: str = "JSONL") -> None:
    """Raise if ``path`` is not a readable file: ``IsADirectoryError`` for a directory (its own message),
    ``FileNotFoundError`` otherwise; ``key`` (e.g. ``"data.train"``) names the config key it came from."""
    named = f"{key}={str(path)!r}" if key else str(path)
    if path.is_dir():
        raise IsADirectoryError(f"{named} is a directory; expected a {'.jsonl' if kind == 'JSONL' else kind} file")
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {named}")


def iter_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(1-based line number, text)`` of every line of a UTF-8 file (``.gz``: gzip-compressed).

    A byte that is not UTF-8 is a ``ValueError`` naming the file, the line and the byte's column (the
    decoder itself only knows a position inside its read buffer, so the file is then scanned again as
    bytes to find the line; files that decode cleanly are read once, in text mode).
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            yield from enumerate(f, 1)
    except UnicodeDecodeError:
        raise _bad_byte_error(path, opener) from None


def _bad_byte_error(path: Path, opener: Any) -> ValueError:
    """The first non-UTF-8 byte of ``path`` as a ``ValueError`` naming its line and column.

    Lines are split like text mode's universal newlines (``\n``, ``\r\n``, ``\r``), so the line
    numbers agree with :func:`iter_text_lines`'s.
    """
    lineno = 0
    with opener(path, "rb") as f:
        for chunk in f:
            for raw in chunk.splitlines():
                lineno += 1
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return ValueError(f"{path} line {lineno}: byte {raw[e.start:e.start + 1]!r} at column "
                                      f"{e.start + 1} is not UTF-8 ({e.reason})")
    return ValueError(f"{path}: not UTF-8 text")


def read_jsonl_lines(path: PathLike, key: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of every non-blank line of a ``.jsonl`` / ``.jsonl.gz`` file.

    Errors name the file (and the line of malformed JSON or of a non-UTF-8 byte); ``key`` names the
    config key the path came from.
    """
    path = Path(path)
    check_file(path, key)
    out = []
    for lineno, line in iter_text_lines(path):
        if line.strip():
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {lineno}: malformed JSON: {e.msg}") from None
    return out


def data_dir() -> Path:
    """The shared data folder: ``$JAXBERT_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("JAXBERT_DATA")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data"


def describe_record(source: Any, index: int) -> str:
    """Human-readable location of record ``index`` of ``source`` (for error messages)."""
    describe = getattr(source, "describe", None)
    if callable(describe):
        return describe(index)
    try:
        size = f", {len(source)} records"
    except TypeError:
        size = ""
    return f"record {index} of {type(source).__name__}{size}"


def _check_index(index: Any, length: int, what: str) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        # numpy integers are accepted through __index__.
        try:
            index = index.__index__()
        except AttributeError:
            raise TypeError(f"{what} indices must be integers, got {type(index).__name__}") from None
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"{what} index {index} out of range for {length} records")
    return index


class JsonlSource:
    """All records of one local ``.jsonl`` or ``.jsonl.gz`` file, parsed into memory.

    Every non-blank line must be a JSON object. Blank (whitespace-only) lines are allowed and
    are not records (a trailing newline at the end of the file is common); line numbers in
    error messages and in :meth:`describe` are 1-based physical line numbers.

    Args:
      path: the file. ``.gz`` files are read with gzip.
      fields: if given, keep only these keys of each record (each must be present in every
        record; a missing one is a ``ValueError`` naming the line).
      key: the config key the path came from (``"data.train"``), named by the not-found errors.

    Raises:
      FileNotFoundError: the file does not exist (the message names the path).
      IsADirectoryError: the path is a directory.
      ValueError: a line is not valid JSON, not a JSON object, or holds a byte that is not UTF-8
        (names file and line number).
    """

    def __init__(self, path: PathLike, *, fields: Sequence[str] | None = None, key: str | None = None):
        self.path = Path(path).expanduser()
        check_file(self.path, key)
        if isinstance(fields, str):
            raise TypeError("fields must be a sequence of field names, not a single str")
        self.fields = tuple(fields) if fields is not None else None
        self._records: list[dict[str, Any]] = []
        self._lines: list[int] = []
        try:
            for lineno, line in iter_text_lines(self.path):
                if not line.strip():
                    continue
                self._records.append(self._parse(line, lineno))
                self._lines.append(lineno)
        except (OSError, EOFError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise ValueError(f"{self.path}: cannot read as JSONL: {e}") from e

    def _parse(self, line: str, lineno: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path} line {lineno}: malformed JSON: {e.msg} (column {e.colno})") from e
        if not isinstance(record, dict):
            raise ValueError(
                f"{self.path} line {lineno}: expected a JSON object, got {type(record).__name__}"
            )
        if self.fields is not None:
            missing = [k for k in self.fields if k not in record]
            if missing:
                raise ValueError(
                    f"{self.path} line {lineno}: missing field(s) {missing}; record has {sorted(record)}"
                )
            record = {k: record[k] for k in self.fields}
        return record

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._records[_check_index(index, len(self._records), "JsonlSource")]

    def line_number(self, index: int) -> int:
        """1-based line number in the file of record ``index``."""
        return self._lines[_check_index(index, len(self._records), "JsonlSource")]

    def describe(self, index: int) -> str:
        return f"{self.path} line {self.line_number(index)} (record {index})"

    def __repr__(self) -> str:
        return f"JsonlSource({str(self.path)!r}, records={len(self)})"


class ArrayRecordSource:
    """ArrayRecord files whose records are UTF-8 JSON objects (as written by :func:`write_array_record`).

    A thin wrapper around ``grain.sources.ArrayRecordDataSource`` that decodes each record.

    Raises:
      FileNotFoundError: a path does not exist (the message names it).
      ValueError: (on access) a record is not a JSON object; the message names the record.
    """

    def __init__(self, paths: PathLike | Sequence[PathLike]):
        import grain  # pylint: disable=import-outside-toplevel

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p).expanduser() for p in paths]
        if not self.paths:
            raise ValueError("ArrayRecordSource needs at least one path")
        for p in self.paths:
            check_file(p, kind="ArrayRecord")
        self._source = grain.sources.ArrayRecordDataSource([str(p) for p in self.paths])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self), "ArrayRecordSource")
        raw = self._source[index]
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.describe(index)}: not a UTF-8 JSON record: {e}") from e
        if not isinstance(record, dict):
            raise ValueError(f"{self.describe(index)}: expected a JSON object, got {type(record).__name__}")
        return record

    def describe(self, index: int) -> str:
        files = ", ".join(str(p) for p in self.paths)
        return f"record {index} of ArrayRecord [{files}]"

    def __repr__(self) -> str:
        return f"ArrayRecordSource({[str(p) for p in self.paths]!r}, records={len(self)})"


def write_array_record(
    records: Iterable[Mapping[str, Any]], path: PathLike, *, options: str = "group_size:1"
) -> int:
    """Write ``records`` (JSON-serialisable mappings) to one ArrayRecord file; return the count.

    ``group_size:1`` keeps random access cheap (one record per chunk); raise it for large,
    sequentially read files.
    """
    from array_record.python.array_record_module import (  # pylint: disable=import-outside-toplevel
        ArrayRecordWriter,
    )

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = ArrayRecordWriter(str(path), options)
    n = 0
    try:
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise TypeError(f"record {i} must be a mapping, got {type(record).__name__}")
            writer.write(json.dumps(dict(record), ensure_ascii=False).encode("utf-8"))
            n += 1
    finally:
        writer.close()
    return n


def _to_python(value: Any) -> Any:
    """TFDS records hold bytes and numpy scalars; give text as str and scalars as Python."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, Mapping):
        return {k: _to_python(v) for k, v in value.items()}
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        item = value.item()
        return item.decode("utf-8") if isinstance(item, bytes) else item
    if hasattr(value, "dtype") and getattr(value.dtype, "kind", None) in ("S", "O"):
        return [_to_python(v) for v in value.tolist()]
    return value


class TfdsSource:
    """Wraps a ``tfds.data_source`` so records come back as dicts of str / Python scalars."""

    def __init__(self, source: Any, name: str, split: str):
        self._source = source
        self.name = name
        self.split = split

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self), "TfdsSource")
        return _to_python(self._source[index])

    def describe(self, index: int) -> str:
        return f"record {index} of TFDS {self.name}/{self.split}"

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, records={len(self)})"


def tfds_source(name: str, split: str, data_dir: PathLike | None = None, **kwargs: Any) -> TfdsSource:
    """A random-access source over a prepared TFDS dataset (``tfds.data_source``).

    ``tensorflow_datasets`` is an optional dependency, imported only here.
    The dataset must already be prepared in ``data_dir`` in the array_record file format
    (``tfds.data_source`` does not download in environments without network access).
    """
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            "tfds_source needs tensorflow-datasets, which is an optional dependency: "
            "pip install jaxbert[tfds]  (or: pip install tensorflow-datasets)"
        ) from e
    if data_dir is not None:
        kwargs["data_dir"] = str(Path(data_dir).expanduser())
    source = tfds.data_source(name, split=split, **kwargs)
    return TfdsSource(source, name, split)
