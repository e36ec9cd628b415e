"""Reading and validating transaction tables (columns of shared/data/transactions.parquet).

A history is read from what warehouses and dataframes export, by file name: ``.csv``, ``.json``
/ ``.jsonl`` / ``.ndjson`` (JSON lines), each optionally ``.gz``, ``.avro`` (an Avro container
file), anything else parquet. BigQuery's exports are taken as written: ``TIMESTAMP`` as
``2018-04-01 07:19:05 UTC`` in CSV and JSON, ``INT64`` as strings of digits in JSON,
``NUMERIC`` as decimals (parquet, Avro) or decimal strings (JSON). Ids held as text (a UUID, a
card token, ``000123``) are keyed as a message's (:func:`features.limits.id_of_text`); a CSV's
id columns are read as text, so a zero-padded code stays one.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from features.limits import (
    EPOCH_UNITS,
    ID_DIGITS,
    MAX_AMOUNT,
    MAX_ID,
    MAX_TEXT_ID,
    MAX_TIME,
    MAX_TIME_NS,
    MIN_EPOCH_NS,
    MIN_TIME,
    id_of_text,
    respelled,
)
from features.spec import FeatureSpec


class InputError(ValueError):
    """An input table cannot be used; the message says which file, column and rows."""


ID_COLUMNS = ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID")
_EXACT_FLOAT_INTS = 2**53  # a float column's ids are exact below this


Opener = Callable[[str], BinaryIO]
"""Opens one input file for reading, :class:`InputError` if there is none."""


def open_local(path: str) -> BinaryIO:
    """A local file (the default :data:`Opener`; ``training.files`` opens ``gs://`` URIs)."""
    if Path(path).is_dir():
        raise InputError(f"{path}: is a directory; name its files, e.g. {path}/*.parquet")
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    return open(path, "rb")


def read_transactions(
    paths: Sequence[str | Path],
    spec: FeatureSpec,
    open_file: Opener = open_local,
    naive_time_zone: str = "UTC",
) -> pd.DataFrame:
    """Read files (each opened with ``open_file``, its format by its name: see the module),
    concatenate them and order by ``TRANSACTION_ID`` (arrival order); naive times are in
    ``naive_time_zone`` (:func:`validate`)."""
    if not paths:
        raise InputError("no input given")
    frames = []
    for path in paths:
        kind, read = reader(str(path))
        with open_file(str(path)) as f:
            try:
                frame = read(f)
            except Exception as exc:  # each reader raises several types for a foreign file
                raise InputError(f"{path}: cannot be read as {kind} ({exc})") from exc
        frames.append(validate(frame, spec, str(path), False, naive_time_zone))
    if len(frames) == 1:
        return frames[0].sort_values("TRANSACTION_ID", kind="stable", ignore_index=True)
    # each file is checked: what is left is an id in two files
    return _unique(pd.concat(frames, ignore_index=True), " + ".join(map(str, paths)), sort=True)


def reader(path: str) -> tuple[str, Callable[[BinaryIO], pd.DataFrame]]:
    """The format of ``path`` (by its name) and the function that reads an open file of it."""
    name = path.lower()
    gz = name.endswith(".gz")
    compression = "gzip" if gz else None
    stem = name[:-3] if gz else name
    if stem.endswith(".csv"):
        return "CSV", lambda f: _read_csv(f, compression)
    if stem.endswith((".json", ".jsonl", ".ndjson")):
        return "JSON lines", lambda f: _read_json_lines(f, compression)
    if stem.endswith(".avro"):
        return "Avro", _read_avro
    return "parquet", pd.read_parquet


def _read_csv(f: BinaryIO, compression: str | None) -> pd.DataFrame:
    """A CSV with its id columns (in any spelling) read as the text they hold, as a message's
    strings are: ``000123`` is a text id, not 123, and ``NA`` one too, not a missing value (an
    empty field is an empty id); other columns' types and missing values are pandas'."""
    header = pd.read_csv(f, compression=compression, nrows=0).columns
    f.seek(0)
    renames, _ = respelled(header, ID_COLUMNS)
    ids = {name: str for name in header if name in ID_COLUMNS or name in renames}
    return pd.read_csv(f, compression=compression, converters=ids)


def _read_json_lines(f: BinaryIO, compression: str | None) -> pd.DataFrame:
    """JSON lines with pyarrow's reader (C++; a column's type must be the same on every line,
    as an export writes it)."""
    import pyarrow as pa
    import pyarrow.json

    stream = pa.CompressedInputStream(f, compression) if compression else f
    return pyarrow.json.read_json(stream).to_pandas()


def _read_avro(f: BinaryIO) -> pd.DataFrame:
    import fastavro

    return pd.DataFrame.from_records(list(fastavro.reader(f)))


def validate(
    df: pd.DataFrame,
    spec: FeatureSpec,
    source: str = "input",
    sort: bool = True,
    naive_time_zone: str = "UTC",
) -> pd.DataFrame:
    """Check columns, types, values and ids; return ``df`` with parsed times (naive UTC) and
    int64 ids, sorted by transaction id. Times with a time zone (a BigQuery ``TIMESTAMP``
    exported to parquet, text with ``Z`` or one offset) and numbers since the epoch become UTC;
    naive times are read in ``naive_time_zone``, each as the stream reads a message's with the
    same ``--naive_time_zone`` (:func:`_naive_to_utc`).

    Raises :class:`InputError` for missing columns, unparsable timestamps, missing or
    non-finite values, values a message could not hold (:mod:`features.limits`: ids that are
    neither integers in [0, 2**63) nor text ids, amounts outside [0, ``MAX_AMOUNT``],
    ``TX_FRAUD`` other than 0 or 1, times outside [``MIN_TIME``, ``MAX_TIME``)), and duplicate
    ``TRANSACTION_ID`` (named as the table has them). Text ids become their keys.
    """
    if any(c not in df.columns for c in spec.input_columns):
        df = _respelled(df, spec.input_columns, source)
    missing = [c for c in spec.input_columns if c not in df.columns]
    if missing:
        raise InputError(f"{source}: missing columns {missing} (has {list(df.columns)})")
    df = df.copy()
    if not pd.api.types.is_datetime64_any_dtype(df["TX_DATETIME"]):
        df["TX_DATETIME"] = _times(df["TX_DATETIME"], source)
    if getattr(df["TX_DATETIME"].dtype, "tz", None) is not None:  # as the stream reads offsets
        df["TX_DATETIME"] = df["TX_DATETIME"].dt.tz_convert("UTC").dt.tz_localize(None)
    elif naive_time_zone not in ("UTC", "Etc/UTC"):
        df["TX_DATETIME"] = _naive_to_utc(df["TX_DATETIME"], naive_time_zone, source)
    df["TX_DATETIME"] = df["TX_DATETIME"].astype("datetime64[ns]")
    as_given = df["TRANSACTION_ID"]  # for the error of a duplicate: a text id, not its key
    for col in spec.input_columns:
        values = df[col]
        kind = pd.api.types.infer_dtype(values, skipna=True)
        if kind == "decimal":  # parquet or Avro DECIMAL
            df[col] = values = _from_decimals(values, col, source)
        elif col in ID_COLUMNS and values.dtype.kind not in "biufcmM" and not values.isna().any():
            df[col] = values = _ids_of_objects(values, col, source)  # text ids, digits, mixed
        elif kind == "string" and col != "TX_DATETIME":  # JSON exports: NUMERIC
            df[col] = values = _from_text(values, col, source)
        if values.isna().any():
            raise InputError(f"{source}: {int(values.isna().sum())} missing values in {col}")
        if col != "TX_DATETIME":
            if not pd.api.types.is_numeric_dtype(values):
                raise InputError(f"{source}: column {col} must be numeric, got {values.dtype}")
            if not np.isfinite(values.to_numpy(np.float64)).all():
                raise InputError(f"{source}: non-finite values in {col}")
        if col in ID_COLUMNS:
            df[col] = _ids(values.to_numpy(), col, source)
        else:
            _check_range(values.to_numpy(), col, source)
    return _unique(df, source, sort, as_given)


def _unique(
    df: pd.DataFrame, source: str, sort: bool, as_given: pd.Series | None = None
) -> pd.DataFrame:
    """``df`` (checked) refused for a duplicate ``TRANSACTION_ID`` (shown as in ``as_given``,
    the column before its ids were keyed); sorted by it if ``sort``."""
    dup = df["TRANSACTION_ID"].duplicated(keep=False)
    if dup.any():
        shown = df["TRANSACTION_ID"] if as_given is None else as_given
        ids = sorted(shown[dup].unique().tolist(), key=lambda v: (type(v) is str, v))
        raise InputError(f"{source}: {len(ids)} duplicate TRANSACTION_IDs, e.g. {ids[:5]}")
    if sort:
        df = df.sort_values("TRANSACTION_ID", kind="stable", ignore_index=True)
    return df


def _respelled(df: pd.DataFrame, columns: Sequence[str], source: str) -> pd.DataFrame:
    """``df`` with its columns named as ``columns`` where they are spelled otherwise
    (:func:`features.limits.respelled`: ``transaction_id``, ``TransactionId``)."""
    renames, twice = respelled(df.columns, columns)
    if twice:
        raise InputError(f"{source}: column {', '.join(twice)} given twice, in two spellings")
    return df.rename(columns=renames)


def _times(values: pd.Series, source: str) -> pd.Series:
    """Text or object times as datetimes (UTC where an offset or BigQuery's `` UTC`` is given);
    numbers (or strings of their digits) as times since the epoch, as a message's
    (:func:`_from_epoch`)."""
    if pd.api.types.is_bool_dtype(values):
        raise InputError(f"{source}: TX_DATETIME holds booleans, not times")
    if pd.api.types.is_numeric_dtype(values):
        return _from_epoch(values, source)
    if pd.api.types.infer_dtype(values, skipna=True) == "string":
        if not values.isna().any() and values.str.fullmatch(_EPOCH_DIGITS).all():
            return _from_epoch(values.astype(np.int64), source)  # proto3's JSON of an int64
        iso = values.str.replace(_BIGQUERY_UTC, "+00:00", regex=True)
        zoned = iso.str.contains(_ZONE, na=False)
        if zoned.all() or not zoned.any():  # naive among zoned: which zone? (refused below)
            parsed = pd.to_datetime(iso, format="ISO8601", utc=True, errors="coerce")
            if not (parsed.isna() & values.notna()).any():
                return parsed if zoned.any() else parsed.dt.tz_localize(None)
    parsed = pd.to_datetime(values, errors="coerce")
    bad = parsed.isna() & values.notna()
    if bad.any():
        rows = values[bad].head(3).tolist()
        raise InputError(f"{source}: {int(bad.sum())} unparsable TX_DATETIME values, e.g. {rows}")
    return parsed


def _from_epoch(values: pd.Series, source: str) -> pd.Series:
    """Numbers since the epoch as naive UTC datetimes, each read as a message's
    (:func:`features.limits.epoch_ns`: the unit by the size, a fraction to the microsecond);
    ``InputError`` for those outside [1973-03-03, 2200)."""
    if values.isna().any():
        raise InputError(f"{source}: {int(values.isna().sum())} missing values in TX_DATETIME")
    v = values.to_numpy()
    sizes = [v < below for below, _ in EPOCH_UNITS[:-1]]
    unit = np.select(sizes, [ns for _, ns in EPOCH_UNITS[:-1]], 1).astype(np.int64)
    if v.dtype.kind == "f":  # as epoch_ns: to the microsecond, or the nanosecond in ns
        bad = ~np.isfinite(v) | (v < 0) | (v >= MAX_TIME_NS)
        v = np.where(bad, 0.0, v)
        micro = unit >= 1_000
        whole = np.rint(np.where(micro, v * (unit // 1_000), v)).astype(np.int64)
        ns = whole * np.where(micro, 1_000, 1)
    else:
        bad = (v < 0) | (v >= MAX_TIME_NS)  # before the product, which could overflow
        ns = np.where(bad, 0, v).astype(np.int64) * unit
    bad |= (ns < MIN_EPOCH_NS) | (ns >= MAX_TIME_NS)
    allowed = (
        "a time since the epoch in [1973-03-03, 2200) (in seconds, milliseconds, microseconds "
        "or nanoseconds, told by its size)"
    )
    _refuse(values.to_numpy(), bad, "TX_DATETIME", source, allowed)
    return pd.Series(ns.astype("datetime64[ns]"), index=values.index).dt.tz_localize("UTC")


def _naive_to_utc(times: pd.Series, zone_name: str, source: str) -> pd.Series:
    """Naive local times of ``zone_name`` as naive UTC, as the stream reads a naive message
    time (``datetime.replace(tzinfo=zone)``: in a repeated hour the first, summer offset; in a
    skipped one the offset before the change). Vectorised but for the times in a change."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"--naive_time_zone {zone_name!r}: not an IANA time zone") from exc
    local = times.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
    utc = local.dt.tz_convert("UTC").dt.tz_localize(None)
    changes = (local.isna() & times.notna()).to_numpy()
    if changes.any():  # a repeated or skipped hour: zoneinfo's offset for fold 0, as the stream
        ns = times.to_numpy("datetime64[ns]").view(np.int64)[changes]
        offsets = [
            int(
                zone.utcoffset(
                    datetime(1970, 1, 1) + timedelta(microseconds=t // 1_000)
                ).total_seconds()
            )
            for t in ns.tolist()
        ]
        fixed = ns - np.array(offsets, np.int64) * 10**9
        values = utc.to_numpy("datetime64[ns]").copy()
        values[changes] = fixed.astype("datetime64[ns]")
        utc = pd.Series(values, index=times.index)
    return utc


_BIGQUERY_UTC = r" UTC$"
"""How BigQuery's CSV and JSON exports end a ``TIMESTAMP`` (``2018-04-01 07:19:05 UTC``)."""
_ZONE = r"(?:Z|[+-][0-9]{2}:?[0-9]{2})$"
_EPOCH_DIGITS = r"[1-9][0-9]{8,18}"  # the wire contract's time as a string of digits


def _from_text(values: pd.Series, col: str, source: str) -> pd.Series:
    """A column of strings (a JSON export's ``NUMERIC``) as numbers."""
    if values.isna().any():
        return values  # refused as missing values next
    numbers = pd.to_numeric(values, errors="coerce")
    _refuse(values.to_numpy(), numbers.isna().to_numpy(), col, source, "numbers")
    return numbers


def _ids_of_objects(values: pd.Series, col: str, source: str) -> pd.Series:
    """An id column of Python objects as int64 keys, each distinct value judged once as a message's
    id would be: a string is its digits' number or a text id's key
    (:func:`features.limits.id_of_text`), a UUID (Avro's ``uuid``) its text's, an integer
    itself. ``InputError`` with the reason for the first refused value."""
    codes, uniques = pd.factorize(values)
    keys = np.empty(len(uniques), np.int64)
    items = np.asarray(uniques, dtype=object)  # Python objects, a categorical's too
    unjudged = _plain_ids(items, keys)
    judge = id_of_text.__wrapped__  # distinct values: the stream's cache would only churn
    bad = np.zeros(len(uniques), bool)
    reason = ""
    for i in np.flatnonzero(unjudged):  # in order of first appearance: the reason is the first
        value = items[i]
        try:
            if isinstance(value, uuid.UUID):
                value = str(value)
            if isinstance(value, str):
                keys[i] = judge(value)[0]
            elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
                keys[i] = value
            else:
                raise ValueError(f"is {type(value).__name__} {value!r}")
        except ValueError as exc:
            bad[i], reason = True, reason or str(exc)
    if bad.any():
        allowed = (
            "integers in [0, 2**63), strings of their digits or text ids (1 to 128 characters, "
            f"no control characters or space at an end, no sign; one {reason})"
        )
        _refuse(values.to_numpy(), bad[codes], col, source, allowed)
    return pd.Series(keys[codes], index=values.index)


_SHORT_DIGITS = r"^(0|[1-9][0-9]{0,17})$"  # the digits of a number below 10**18 < 2**63
_NUMBER = f"^([+-][0-9]+|{ID_DIGITS})$"  # a signed number, or digits judged one by one
_PLAIN = r"^[!-~]([^\x00-\x1f\x7f]*[!-~])?$"  # printable ASCII at both ends, no control


def _plain_ids(items: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Write into ``keys`` the key of each of ``items`` that is plainly an id as
    :func:`features.limits.id_of_text` would key it, vectorised (pyarrow's RE2, hashlib in one
    pass): a ``str`` of fewer than 19 digits, or a text id of printable ASCII, not a space, at
    both ends, no control character, at most ``MAX_TEXT_ID`` characters, and not a signed
    number (a subset of what ``id_of_text`` takes: Unicode spaces are left to it). Returns the
    mask of the others (non-ASCII or spaces at an end, over-long, refused, not ``str``), which
    the caller judges one by one with ``id_of_text``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    unjudged = np.ones(len(items), bool)
    if pd.api.types.infer_dtype(items, skipna=False) == "string":  # the usual case, in C
        text, strings = np.ones(len(items), bool), items
    else:
        text = np.fromiter((isinstance(v, str) for v in items), bool, len(items))
        strings = items[text]
    try:
        arrow = pa.array(strings, type=pa.string())
    except UnicodeEncodeError:  # a lone surrogate: id_of_text refuses it with the reason
        return unjudged

    def matches(pattern: str) -> np.ndarray:
        return pc.match_substring_regex(arrow, pattern).to_numpy(zero_copy_only=False)

    digits = matches(_SHORT_DIGITS)
    plain = matches(_PLAIN) & ~matches(_NUMBER) & (pc.utf8_length(arrow).to_numpy() <= MAX_TEXT_ID)
    found = np.zeros(len(strings), np.int64)
    if digits.any():
        found[digits] = pc.cast(arrow.filter(pa.array(digits)), pa.int64()).to_numpy()
    if plain.any():
        found[plain] = _text_keys(strings if plain.all() else strings[plain])
    done = digits | plain
    if strings is items:
        keys[done] = found[done]
        unjudged = ~done
    else:
        where = np.flatnonzero(text)[done]
        keys[where] = found[done]
        unjudged[where] = False
    return unjudged


def _text_keys(texts: np.ndarray) -> np.ndarray:
    """:func:`features.limits.text_key` of each of ``texts`` (``str``) as int64: the SHA-256
    digests in one pass, their first 8 bytes read big-endian, the top bit cleared."""
    digests = b"".join([hashlib.sha256(t.encode()).digest() for t in texts])
    first = np.frombuffer(digests, np.uint8).reshape(-1, 32)[:, :8].copy().view(">u8")
    return (first.ravel() & np.uint64(MAX_ID)).astype(np.int64)


def _from_decimals(values: pd.Series, col: str, source: str) -> pd.Series:
    """A column of ``decimal.Decimal`` (a parquet ``DECIMAL``: BigQuery's ``NUMERIC``, the type
    it advises for money) as float64, ids as int64 when every one is whole."""
    if values.isna().any():
        return values  # refused as missing values next
    if col in ID_COLUMNS:
        ok = values.map(lambda v: v == v.to_integral_value() and 0 <= v <= MAX_ID)
        _refuse(values.to_numpy(), ~ok.to_numpy(bool), col, source, "whole numbers in [0, 2**63)")
        return values.map(int).astype(np.int64)
    return values.astype(np.float64)


def _ids(values: np.ndarray, col: str, source: str) -> np.ndarray:
    """An id column as int64; ``InputError`` unless every id is an integer in [0, 2**63), as
    in a message. Floats are taken where they are whole and exact (below 2**53): pandas
    writes an integer column that once held a missing value as floats."""
    kind = values.dtype.kind
    if kind == "b":
        raise InputError(f"{source}: {col} must hold integers, got booleans")
    if kind == "f":
        bad = (values != np.floor(values)) | (values < 0) | (values >= _EXACT_FLOAT_INTS)
        _refuse(values, bad, col, source, "whole numbers in [0, 2**53) when stored as floats")
        return values.astype(np.int64)
    if kind == "u":
        _refuse(values, values > MAX_ID, col, source, "in [0, 2**63)")
    else:
        _refuse(values, values < 0, col, source, "in [0, 2**63)")
    return values.astype(np.int64, copy=False)


def _check_range(values: np.ndarray, col: str, source: str) -> None:
    """``InputError`` unless ``values`` of ``col`` are in the range a message may hold."""
    if col == "TX_DATETIME":
        lo, hi = np.datetime64(MIN_TIME, "ns"), np.datetime64(MAX_TIME, "ns")
        _refuse(values, (values < lo) | (values >= hi), col, source,
                f"in [{MIN_TIME:%Y-%m-%d}, {MAX_TIME:%Y-%m-%d})")  # fmt: skip
    elif col == "TX_AMOUNT":
        bad = (values < 0) | (values > MAX_AMOUNT)
        _refuse(values, bad, col, source, f"in [0, {MAX_AMOUNT:.0e}]")
    elif col == "TX_FRAUD":
        _refuse(values, (values != 0) & (values != 1), col, source, "0 or 1")


def _refuse(values: np.ndarray, bad: np.ndarray, col: str, source: str, allowed: str) -> None:
    n_bad = int(bad.sum())
    if n_bad:
        examples = pd.Series(values[bad][:3])
        if examples.dtype.kind == "M":
            examples = examples.astype(str)
        rows = "1 row is" if n_bad == 1 else f"{n_bad} rows are"
        raise InputError(
            f"{source}: {col} must be {allowed}, as in a message the stream takes; {rows} "
            f"not, e.g. {examples.tolist()}"
        )


def event_times_ns(df: pd.DataFrame) -> np.ndarray:
    """``TX_DATETIME`` as int64 nanoseconds since the epoch (naive time)."""
    return df["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64)
