"""Feast's online response encoded from arrays equals protobuf's own encoding."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.store.bigtable import feast_wire as wire


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, b"\x00"), (1, b"\x01"), (300, b"\xac\x02"), (-1, b"\xff" * 9 + b"\x01")],
)
def test_varint_is_protobufs_base_128(value: int, expected: bytes):
    from feast.protos.feast.types.Value_pb2 import Value

    serialized = Value(int64_val=value).SerializeToString()  # tag byte, then the varint
    assert wire.varint(value) == expected == serialized[1:]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wire_encoding_equals_protobufs(seed: int):
    from feast.protos.feast.serving.ServingService_pb2 import GetOnlineFeaturesResponse
    from feast.protos.feast.types.Value_pb2 import Value
    from google.protobuf.timestamp_pb2 import Timestamp

    rng = np.random.default_rng(seed)
    n, width = 40, 3
    values = rng.normal(size=(n, width)) * 10.0 ** rng.integers(-300, 300, (n, width))
    values[rng.random((n, width)) < 0.2] = np.nan
    values[0, 0], values[1, 0] = 0.0, -0.0
    present = rng.random(n) < 0.7
    event_us = rng.integers(-(10**15), 10**16, n)
    event_us[:3] = [0, 1_000_000, 999]  # zero seconds and/or zero nanos
    expected = GetOnlineFeaturesResponse()
    for j in range(width):
        stamps = [Timestamp() for _ in range(n)]
        for i in np.flatnonzero(present):
            stamps[i].FromMicroseconds(int(event_us[i]))
        expected.results.append(
            GetOnlineFeaturesResponse.FeatureVector(
                values=[Value(double_val=v) if p else Value()
                        for v, p in zip(values[:, j], present, strict=True)],
                statuses=[wire.PRESENT if p else wire.NOT_FOUND for p in present],
                event_timestamps=stamps,
            )
        )  # fmt: skip
    got = GetOnlineFeaturesResponse()
    got.MergeFromString(wire.feature_vectors(values, present, event_us))
    assert got.SerializeToString() == expected.SerializeToString()
