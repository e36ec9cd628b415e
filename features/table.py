"""Reading and validating transaction tables (columns of shared/data/transactions.parquet)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from features.spec import FeatureSpec


class InputError(ValueError):
    """An input table cannot be used; the message says which file, column and rows."""


Opener = Callable[[str], BinaryIO]
"""Opens one input file for reading, :class:`InputError` if there is none."""


def open_local(path: str) -> BinaryIO:
    """A local file (the default :data:`Opener`; ``training.files`` opens ``gs://`` URIs)."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    return open(path, "rb")


def read_transactions(
    paths: Sequence[str | Path], spec: FeatureSpec, open_file: Opener = open_local
) -> pd.DataFrame:
    """Read parquet files (each opened with ``open_file``), concatenate them and order by
    ``TRANSACTION_ID`` (arrival order)."""
    if not paths:
        raise InputError("no input given")
    frames = []
    for path in paths:
        with open_file(str(path)) as f:
            try:
                frame = pd.read_parquet(f)
            except Exception as exc:  # pyarrow raises several types for a non-parquet file
                raise InputError(f"{path}: cannot be read as parquet ({exc})") from exc
        frames.append(validate(frame, spec, source=str(path), sort=False))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return validate(df, spec, source=" + ".join(map(str, paths)))


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
