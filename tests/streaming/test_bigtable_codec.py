"""Row keys, table names and packed cells of the Bigtable online store (no emulator)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from feast import Field
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Float64, Int64

from streaming.store.bigtable import codec
from streaming.store.bigtable.codec import pack, row_key, row_keys, table_name, unpack


def test_row_keys_table_names_and_packed_cells():
    assert row_keys(["CUSTOMER_ID"], [[42, 7]]) == [b"CUSTOMER_ID=42", b"CUSTOMER_ID=7"]
    assert row_key(["TERMINAL_ID", "CUSTOMER_ID"], [3, 4]) == b"CUSTOMER_ID=4|TERMINAL_ID=3"
    assert table_name("fraudstream") == "fraudstream-packed"
    long = table_name("p" * 80)
    assert len(long) <= 50 and long != table_name("p" * 79)
    values = np.array([1.5, np.nan, -0.0, 1e308])
    tag, event_us, back = unpack(pack(7, -123, values))
    assert (tag, event_us) == (7, -123)
    np.testing.assert_array_equal(back, values)


def test_a_feast_entity_key_has_the_row_key_of_its_values():
    key = EntityKey(
        join_keys=["TERMINAL_ID", "CUSTOMER_ID"],
        entity_values=[Value(int64_val=3), Value(string_val="c4")],
    )
    assert codec.proto_row_key(key) == b"CUSTOMER_ID=c4|TERMINAL_ID=3"


def test_a_cell_of_another_format_is_refused():
    cell = bytearray(pack(7, 0, np.zeros(2)))
    cell[0] = codec.FORMAT + 1
    with pytest.raises(ValueError, match="unknown packed-cell format 2"):
        unpack(bytes(cell))


def test_decode_keeps_only_fresh_cells_of_the_view_schema(caplog: pytest.LogCaptureFixture):
    tag, width, oldest = codec.schema_tag(["A", "B"]), 2, 1_000
    fresh = np.array([1.5, np.nan])
    cells = [
        pack(tag, 5_000, fresh),
        None,  # no cell
        pack(tag, 5_000, np.zeros(3)),  # another width
        pack(tag + 1, 5_000, fresh),  # another schema
        pack(tag, oldest - 1, fresh),  # older than the oldest event time kept
        pack(tag, oldest, -fresh),
    ]
    with caplog.at_level(logging.WARNING, logger=codec.__name__):
        present, event_us, values = codec.decode(cells, tag, width, oldest, view="v")
    assert present.tolist() == [True, False, False, False, False, True]
    assert event_us.tolist() == [5_000, 0, 0, 0, 0, oldest]
    np.testing.assert_array_equal(values[[0, 5]], [fresh, -fresh])
    assert np.isnan(values[1:5]).all()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "v: 1 cells of another size read as missing",
        "v: 1 cells of another schema read as missing",
    ]


def test_decode_of_no_rows_is_empty():
    present, event_us, values = codec.decode([], 1, 3, 0)
    assert present.shape == (0,) and event_us.shape == (0,) and values.shape == (0, 3)


def test_micros_round_trip_and_a_naive_time_is_utc():
    aware = datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert codec.to_micros(aware) == -1
    assert codec.to_micros(aware.replace(tzinfo=None)) == -1
    later = aware + timedelta(days=20_000, microseconds=123)
    assert codec.from_micros(codec.to_micros(later)) == later


def test_feature_values_convert_to_floats():
    assert codec.as_float(Value(int64_val=3), "v", "N") == 3.0
    assert codec.as_float(Value(bool_val=True), "v", "N") == 1.0
    assert np.isnan(codec.as_float(None, "v", "N"))
    assert np.isnan(codec.as_float(Value(), "v", "N"))
    with pytest.raises(ValueError, match=r"view 'v': feature 'N' has a string_val value"):
        codec.as_float(Value(string_val="x"), "v", "N")
    assert codec.native(Value(string_val="x")) == "x" and codec.native(Value()) is None


def test_only_float64_features_are_storable():
    ok = SimpleNamespace(name="v", features=[Field(name="A", dtype=Float64)])
    assert codec.feature_names(ok) == ["A"]
    bad = SimpleNamespace(name="v", features=[*ok.features, Field(name="N", dtype=Int64)])
    with pytest.raises(ValueError, match=r"'v'.*'N'.*Float64"):
        codec.feature_names(bad)
