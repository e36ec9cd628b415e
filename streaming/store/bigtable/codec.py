"""Row keys, table names and packed cells of the Bigtable online store; no I/O.

Layout of the data this module encodes and decodes:

* table: :func:`table_name` of the Feast project (one table per project);
* row key: :func:`row_keys` of the entity key (``CUSTOMER_ID=42``), so every view of an entity
  lives in one row;
* column family :data:`FAMILY`, qualifier = feature view name, value = :func:`pack`: a 13-byte
  header (format version :data:`FORMAT`, :func:`schema_tag` of the view's feature names, event
  time in µs) then the view's features as little-endian float64, in schema order. Only Float64
  features can be stored (:func:`feature_names` refuses others).

:func:`decode` turns the cells of many rows into arrays and marks as missing a cell of another
size, format or schema, and one older than a given event time.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
from feast import FeatureView
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import Float64

logger = logging.getLogger(__name__)

FAMILY = "f"
"""The column family of every packed cell."""
FORMAT = 1
"""Version of the packed-cell format, the header's first byte."""
HEADER = struct.Struct("<BIq")
"""Packed-cell header: format version, CRC32 of the feature names, event time (µs)."""
TABLE_MAX = 50
"""Bigtable's longest table id."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Decoded(NamedTuple):
    """Cells of ``n`` rows as arrays; a row whose cell is missing or unusable has no value."""

    present: np.ndarray
    """(n,) bool: the row has a usable cell."""
    event_us: np.ndarray
    """(n,) int64: event time of each present row (µs since the epoch), 0 elsewhere."""
    values: np.ndarray
    """(n, features) float64 in schema order; NaN where not present."""


def row_keys(join_keys: Sequence[str], columns: Sequence[Sequence[Any]]) -> list[bytes]:
    """Bigtable row keys of entities given by column: ``b"CUSTOMER_ID=42"``; a composite key
    joins its parts sorted by name with ``|``.

    The one place ids become keys: swap it to pseudonymise (a keyed hash) or salt hot ranges.
    """
    if len(join_keys) == 1:
        prefix = f"{join_keys[0]}="
        return [f"{prefix}{value}".encode() for value in columns[0]]
    order = sorted(range(len(join_keys)), key=join_keys.__getitem__)
    return [
        "|".join(f"{join_keys[i]}={row[i]}" for i in order).encode()
        for row in zip(*columns, strict=True)
    ]


def row_key(join_keys: Sequence[str], values: Sequence[Any]) -> bytes:
    """The row key of one entity (see :func:`row_keys`)."""
    return row_keys(join_keys, [[v] for v in values])[0]


def proto_row_key(entity_key: EntityKeyProto) -> bytes:
    """The row key of a Feast entity key."""
    return row_key(list(entity_key.join_keys), [native(v) for v in entity_key.entity_values])


def table_name(project: str) -> str:
    """The table of a Feast project: ``<project>-packed``, hashed to fit Bigtable's 50 chars."""
    name = f"{project}-packed"
    if len(name) <= TABLE_MAX:
        return name
    digest = hashlib.sha256(project.encode()).hexdigest()[:12]
    return f"{project[: TABLE_MAX - len(digest) - 9]}-{digest}-packed"


def feature_names(view: FeatureView) -> list[str]:
    """A view's features in schema order; ValueError names a feature that is not Float64."""
    for feature in view.features:
        if feature.dtype != Float64:
            raise ValueError(
                f"feature view {view.name!r}: feature {feature.name!r} is {feature.dtype}; "
                "the Bigtable online store stores Float64 features only"
            )
    return [f.name for f in view.features]


def schema_tag(feature_names: Sequence[str]) -> int:
    """CRC32 of a view's feature names in order: a cell packed under another schema is stale."""
    return zlib.crc32("\x1f".join(feature_names).encode())


def cell_size(width: int) -> int:
    """Bytes of a packed cell of ``width`` features."""
    return HEADER.size + 8 * width


def pack(tag: int, event_us: int, values: np.ndarray) -> bytes:
    """One cell value: header + float64 little-endian values."""
    return HEADER.pack(FORMAT, tag, event_us) + np.ascontiguousarray(values, "<f8").tobytes()


def unpack(cell: bytes) -> tuple[int, int, np.ndarray]:
    """``(schema tag, event time µs, values)`` of a cell written by :func:`pack`.

    Raises ValueError for a cell of another format version.
    """
    version, tag, event_us = HEADER.unpack_from(cell)
    if version != FORMAT:
        raise ValueError(f"unknown packed-cell format {version} (expected {FORMAT})")
    return tag, event_us, np.frombuffer(cell, "<f8", offset=HEADER.size)


def decode(
    cells: Sequence[bytes | None], tag: int, width: int, oldest_us: int, view: str = ""
) -> Decoded:
    """The cells of ``n`` rows (None: no cell) of a view of ``width`` features, as arrays.

    A cell is present when it has the size of ``width`` features, format :data:`FORMAT`,
    schema ``tag`` and an event time of at least ``oldest_us``. Cells of another size or schema
    are logged (with ``view``) as a warning: they read as missing.
    """
    n = len(cells)
    present, event_us = np.zeros(n, bool), np.zeros(n, np.int64)
    values = np.full((n, width), np.nan)
    hits = [(i, cell) for i, cell in enumerate(cells) if cell]
    size = cell_size(width)
    sized = [(i, cell) for i, cell in hits if len(cell) == size]
    if len(sized) < len(hits):
        logger.warning("%s: %d cells of another size read as missing", view,
                       len(hits) - len(sized))  # fmt: skip
    if sized:
        rows = np.array([i for i, _ in sized])
        packed = np.frombuffer(b"".join(c for _, c in sized), _cell_dtype(width))
        fresh = packed["t"] >= oldest_us
        same = (packed["version"] == FORMAT) & (packed["tag"] == tag)
        if not same.all():
            logger.warning("%s: %d cells of another schema read as missing", view,
                           int((~same).sum()))  # fmt: skip
        ok = fresh & same
        present[rows[ok]], event_us[rows[ok]] = True, packed["t"][ok]
        values[rows[ok]] = packed["v"][ok]
    return Decoded(present, event_us, values)


def to_micros(ts: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC (Feast's convention)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(event_us: int) -> datetime:
    """The UTC datetime of microseconds since the epoch (inverse of :func:`to_micros`)."""
    return EPOCH + timedelta(microseconds=event_us)


def native(value: ValueProto) -> Any:
    """The Python value a Feast ``Value`` holds; None for an unset one."""
    kind = value.WhichOneof("val")
    return getattr(value, kind) if kind else None


def as_float(value: ValueProto | None, view: str, name: str) -> float:
    """A numeric Feast ``Value`` as a float, NaN for null; ValueError names a non-number."""
    kind = value.WhichOneof("val") if value is not None else None
    if kind in (None, "null_val"):
        return float("nan")
    if kind in ("double_val", "float_val", "int64_val", "int32_val", "bool_val"):
        return float(getattr(value, kind))
    raise ValueError(f"feature view {view!r}: feature {name!r} has a {kind} value, not a number")


def _cell_dtype(width: int) -> np.dtype:
    """The packed cell as a numpy record (no padding: the header is 13 bytes)."""
    return np.dtype([("version", "u1"), ("tag", "<u4"), ("t", "<i8"), ("v", "<f8", (width,))])
