"""Tables at local paths or ``gs://`` URIs, through Beam's ``FileSystems`` (as the registry and
the job read and write): the histories the batch commands read, the tables they write."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from features import table
from features.spec import FeatureSpec
from features.table import InputError


def open_file(path: str) -> BinaryIO:
    """A local file or a URI (``gs://``, any scheme Beam has a file system for), for reading;
    :class:`InputError` if there is no such file."""
    if FileSystems.get_scheme(path) in (None, "file"):
        return table.open_local(path)
    if not FileSystems.exists(path):
        raise InputError(f"{path}: no such file")
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_transactions(
    paths: Sequence[str | Path], spec: FeatureSpec, naive_time_zone: str = "UTC"
) -> pd.DataFrame:
    """:func:`features.table.read_transactions` of local paths, URIs and globs of either (naive
    times in ``naive_time_zone``)."""
    return table.read_transactions(expand(paths), spec, open_file, naive_time_zone)


_GLOB = re.compile(r"[*?\[]")


def expand(paths: Sequence[str | Path]) -> list[str]:
    """Each path as given and each glob (``*``, ``?``, ``[...]``; local or ``gs://``, as a
    sharded export such as BigQuery's names its files) as the files it matches, in name order;
    :class:`InputError` for a glob that matches nothing."""
    out: list[str] = []
    for path in map(str, paths):
        if not _GLOB.search(path):
            out.append(path)
            continue
        (result,) = FileSystems.match([path])
        matched = sorted(m.path for m in result.metadata_list)
        if not matched:
            raise InputError(f"{path}: matches no file")
        out.extend(matched)
    return out


def create(path: str) -> BinaryIO:
    """A new file for writing at a local path (its folder made) or a URI."""
    if FileSystems.get_scheme(path) in (None, "file"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def write_parquet(df: pd.DataFrame, path: str) -> None:
    """``df`` (without its index) as a parquet file at a local path or a URI."""
    with create(path) as f:
        df.to_parquet(f, index=False)
