"""How a data file's bytes become records: JSON lines, one JSON array, either gzipped, or
parquet (one file, or a folder of shards as the Hugging Face Hub lays a dataset out).

The container is detected from the content, not the suffix: gzip by its magic bytes
(``1f 8b``, RFC 1952 §2.3.1), parquet by ``PAR1`` at both ends of the file (the Apache Parquet
file format), a JSON array by its first non-blank byte. gzip is the standard library's;
parquet is read with pyarrow, the optional extra ``[parquet]``: without it a parquet file
stops the run with one line naming the extra.

Docs: docs/fullscale.md (§ your data). Tests: tests/test_fullscale_data.py.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path

__all__ = ["DataError", "records", "container", "split_of"]

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


class DataError(ValueError):
    """A malformed file or record: the message names the file, the line (or record) and the field."""


def container(path: Path) -> str:
    """'parquet-folder', 'parquet', 'gzip' or 'json' (lines or one array), from the content."""
    if path.is_dir():
        return "parquet-folder"
    with path.open("rb") as f:
        head = f.read(4)
        if head[:2] == GZIP_MAGIC:
            return "gzip"
        if head == PARQUET_MAGIC:
            f.seek(-4, 2)
            if f.read(4) == PARQUET_MAGIC:
                return "parquet"
    return "json"


def records(path: Path):
    """(where, record) for every record of ``path``; ``where`` names the file and the line
    (JSON lines), the record index (JSON array) or the file and row (parquet)."""
    kind = container(path)
    if kind == "parquet-folder":
        shards = sorted(path.glob("*.parquet"))
        if not shards:
            raise DataError(f"{path} is a folder without *.parquet shards; pass a data file or a folder of parquet shards")
        splits = sorted({split_of(s) for s in shards})
        if len(splits) > 1:  # the Hub names shards <split>-00000-of-00002.parquet; one split per run
            raise DataError(f"{path} holds the shards of several splits ({', '.join(splits)}); point --data.path at one split's "
                            "file or a folder with only its shards")
        for shard in shards:
            yield from _parquet(shard)
    elif kind == "parquet":
        yield from _parquet(path)
    elif kind == "gzip":
        try:
            raw = gzip.decompress(path.read_bytes())
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: a damaged gzip file ({e})") from None
        yield from _json(path, raw)
    else:
        yield from _json(path, path.read_bytes())


def split_of(shard: Path) -> str:
    """The split a Hub parquet shard belongs to: its name before ``-NNNNN-of-NNNNN`` (the whole
    stem when the name has no shard number)."""
    m = re.match(r"(.+?)-\d{5}-of-\d{5}$", shard.stem)
    return m.group(1) if m else shard.stem


UTF8_BOM = b"\xef\xbb\xbf"
"""The byte-order mark some editors write at the start of a UTF-8 file (Notepad, Excel's CSV/JSON
exports); JSON (RFC 8259 §8.1) says a parser may ignore it, and pandas and ``datasets`` do."""


def _json(path: Path, raw: bytes):
    """JSON lines, or one JSON array of records; a leading UTF-8 byte-order mark is skipped."""
    raw = raw.removeprefix(UTF8_BOM)
    if raw.lstrip()[:1] == b"[":
        try:
            arr = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        yield from ((f"{path}: record {i}", r) for i, r in enumerate(arr))
        return
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{n}: not UTF-8 (byte {e.start} of the line)") from None
        try:
            yield f"{path}:{n}", json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON: {e.msg}") from None


def _parquet(path: Path):
    """The rows of one parquet file as dicts (nested structs as dicts, lists as lists)."""
    try:
        import pyarrow.parquet as pq  # optional: the [parquet] extra
    except ImportError:
        raise DataError(f"{path} is a parquet file; reading it needs pyarrow: pip install -e \".[parquet]\"") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for a damaged file
        raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}: row {i}", row
