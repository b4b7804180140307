"""Load an interaction log from disk once, validate it, and cache the result.

Every later stage trusts the log: ids are 0-based integers, timestamps are finite and
sorted, so a malformed file has to be caught here, with the file, row and column named.

Ids: every table downstream is indexed by id, so a source's own ids (integers with gaps,
ids from 1, 10^12 offsets, strings) are renumbered 0..U-1 and 0..I-1 per side, in order
of first appearance in time order, and the original id of every index is kept
(`EventLog.user_ids` / `item_ids`) for whatever shows an id to a person. A side keeps its
ids as given when the caller declares its range (`num_users` / `num_items`) or asks for
`ids="keep"` (the JODIE files, whose ids are already 0-based indices).

Sources:
- the original JODIE CSV: a header line whose names are ignored (JODIE's header has five
  names while its rows have 4 + k fields), then rows `user_id,item_id,timestamp,
  state_label,f1..fk`, read by position; the k features become a float32 matrix;
- a parquet file with the columns `user_id, item_id, timestamp[, state_label]`;
- any CSV (with a header line, or `names` for a file without one) or parquet file, read
  by name through `columns`; any separator (tab, `::`, ...); gzip when named `.gz`.

Row numbers in messages: for a CSV, the line number in the file (the header is line 1,
so the first data row is row 2); for parquet, the 1-based position of the record.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import operator
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from tempint.errors import ConfigError, DataError

__all__ = [
    "COLUMNS",
    "CACHE_VERSION",
    "DuplicateRowsWarning",
    "EventLog",
    "TimestampUnitWarning",
    "UnsortedInputWarning",
    "load_events",
]

log = logging.getLogger(__name__)

# Canonical columns of the log and their dtypes.
COLUMNS = {
    "user_id": pl.Int64,
    "item_id": pl.Int64,
    "timestamp": pl.Float64,
    "state_label": pl.Int8,
}
# Bump when the cached layout or the loader's semantics change: old caches are rebuilt.
CACHE_VERSION = 2

_BOM = b"\xef\xbb\xbf"
_PARQUET_MAGIC = b"PAR1"
_GZIP_MAGIC = b"\x1f\x8b"
# Separators a file may use, named for messages (a line holding one of these and not the
# configured separator was read with the wrong one).
_SEPARATOR_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe", "::": "'::'"}
ID_MODES = ("renumber", "keep")


class UnsortedInputWarning(UserWarning):
    """The source was not in timestamp order; the log was stable-sorted."""


@dataclass(frozen=True, eq=False)
class EventLog:
    """A validated interaction stream in time order.

    `frame` has the columns of `COLUMNS`, sorted by timestamp with ties kept in file
    order; ids are 0-based per side, so `num_users` / `num_items` size the embedding
    tables (the number of distinct ids when renumbered, else max id + 1 or the declared
    count). `features` is [N, F] float32, row i belonging to frame row i, or None when
    the source has none. `user_ids[k]` / `item_ids[k]` is the source's id of index k
    (integers or strings), None when the side's ids were kept as given.
    """

    frame: pl.DataFrame
    num_users: int
    num_items: int
    features: np.ndarray | None = None
    source: str = ""
    user_ids: pl.Series | None = None
    item_ids: pl.Series | None = None

    @property
    def num_interactions(self) -> int:
        return self.frame.height

    @property
    def num_unique_edges(self) -> int:
        """Distinct (user, item) pairs: 1 - this / num_interactions is the repeat rate."""
        return self.frame.select(pl.struct("user_id", "item_id").n_unique()).item()

    def original_ids(self, side: Literal["user", "item"], index) -> list:
        """The source's ids of indices `index` (what a person should be shown)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        mapping = self.user_ids if side == "user" else self.item_ids
        if mapping is None:
            return index.tolist()
        return mapping.gather(index).to_list()


def load_events(
    path: str | os.PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    num_users: int | None = None,
    num_items: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    keep_features: bool = True,
    cache: bool = True,
    file_format: Literal["csv", "parquet"] | None = None,
    ids: Literal["renumber", "keep"] = "renumber",
    separator: str | None = None,
    header: bool | None = None,
    names: Sequence[str] | None = None,
) -> EventLog:
    """Read, validate and sort an interaction log, through a cache beside the source.

    `columns` maps canonical names to the file's column names (read by name; the CSV
    needs a header line or `names`); without either a CSV is read by position in the
    JODIE layout. Ids are renumbered 0.. per side in order of first appearance in time
    order, the source's ids kept in `EventLog.user_ids` / `item_ids`; `ids="keep"` keeps
    integer ids as given (max id + 1 sizes the tables; strings are still numbered).
    `num_users` / `num_items` declare a side's id range: its ids are kept and must be
    below it. Timestamps may be numbers (seconds) or ISO 8601 datetimes (turned into
    epoch seconds).
    `separator` (default ",", or tab for a `.tsv` name; several characters such as
    "::" allowed), `header` (None: a JODIE CSV's header line is detected, a mapped CSV
    has one; False: none) and `names` (the file's column names in order, for a file
    without a header line) describe a CSV; a name ending in `.gz` is decompressed.
    The cache of a CSV source (`cache_dir`, default `.cache` beside the source) holds
    the processed log; it is reused while the source and options are unchanged.
    `cache=False` skips it.
    `file_format` overrides the choice made from the file suffix and content.
    """
    path = Path(path)
    mapping = _check_columns(columns)
    num_users = _count("num_users", num_users)
    num_items = _count("num_items", num_items)
    if file_format not in (None, "csv", "parquet"):
        raise ConfigError(f"file_format={file_format!r} is not supported; use 'csv' or 'parquet'")
    if ids not in ID_MODES:
        raise ConfigError(f"ids={ids!r} is not known; use 'renumber' or 'keep' (data.ids)")
    separator = _check_separator(separator, path)
    names = _check_names(names)
    if header not in (None, True, False):
        raise ConfigError(f"header={header!r} must be true, false or null (data.header)")
    if not path.is_file():
        where = path.expanduser().absolute()
        raise DataError(
            f"{path}: no such file (looked for {where}); check the path, data.root or TEMPINT_DATA_DIR"
        )
    options = {
        "columns": None if mapping is None else dict(sorted(mapping.items())),
        "num_users": num_users,
        "num_items": num_items,
        "keep_features": bool(keep_features),
        "file_format": file_format,
        "ids": ids,
        "separator": separator,
        "header": header,
        "names": names,
    }
    fmt = file_format or _sniff_format(path)
    # A parquet source reads as fast as the cache would: only CSV sources are cached.
    cache_files = _cache_files(path, cache_dir) if cache and fmt == "csv" else None
    if cache_files is not None:
        cached = _read_cache(path, cache_files, options)
        if cached is not None:
            _warn_anomalies(path, cached)
            return cached

    stat = path.stat()
    started = time.perf_counter()
    log.info("%s: reading %s bytes", path, f"{stat.st_size:,}")
    raw = path.read_bytes()
    if fmt == "parquet":
        table = _read_parquet(path, raw, mapping)
    else:
        text = _decompress(path, raw)
        table = _read_csv(path, text, mapping, keep_features, separator, header, names)
        del text
    _refuse_missing_ids(path, table.data, table.rows, table.labels)
    log.info("%s: read %s rows", path, f"{len(table.rows):,}")
    events, unsorted = _build(path, table, num_users, num_items, keep_features, ids)
    log.info(
        "%s: %s interactions, %s users, %s items, loaded in %.1f s",
        path,
        f"{events.num_interactions:,}",
        f"{events.num_users:,}",
        f"{events.num_items:,}",
        time.perf_counter() - started,
    )
    if unsorted:
        _warn_unsorted(path, unsorted, events.num_interactions)
    _warn_anomalies(path, events)

    if cache_files is not None:
        manifest = {
            "tempint_cache_version": CACHE_VERSION,
            "source": str(path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "options": options,
            "num_interactions": events.num_interactions,
            "num_users": events.num_users,
            "num_items": events.num_items,
            "num_features": 0 if events.features is None else int(events.features.shape[1]),
            "unsorted_rows": unsorted,
            "id_maps": [k for k in ("user_ids", "item_ids") if getattr(events, k) is not None],
        }
        _write_cache(cache_files, events, manifest)
    return events


# --------------------------------------------------------------------------- reading


@dataclass
class _Table:
    """Columns as read (strings or typed), before validation.

    `rows` [N] are the row numbers used in messages; `labels` the display name of each
    canonical column ("timestamp", or "ts (timestamp)" when mapped).
    """

    data: dict[str, pl.Series]
    rows: np.ndarray
    labels: dict[str, str]
    features: np.ndarray | None
    ids_may_be_labels: bool


def _count(name: str, value: object) -> int | None:
    """A declared table size: a positive integer (numpy or config integers too)."""
    if value is None:
        return None
    try:
        count = operator.index(value)
    except TypeError:
        count = 0
    if isinstance(value, bool) or count < 1:
        raise ConfigError(
            f"{name}={value!r} is not a positive integer; leave it unset to use max id + 1"
        )
    return count


def _check_columns(columns: Mapping[str, str] | None) -> dict[str, str] | None:
    if columns is None:
        return None
    if not isinstance(columns, Mapping):
        raise ConfigError(
            f"columns={columns!r} is not a mapping; "
            "use e.g. {user_id: user, item_id: item, timestamp: ts}"
        )
    # An unset entry (a null in the config) means the canonical name.
    mapping = {str(k): str(v) for k, v in columns.items() if v is not None}
    unknown = sorted(set(mapping) - set(COLUMNS))
    if unknown:
        raise ConfigError(
            f"columns has unknown key {unknown[0]!r}; "
            f"known keys: {', '.join(COLUMNS)} (data.columns)"
        )
    return mapping


def _check_separator(separator: object, path: Path) -> str:
    """The field separator: given, else tab for a `.tsv` name, else comma."""
    if separator is None:
        return "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    if not isinstance(separator, str) or not separator or "\n" in separator:
        raise ConfigError(
            f"separator={separator!r} must be a non-empty string such as ',', '\\t' or '::' "
            "(data.separator)"
        )
    # A command line cannot easily pass a tab: accept its escape.
    return "\t" if separator == "\\t" else separator


def _check_names(names: object) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ConfigError(
            f"names={names!r} must be a list of the file's column names "
            "(data.names, e.g. [user_id, item_id, rating, timestamp])"
        )
    return [str(n) for n in names]


def _sniff_format(path: Path) -> str:
    """parquet or csv, from the name; content that contradicts the name is refused."""
    suffixes = [s.lower() for s in path.suffixes]
    suffix = path.suffix.lower()
    with path.open("rb") as f:
        magic = f.read(4)
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".gz":
        return "csv"
    if magic == _PARQUET_MAGIC:
        if suffix in (".csv", ".tsv", ".txt", ".dat", ".data"):
            raise DataError(
                f"{path}: the file is parquet, not {suffix[1:]} text; name it "
                f"{path.stem}.parquet (or pass file_format='parquet')"
            )
        return "parquet"
    if magic[:2] == _GZIP_MAGIC:
        plain = path.name if suffixes else f"{path.name}.csv"
        raise DataError(
            f"{path}: the file is gzip-compressed but its name does not end in .gz; "
            f"name it {plain}.gz (it is then decompressed on reading) or decompress it"
        )
    return "csv"


def _decompress(path: Path, raw: bytes) -> bytes:
    if path.suffix.lower() != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise DataError(
            f"{path}: not a readable gzip file ({_first_line(err)}); a .gz name needs "
            "gzip-compressed content"
        ) from err


def _read_parquet(path: Path, raw: bytes, mapping: dict[str, str] | None) -> _Table:
    try:
        frame = pl.read_parquet(io.BytesIO(raw))
    except Exception as err:  # polars / arrow raise several kinds for a bad file
        raise DataError(f"{path}: not a readable parquet file ({_first_line(err)})") from err
    names, labels = _pick(path, frame.columns, mapping, "")
    data = {key: frame.get_column(name) for key, name in names.items()}
    if frame.height == 0:
        raise DataError(f"{path}: the file has no rows; expected one row per interaction")
    rows = np.arange(1, frame.height + 1, dtype=np.int64)
    return _Table(data, rows, labels, None, ids_may_be_labels=True)


def _read_csv(
    path: Path,
    raw: bytes,
    mapping: dict[str, str] | None,
    keep_features: bool,
    sep: str = ",",
    header: bool | None = None,
    names: list[str] | None = None,
) -> _Table:
    """Parse with polars in one pass; scan lines with numpy only when something is off.

    The reader yields one record per line (no quoting in the JODIE form), so record i
    is line `first + i` unless blank lines intervene; those and ragged rows show up as
    nulls or a parse error, which sends the file through `_scan` to name the line.
    """
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if not raw or raw.isspace():
        raise DataError(
            f"{path}: the file is empty; expected a header line then rows "
            "user_id,item_id,timestamp,state_label[,features]"
        )
    if b"\r" in raw:
        _check_carriage(path, raw)
    line, start, head = _first_nonblank(raw, 0, 0)
    _check_separator_used(path, line, head, sep)
    sep_name = _SEPARATOR_NAMES.get(sep, repr(sep))
    if len(sep) > 1:
        raw, sep = _single_byte_separator(raw, sep)
        line, start, head = _first_nonblank(raw, 0, 0)
    if names is not None:
        mapping = mapping or {}
        header = bool(header)
    elif mapping is None:
        if header is None:
            header = not _is_int(head.split(sep, 1)[0].strip())
        if header:
            _check_header_order(path, head, sep)
    elif header is False:
        raise ConfigError(
            f"{path}: header=false with a column mapping needs names, the file's column "
            "names in order (data.names)"
        )
    else:
        header = True
    data_line, data_start = line, start
    if header:
        nl = raw.find(b"\n", start)
        data_line, data_start = line + 1, (len(raw) if nl < 0 else nl + 1)
    region = raw[data_start:]
    if not region or region.isspace():
        raise DataError(
            f"{path}: no data rows after the header line; expected rows "
            "user_id,item_id,timestamp,state_label[,features]"
        )
    # Leading blank lines would make the reader guess one column: start at the first row.
    skip, offset, row = _first_nonblank(region, 0, 0)
    region, data_line = region[offset:], data_line + skip
    if mapping is None:
        fields = row.count(sep) + 1
        return _read_jodie(path, region, data_line, fields, keep_features, sep, sep_name)
    found = names if names is not None else [n.strip() for n in _split_quoted(head, sep)]
    return _read_named(
        path, region, data_line, found, mapping, sep, sep_name, head if header else ""
    )


def _read_jodie(
    path: Path,
    region: bytes,
    first: int,
    fields: int,
    keep_features: bool,
    sep: str = ",",
    sep_name: str = "comma",
) -> _Table:
    if fields < 4:
        fields = None  # let the scan name the short line
    names = list(COLUMNS) + [f"f{i}" for i in range(1, (fields or 4) - 3)]
    project = keep_features and len(names) > 4
    schema = {n: (pl.String if i < 4 or not project else pl.Float32) for i, n in enumerate(names)}
    # Without features, the last field is still read: a short row leaves it empty.
    columns = None if project else sorted({0, 1, 2, 3, len(names) - 1})
    try:
        frame = _csv(region, schema, columns, sep)
        error = None if fields else DataError(f"{path}: rows have fewer than 4 fields")
    except Exception as err:  # polars raises several kinds for one bad cell
        frame, error = None, err
    if error is not None or not _one_record_per_line(frame, region):
        rows, keep = _scan(path, region, first, None, "most rows", sep, sep_name)
        if error is not None:
            if project:  # a feature cell is not a number: read as text to name it
                frame = _keep(path, _csv(region, {n: pl.String for n in names}, None, sep), keep)
                for name in names[4:]:
                    _parse_float(path, frame.get_column(name), rows, name)
            raise DataError(f"{path}: not a readable CSV file ({_first_line(error)})") from error
        frame = _keep(path, frame, keep)
    else:
        rows = np.arange(frame.height, dtype=np.int64) + first + 1
    features = None
    if project:
        block = frame.select(names[4:])
        if sum(block.null_count().row(0)):
            nulls = block.select(pl.any_horizontal(pl.all().is_null())).to_series()
            i = int(nulls.arg_true()[0])
            name = next(c for c in names[4:] if block.get_column(c)[i] is None)
            raise DataError(
                f"{path}, row {rows[i]}, column {name}: empty value; every feature needs a number"
            )
        features = block.to_numpy(order="c")
    data = {k: frame.get_column(k) for k in COLUMNS}
    return _Table(data, rows, {k: k for k in COLUMNS}, features, ids_may_be_labels=False)


def _read_named(
    path: Path,
    region: bytes,
    first: int,
    found: list[str],
    mapping: dict[str, str],
    sep: str = ",",
    sep_name: str = "comma",
    head: str = "",
) -> _Table:
    """A CSV whose columns are named (header line or `names`), picked by name; quoted
    fields are allowed.

    `region` holds the data rows, from 0-based line `first` of the file.
    """
    names = _unique(found)
    if b'"' in region or '"' in head:
        try:
            frame = pl.read_csv(
                region,
                has_header=False,
                infer_schema=False,
                encoding="utf8-lossy",
                separator=sep,
            )
        except Exception as err:  # polars raises several kinds for a bad file
            raise DataError(f"{path}: not a readable CSV file ({_first_line(err)})") from err
        if frame.width != len(names):
            raise DataError(
                f"{path}: the header names {len(names)} columns but rows have {frame.width} "
                "fields; every row needs one field per header name"
            )
        frame.columns = names
        # Quoted fields may span lines: number records, not lines.
        frame = frame.filter(~pl.all_horizontal(pl.all().is_null()))
        rows = np.arange(frame.height, dtype=np.int64) + first + 1
    else:
        try:
            frame = _csv(region, {n: pl.String for n in names}, None, sep)
            error = None
        except Exception as err:  # polars raises several kinds for a bad file
            frame, error = None, err
        if error is not None or not _one_record_per_line(frame, region):
            like = "the header" if head else "data.names"
            rows, keep = _scan(path, region, first, len(names), like, sep, sep_name)
            if error is not None:
                raise DataError(
                    f"{path}: not a readable CSV file ({_first_line(error)})"
                ) from error
            frame = _keep(path, frame, keep)
        else:
            rows = np.arange(frame.height, dtype=np.int64) + first + 1
    if frame.height == 0:
        raise DataError(f"{path}: no data rows after the header line")
    names, labels = _pick(path, frame.columns, mapping, " in the header")
    data = {key: frame.get_column(name) for key, name in names.items()}
    return _Table(data, rows, labels, None, ids_may_be_labels=True)


def _pick(
    path: Path, found: list[str], mapping: dict[str, str] | None, where: str
) -> tuple[dict[str, str], dict[str, str]]:
    """File column of each canonical key; state_label may be absent unless mapped."""
    mapping = mapping or {}
    names, labels = {}, {}
    for key in COLUMNS:
        name = mapping.get(key, key)
        if name not in found:
            if key == "state_label" and key not in mapping:
                continue
            raise DataError(
                f"{path}: column {name!r} ({key}) not found{where}; found columns: "
                f"{', '.join(found) or 'none'} (set data.columns to map them)"
            )
        names[key] = name
        labels[key] = key if name == key else f"{name} ({key})"
    return names, labels


def _split_quoted(head: str, sep: str = ",") -> list[str]:
    return next(csv.reader([head], delimiter=sep), [])


def _check_separator_used(path: Path, line: int, head: str, sep: str) -> None:
    """A first line without the separator but with another one was read with the wrong one."""
    if sep in head:
        return
    for other, name in _SEPARATOR_NAMES.items():
        if other != sep and other in head:
            shown = "\\t" if other == "\t" else other
            raise DataError(
                f"{path}, row {line + 1}: the fields are {name}-separated, not separated by "
                f"{_SEPARATOR_NAMES.get(sep, repr(sep))}; set data.separator to '{shown}'"
            )


def _single_byte_separator(raw: bytes, sep: str) -> tuple[bytes, str]:
    """The reader splits on one byte: stand a control byte the file lacks for `sep`."""
    for code in (0x1F, 0x1E, 0x1D, 0x1C, 0x01):
        byte = bytes([code])
        if byte not in raw:
            return raw.replace(sep.encode(), byte), byte.decode()
    raise DataError(f"the separator {sep!r} cannot be stood in for: the file holds control bytes")


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count + 1}")
    return out


def _csv(region: bytes, schema: dict, projection: list[int] | None, sep: str = ",") -> pl.DataFrame:
    return pl.read_csv(
        region,
        has_header=False,
        schema=schema,
        columns=projection,
        quote_char=None,
        encoding="utf8-lossy",
        raise_if_empty=False,
        separator=sep,
    )


def _keep(path: Path, frame: pl.DataFrame, keep: pl.Series) -> pl.DataFrame:
    if frame.height != len(keep):
        raise DataError(
            f"{path}: {frame.height} records were read from {len(keep)} lines; "
            "check the file for stray control characters"
        )
    return frame.filter(keep)


def _one_record_per_line(frame: pl.DataFrame, region: bytes) -> bool:
    """True when record i is line i: same count and no null (blank line or short row)."""
    lines = region.count(b"\n") + (0 if region.endswith(b"\n") else 1)
    if frame.height != lines:
        return False
    return sum(frame.null_count().row(0)) == 0


def _scan(
    path: Path,
    region: bytes,
    first: int,
    expected: int | None,
    like: str,
    sep: str = ",",
    sep_name: str = "comma",
) -> tuple[np.ndarray, pl.Series]:
    """Line numbers of the records and a mask dropping blank lines; raise on ragged rows.

    `first` is the 0-based line of `region`'s start in the file; `expected` the field
    count (None: the most common one).
    """
    buf = np.frombuffer(region, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    ends = newlines if region.endswith(b"\n") else np.append(newlines, len(region))
    starts = np.concatenate(([0], newlines + 1))[: len(ends)]
    stops = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13))
    blank = stops == starts
    commas = np.flatnonzero(buf == ord(sep))
    fields = np.searchsorted(commas, stops) - np.searchsorted(commas, starts) + 1
    lines = np.flatnonzero(~blank)
    if lines.size == 0:
        raise DataError(f"{path}: no data rows after the header line")
    if expected is None:
        expected = int(np.bincount(fields[lines]).argmax())
        if expected < 4:
            raise DataError(
                f"{path}, row {first + int(lines[0]) + 1}: {int(fields[lines[0]])} fields, a JODIE "
                "CSV row needs at least 4 (user_id,item_id,timestamp,state_label); for another "
                "layout pass columns (data.columns) and a header line"
            )
    bad = lines[fields[lines] != expected]
    if bad.size:
        line = int(bad[0])
        raise DataError(
            f"{path}, row {first + line + 1}: {int(fields[line])} fields, expected {expected} "
            f"like {like}; every row needs the same number of {sep_name}-separated fields"
        )
    return lines.astype(np.int64) + first + 1, pl.Series(~blank)


def _first_nonblank(raw: bytes, pos: int, line: int) -> tuple[int, int, str]:
    """(0-based line, byte offset, text) of the first line with content from `pos`."""
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        end = len(raw) if nl < 0 else nl
        text = raw[pos:end].rstrip(b"\r")
        if text:
            return line, pos, text.decode("utf-8", errors="replace")
        line, pos = line + 1, end + 1
    return line, pos, ""


def _check_carriage(path: Path, raw: bytes) -> None:
    """A lone carriage return would split a line for the reader but not for the scan."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    carriage = np.flatnonzero(buf == 13)
    nxt = carriage + 1
    lone = carriage[(nxt < len(raw)) & (buf[np.minimum(nxt, len(raw) - 1)] != 10)]
    if lone.size:
        line = raw.count(b"\n", 0, int(lone[0])) + 1
        raise DataError(
            f"{path}, row {line}: a carriage return inside the line; "
            "save the file with plain \\n or \\r\\n line endings"
        )


def _check_header_order(path: Path, head: str, sep: str = ",") -> None:
    """Positional reading would silently swap columns of a header in another order."""
    names = [n.strip().strip('"').lower() for n in head.split(sep)]
    for pos, key in enumerate(("user_id", "item_id", "timestamp", "state_label")):
        if key in names and names.index(key) != pos:
            raise DataError(
                f"{path}, row 1: the header has {key} as field {names.index(key) + 1}, but without "
                f"columns the fields are read by position (user_id,item_id,timestamp,state_label); "
                f"pass columns={{{key}: {key}, ...}} (data.columns) to read them by name"
            )


# ------------------------------------------------------------------------ validation


def _build(
    path: Path,
    table: _Table,
    num_users: int | None,
    num_items: int | None,
    keep_features: bool,
    ids_mode: str = "renumber",
) -> tuple[EventLog, int]:
    rows = table.rows
    ids = {}
    for key in ("user_id", "item_id"):
        ids[key] = _parse_ids(
            path, table.data[key], rows, table.labels[key], table.ids_may_be_labels
        )
    t = _parse_time(path, table.data["timestamp"], rows, table.labels["timestamp"])
    if "state_label" in table.data:
        label = _parse_state(path, table.data["state_label"], rows, table.labels["state_label"])
    else:
        label = pl.Series("state_label", np.zeros(len(rows), dtype=np.int8))

    frame = pl.DataFrame(
        {
            "user_id": ids["user_id"],
            "item_id": ids["item_id"],
            "timestamp": t,
            "state_label": label,
            "_row": rows,
        }
    )
    unsorted = int(
        frame.select((pl.col("timestamp") < pl.col("timestamp").cum_max().shift(1)).sum()).item()
    )
    features = table.features if keep_features else None
    if unsorted:
        log.info("%s: sorting %s rows by timestamp", path, f"{frame.height:,}")
        frame = frame.with_row_index("_pos").sort("timestamp", maintain_order=True)
        if features is not None:
            features = features[frame.get_column("_pos").to_numpy()]
        frame = frame.drop("_pos")
    counts, originals = {}, {}
    for key, declared, name in (
        ("user_id", num_users, "num_users"),
        ("item_id", num_items, "num_items"),
    ):
        col = frame.get_column(key)
        labels = col.dtype == pl.String
        if labels or (declared is None and ids_mode == "renumber"):
            col, originals[key] = _renumber(col)
            log.info(
                "%s: renumbered %s: %s distinct ids -> 0..%s",
                path,
                key,
                f"{len(originals[key]):,}",
                f"{len(originals[key]) - 1:,}",
            )
            frame = frame.with_columns(col.alias(key))
        if declared is not None:
            over = (col >= declared).arg_true()
            if len(over):
                i = int(over[0])
                row = frame.get_column("_row")[i]
                shown = _show(table.data[key], row, rows) if labels else str(col[i])
                raise DataError(
                    f"{path}, row {row}, column {table.labels[key]}: id {shown} is out of range "
                    f"for {name}={declared} (ids must be below it); raise {name} or leave it unset"
                )
            counts[key] = declared
        elif key in originals:
            counts[key] = len(originals[key])
        else:
            counts[key] = int(col.max()) + 1
    frame = frame.drop("_row").select([pl.col(k).cast(dtype) for k, dtype in COLUMNS.items()])
    events = EventLog(
        frame=frame,
        num_users=counts["user_id"],
        num_items=counts["item_id"],
        features=features,
        source=str(path),
        user_ids=originals.get("user_id"),
        item_ids=originals.get("item_id"),
    )
    return events, unsorted


# Integer ids spanning at most this many values (or 4 per row) are renumbered through a
# dense lookup table; wider ranges through a hash map.
_DENSE_SPAN = 1 << 24


def _renumber(col: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Codes 0..n-1 in order of first appearance, and the source's id of each code.

    First appearance (rather than sorted order) makes the codes, hence every result,
    independent of how the source labels its nodes.
    """
    originals = col.unique(maintain_order=True)
    codes = np.arange(len(originals), dtype=np.int64)
    if col.dtype.is_integer() and len(col):
        low, high = int(col.min()), int(col.max())
        if high - low < max(_DENSE_SPAN, 4 * len(col)):
            table = np.zeros(high - low + 1, dtype=np.int64)
            table[originals.to_numpy() - low] = codes
            values = col.to_numpy()
            return pl.Series(col.name, table[values - low]), originals.rename("id")
    mapped = col.replace_strict(originals, codes, return_dtype=pl.Int64)
    return mapped, originals.rename("id")


def _show(series: pl.Series, row: int, rows: np.ndarray) -> str:
    """The value as written in the source at a given row number (rows ascend)."""
    return repr(str(series[int(np.searchsorted(rows, row))]).strip())


def _fail(
    path: Path, rows: np.ndarray, mask: pl.Series, label: str, what: Callable[[int], str]
) -> None:
    """Raise for the first row where `mask` holds (nulls count as false)."""
    hits = mask.fill_null(False).arg_true()
    if len(hits):
        i = int(hits[0])
        raise DataError(f"{path}, row {rows[i]}, column {label}: {what(i)}")


def _empty_check(path: Path, s: pl.Series, rows: np.ndarray, label: str, what: str) -> None:
    _fail(path, rows, s.is_null(), label, lambda i: f"empty value; every row needs {what}")


def _parse_ids(
    path: Path, s: pl.Series, rows: np.ndarray, label: str, labels_ok: bool
) -> pl.Series:
    """Non-negative Int64 ids, or stripped strings when the column holds labels."""
    _empty_check(path, s, rows, label, "an id")
    dtype = s.dtype
    if dtype == pl.String:
        text = s.str.strip_chars()
        ints = text.cast(pl.Int64, strict=False)
        bad = ints.is_null()
        if bad.any():
            if labels_ok:
                return text
            _fail(path, rows, bad, label, lambda i: f"{s[i]!r} is not an integer id")
        s = ints
    elif dtype == pl.Categorical or dtype == pl.Enum:
        return s.cast(pl.String).str.strip_chars() if labels_ok else s
    elif dtype.is_float():
        bad = ~s.is_finite() | (s != s.floor())
        _fail(path, rows, bad, label, lambda i: f"{s[i]!r} is not an integer id")
        s = s.cast(pl.Int64, strict=False)
    elif dtype.is_integer():
        s = s.cast(pl.Int64, strict=False)
        _fail(path, rows, s.is_null(), label, lambda i: "the id does not fit in a 64-bit integer")
    else:
        raise DataError(
            f"{path}, column {label}: dtype {dtype} cannot hold ids; use integers or strings"
        )
    _fail(path, rows, s < 0, label, lambda i: f"{s[i]} is negative; ids must be 0 or more")
    return s


def _parse_float(path: Path, s: pl.Series, rows: np.ndarray, label: str) -> pl.Series:
    _empty_check(path, s, rows, label, "a number")
    values = s.cast(pl.Float64, strict=False)
    _fail(path, rows, values.is_null(), label, lambda i: f"{s[i]!r} is not a number")
    return values


def _parse_time(path: Path, s: pl.Series, rows: np.ndarray, label: str) -> pl.Series:
    """Float64 seconds: numbers as given, datetimes as seconds since 1970 (UTC)."""
    _empty_check(path, s, rows, label, "a timestamp")
    dtype = s.dtype
    if dtype == pl.String:
        text = s.str.strip_chars()
        values = text.cast(pl.Float64, strict=False)
        if values[0] is not None or not values.is_null().any():
            _fail(
                path,
                rows,
                values.is_null(),
                label,
                lambda i: f"{s[i]!r} is not a number (earlier rows hold numbers)",
            )
            s = values
        else:
            try:
                dt = text.str.to_datetime(strict=False, time_zone="UTC", time_unit="us")
            except Exception:
                dt = pl.Series([None] * len(text), dtype=pl.Datetime("us", "UTC"))
            _fail(
                path,
                rows,
                dt.is_null(),
                label,
                lambda i: (
                    f"{s[i]!r} is neither a number nor an ISO datetime like 2020-01-31T12:00:00"
                ),
            )
            s = dt
        dtype = s.dtype
    if isinstance(dtype, pl.Datetime) or dtype == pl.Date:
        s = s.dt.epoch("us").cast(pl.Float64) / 1e6
    elif dtype.is_numeric():
        s = s.cast(pl.Float64)
    else:
        raise DataError(
            f"{path}, column {label}: dtype {dtype} cannot hold timestamps; use numbers or datetimes"
        )
    _fail(
        path, rows, ~s.is_finite(), label, lambda i: f"{_raw_value(s, i)!r} is not a finite number"
    )
    return s


def _raw_value(s: pl.Series, i: int) -> str:
    value = s[i]
    return str(value).lower() if isinstance(value, float) else str(value)


def _parse_state(path: Path, s: pl.Series, rows: np.ndarray, label: str) -> pl.Series:
    _empty_check(path, s, rows, label, "a state label (0 or 1)")
    if s.dtype == pl.String:
        ints = s.str.strip_chars().cast(pl.Int64, strict=False)
        _fail(
            path, rows, ints.is_null(), label, lambda i: f"{s[i]!r} is not an integer state label"
        )
        s = ints
    elif s.dtype == pl.Boolean:
        s = s.cast(pl.Int64)
    elif s.dtype.is_float():
        _fail(
            path,
            rows,
            ~s.is_finite() | (s != s.floor()),
            label,
            lambda i: f"{s[i]!r} is not an integer state label",
        )
        s = s.cast(pl.Int64)
    elif not s.dtype.is_integer():
        raise DataError(
            f"{path}, column {label}: dtype {s.dtype} cannot hold state labels; use integers"
        )
    s = s.cast(pl.Int64, strict=False)
    _fail(
        path,
        rows,
        (s < -128) | (s > 127),
        label,
        lambda i: (
            f"{s[i]} is outside -128..127; state labels are small class numbers (JODIE: 0 or 1)"
        ),
    )
    return s


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _warn_unsorted(path: Path, unsorted: int, total: int) -> None:
    warnings.warn(
        UnsortedInputWarning(
            f"{path}: {unsorted} of {total} rows were out of timestamp order; "
            "the log was sorted by timestamp (ties keep file order)"
        ),
        stacklevel=3,
    )


# ------------------------------------------------------------------------- anomalies
# Readable data that is probably not what its author meant: reported, never changed.

# Above this a timestamp in seconds would be after the year 5000: milliseconds (or finer)
# since 1970 are far more likely, and the day/week features assume seconds.
_SECONDS_LIMIT = 1e11
# Texts that stand for a missing value in exported tables, never for an id.
_MISSING_IDS = ("nan", "null")


class DuplicateRowsWarning(UserWarning):
    """Rows repeated exactly (same user, item, time, label and features); kept."""


class TimestampUnitWarning(UserWarning):
    """Timestamps look like milliseconds (or finer), not seconds."""


def _refuse_missing_ids(
    path: Path, data: Mapping[str, pl.Series], rows: np.ndarray, labels: Mapping[str, str]
) -> None:
    """A text id such as `NaN` is a missing value that an export wrote out, not a user:
    kept, it would become one more user (or turn every id of the column into a label)."""
    for key in ("user_id", "item_id"):
        column = data.get(key)
        if column is None or column.dtype != pl.String:
            continue
        missing = column.str.strip_chars().str.to_lowercase().is_in(list(_MISSING_IDS))
        _fail(
            path,
            rows,
            missing,
            labels[key],
            lambda i, c=column: (
                f"{c[i]!r} is a missing value, not an id; fill in the id or drop the row"
            ),
        )


def _warn_anomalies(path: Path, events: EventLog) -> None:
    """One warning per anomaly, with counts: exact duplicate rows and millisecond times."""
    frame = events.frame
    extra = 0
    t = frame.get_column("timestamp").to_numpy()
    # the log is sorted by time, so copies of a row are neighbours in time: only rows
    # sharing their timestamp with a neighbour are compared (few on real data; cheap)
    tied = np.zeros(len(t), dtype=bool)
    same = t[1:] == t[:-1]
    tied[1:] |= same
    tied[:-1] |= same
    if tied.any():
        idx = np.flatnonzero(tied)
        sub = frame[idx]
        if events.features is not None:  # copies must also agree on their features
            feats = pl.DataFrame(events.features[idx]).rename(lambda c: f"_f{c}")
            sub = pl.concat([sub, feats], how="horizontal")
        extra = sub.height - sub.unique().height
    if extra:
        warnings.warn(
            DuplicateRowsWarning(
                f"{path}: {extra} of {frame.height} rows repeat an earlier row exactly "
                "(same user, item, timestamp and label); they are kept and count as "
                "interactions (a repeat-heavy stream favours the recency heuristic); "
                "drop them from the file if they are export artefacts"
            ),
            stacklevel=3,
        )
    if frame.height:
        latest = float(t.max())
        if latest > _SECONDS_LIMIT:
            unit = "milliseconds" if latest < _SECONDS_LIMIT * 1e3 else "micro- or nanoseconds"
            warnings.warn(
                TimestampUnitWarning(
                    f"{path}: timestamps reach {latest:.6g}, which as seconds is after the "
                    f"year 5000; they look like {unit} since 1970, but the day and week time "
                    "features assume seconds: convert the column to seconds"
                ),
                stacklevel=3,
            )


# ----------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class _CacheFiles:
    manifest: Path
    frame: Path
    features: Path
    user_ids: Path
    item_ids: Path


def _cache_files(path: Path, cache_dir: str | os.PathLike | None) -> _CacheFiles:
    folder = Path(cache_dir) if cache_dir is not None else path.parent / ".cache"
    # The path hash keeps apart same-named sources sharing one cache folder.
    tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    stem = folder / f"{path.name}.{tag}"
    return _CacheFiles(
        manifest=stem.with_name(stem.name + ".json"),
        frame=stem.with_name(stem.name + ".parquet"),
        features=stem.with_name(stem.name + ".features.npy"),
        user_ids=stem.with_name(stem.name + ".user_ids.parquet"),
        item_ids=stem.with_name(stem.name + ".item_ids.parquet"),
    )


def _read_cache(path: Path, files: _CacheFiles, options: dict) -> EventLog | None:
    """The cached log, or None when it is missing, stale or damaged (then rebuilt)."""
    if not files.manifest.is_file():
        return None  # first load: nothing to report
    try:
        manifest = json.loads(files.manifest.read_text())
        stat = path.stat()
        if (
            manifest.get("tempint_cache_version") != CACHE_VERSION
            or manifest.get("source") != str(path.resolve())
            or manifest.get("options") != options
            or manifest.get("size") != stat.st_size
        ):
            return None
        if manifest.get("mtime_ns") != stat.st_mtime_ns:
            # Touched but maybe unchanged: the content hash decides.
            if _sha256(path) != manifest.get("sha256"):
                return None
            manifest["mtime_ns"] = stat.st_mtime_ns
            _try(lambda: _atomic_write(files.manifest, lambda f: f.write(_dumps(manifest))))
        frame = pl.read_parquet(files.frame)
        if dict(frame.schema) != COLUMNS or frame.height != manifest["num_interactions"]:
            return None
        features = None
        if manifest["num_features"]:
            features = np.load(files.features, allow_pickle=False)
            if features.dtype != np.float32 or features.shape != (
                frame.height,
                manifest["num_features"],
            ):
                return None
        maps = {}
        for key, count in (("user_ids", "num_users"), ("item_ids", "num_items")):
            if key in manifest["id_maps"]:
                maps[key] = pl.read_parquet(getattr(files, key)).to_series()
                if len(maps[key]) != manifest[count]:
                    return None
        events = EventLog(
            frame=frame,
            num_users=int(manifest["num_users"]),
            num_items=int(manifest["num_items"]),
            features=features,
            source=str(path),
            **maps,
        )
    except Exception as err:  # any damage means: rebuild from the source
        log.info("rebuilding the cache of %s (%s)", path, _first_line(err))
        return None
    if manifest.get("unsorted_rows"):
        _warn_unsorted(path, manifest["unsorted_rows"], events.num_interactions)
    return events


def _write_cache(files: _CacheFiles, events: EventLog, manifest: dict) -> None:
    def write() -> None:
        files.manifest.parent.mkdir(parents=True, exist_ok=True)
        # The manifest goes first and comes back last: data without it is never trusted.
        files.manifest.unlink(missing_ok=True)
        _atomic_write(files.frame, events.frame.write_parquet)
        if events.features is not None:
            _atomic_write(files.features, lambda f: np.save(f, events.features, allow_pickle=False))
        else:
            files.features.unlink(missing_ok=True)
        for key in ("user_ids", "item_ids"):
            ids = getattr(events, key)
            target = getattr(files, key)
            if ids is not None:
                _atomic_write(target, ids.to_frame().write_parquet)
            else:
                target.unlink(missing_ok=True)
        _atomic_write(files.manifest, lambda f: f.write(_dumps(manifest)))

    _try(write)


def _try(action: Callable[[], None]) -> None:
    """Caching is an optimisation: a read-only folder must not stop a load."""
    try:
        action()
    except OSError as err:
        log.info("could not write the event-log cache (%s)", err)


def _atomic_write(target: Path, write: Callable) -> None:
    """Write to a temporary file beside `target`, then rename it over `target`."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared data folder needs reads
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dumps(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
