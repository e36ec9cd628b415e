"""Reading and validating transaction tables (columns of shared/data/transactions.parquet), and
writing tables, at local paths or ``gs://`` URIs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from features.spec import FeatureSpec


class InputError(ValueError):
    """An input table cannot be used; the message says which file, column and rows."""


def read_transactions(paths: Sequence[str | Path], spec: FeatureSpec) -> pd.DataFrame:
    """Read parquet files (local paths or ``gs://`` URIs), concatenate them and order by
    ``TRANSACTION_ID`` (arrival order)."""
    if not paths:
        raise InputError("no input given")
    frames = []
    for path in paths:
        frames.append(validate(_read_parquet(str(path)), spec, source=str(path), sort=False))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return validate(df, spec, source=" + ".join(map(str, paths)))


def _read_parquet(path: str) -> pd.DataFrame:
    """One parquet file, local or at a URI (see :func:`_open`)."""
    with _open(path) as f:
        try:
            return pd.read_parquet(f)
        except Exception as exc:  # pyarrow raises several types for a non-parquet file
            raise InputError(f"{path}: cannot be read as parquet ({exc})") from exc


def _open(path: str) -> BinaryIO:
    """A local file, or a URI (``gs://``, any scheme Beam has a file system for) opened through
    Beam's ``FileSystems``, as the job opens its ``gs://`` inputs; :class:`InputError` if
    there is no such file."""
    if "://" not in path:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
        return open(path, "rb")
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        raise InputError(f"{path}: no such file")
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def write_parquet(df: pd.DataFrame, path: str) -> None:
    """``df`` (without its index) as a parquet file at a local path (its folder made) or a URI
    (``gs://``, through Beam's ``FileSystems``)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(path) in (None, "file"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        df.to_parquet(f, index=False)


def validate(
    df: pd.DataFrame, spec: FeatureSpec, source: str = "input", sort: bool = True
) -> pd.DataFrame:
    """Check columns, types and ids; return ``df`` with parsed times, sorted by transaction id.

    Raises :class:`InputError` for missing columns, unparsable timestamps, missing or
    non-finite values, and duplicate ``TRANSACTION_ID``.
    """
    missing = [c for c in spec.input_columns if c not in df.columns]
    if missing:
        raise InputError(f"{source}: missing columns {missing} (has {list(df.columns)})")
    df = df.copy()
    if not pd.api.types.is_datetime64_any_dtype(df["TX_DATETIME"]):
        parsed = pd.to_datetime(df["TX_DATETIME"], errors="coerce")
        bad = parsed.isna() & df["TX_DATETIME"].notna()
        if bad.any():
            rows = df.loc[bad, "TX_DATETIME"].head(3).tolist()
            raise InputError(
                f"{source}: {int(bad.sum())} unparsable TX_DATETIME values, e.g. {rows}"
            )
        df["TX_DATETIME"] = parsed
    if getattr(df["TX_DATETIME"].dtype, "tz", None) is not None:
        raise InputError(
            f"{source}: TX_DATETIME must be naive (one time zone), got a tz-aware column"
        )
    df["TX_DATETIME"] = df["TX_DATETIME"].astype("datetime64[ns]")
    for col in spec.input_columns:
        values = df[col]
        if values.isna().any():
            raise InputError(f"{source}: {int(values.isna().sum())} missing values in {col}")
        if col != "TX_DATETIME":
            if not pd.api.types.is_numeric_dtype(values):
                raise InputError(f"{source}: column {col} must be numeric, got {values.dtype}")
            if not np.isfinite(values.to_numpy(np.float64)).all():
                raise InputError(f"{source}: non-finite values in {col}")
    dup = df["TRANSACTION_ID"].duplicated(keep=False)
    if dup.any():
        ids = sorted(df.loc[dup, "TRANSACTION_ID"].unique().tolist())
        raise InputError(f"{source}: {len(ids)} duplicate TRANSACTION_IDs, e.g. {ids[:5]}")
    if sort:
        df = df.sort_values("TRANSACTION_ID", kind="stable", ignore_index=True)
    return df


def event_times_ns(df: pd.DataFrame) -> np.ndarray:
    """``TX_DATETIME`` as int64 nanoseconds since the epoch (naive time)."""
    return df["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64)
