from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features import presets
from features.limits import id_of_text, text_key
from features.synthetic import transactions
from features.table import InputError, read_transactions, validate
from streaming.cli import main
from streaming.schema import parse_transaction

SPEC = presets.BASELINE


@pytest.fixture
def parquet(tmp_path):
    def write(df: pd.DataFrame, name: str = "tx.parquet"):
        path = tmp_path / name
        df.to_parquet(path)
        return path

    return write


def test_several_inputs_are_concatenated_in_transaction_id_order(parquet):
    df = transactions(n=300)
    a = parquet(df.iloc[150:], "a.parquet")
    b = parquet(df.iloc[:150], "b.parquet")
    out = read_transactions([a, b], SPEC)
    assert out["TRANSACTION_ID"].tolist() == list(range(300))


def test_missing_columns_are_named(parquet):
    path = parquet(transactions(n=10).drop(columns=["TERMINAL_ID", "TX_FRAUD"]))
    with pytest.raises(InputError, match=r"missing columns \['TERMINAL_ID', 'TX_FRAUD'\]"):
        read_transactions([path], SPEC)


def test_unparsable_timestamps_are_shown(parquet):
    df = transactions(n=10)
    df["TX_DATETIME"] = df["TX_DATETIME"].astype(str)
    df.loc[3, "TX_DATETIME"] = "yesterday-ish"
    with pytest.raises(
        InputError, match=r"1 unparsable TX_DATETIME values, e.g. \['yesterday-ish'\]"
    ):
        read_transactions([parquet(df)], SPEC)


def test_string_timestamps_are_parsed():
    df = transactions(n=10)
    df["TX_DATETIME"] = df["TX_DATETIME"].astype(str)
    assert validate(df, SPEC)["TX_DATETIME"].dtype == "datetime64[ns]"


@pytest.mark.parametrize("zone", ["UTC", "Europe/Brussels"])
def test_times_with_a_zone_are_read_in_utc_as_the_stream_reads_them(parquet, zone):
    """A BigQuery TIMESTAMP exported to parquet is tz-aware (UTC); the stream converts a
    message's offset to UTC, so the table's times are too."""
    df = transactions(n=10)
    naive = df["TX_DATETIME"]
    df["TX_DATETIME"] = naive.dt.tz_localize("UTC").dt.tz_convert(zone)
    out = read_transactions([parquet(df)], SPEC)
    assert out["TX_DATETIME"].dtype == "datetime64[ns]"
    assert out["TX_DATETIME"].tolist() == naive.tolist()
    first = df["TX_DATETIME"].iloc[0]
    message = {"TRANSACTION_ID": 0, "TX_DATETIME": first.isoformat(), "CUSTOMER_ID": 1,
               "TERMINAL_ID": 2, "TX_AMOUNT": 1.0}  # fmt: skip
    assert parse_transaction(json.dumps(message)).time_ns == naive.iloc[0].value


def test_text_times_with_one_offset_are_read_in_utc_and_mixed_ones_refused():
    df = transactions(n=3)
    naive = df["TX_DATETIME"].copy()
    df["TX_DATETIME"] = (naive + pd.Timedelta(hours=2)).dt.strftime("%Y-%m-%dT%H:%M:%S+02:00")
    assert validate(df, SPEC)["TX_DATETIME"].tolist() == naive.tolist()
    df.loc[1, "TX_DATETIME"] = naive[1].strftime("%Y-%m-%dT%H:%M:%S")  # no offset: which zone?
    with pytest.raises(InputError, match="1 unparsable TX_DATETIME values"):
        validate(df, SPEC)


def test_duplicate_ids_across_files_are_rejected(parquet):
    df = transactions(n=20)
    with pytest.raises(InputError, match=r"duplicate TRANSACTION_IDs, e.g. \[0, 1, 2, 3, 4\]"):
        read_transactions([parquet(df, "a.parquet"), parquet(df.iloc[:5], "b.parquet")], SPEC)


def test_non_finite_amounts_are_rejected():
    df = transactions(n=10)
    df.loc[2, "TX_AMOUNT"] = float("inf")
    with pytest.raises(InputError, match="non-finite values in TX_AMOUNT"):
        validate(df, SPEC)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("TX_AMOUNT", -3.0, r"TX_AMOUNT must be in \[0, 1e\+09\].*1 row is not, e.g. \[-3.0\]"),
        ("TX_AMOUNT", 2e9, r"TX_AMOUNT must be in \[0, 1e\+09\]"),
        ("TX_FRAUD", 2, r"TX_FRAUD must be 0 or 1.*e.g. \[2\]"),
        ("CUSTOMER_ID", -1, r"CUSTOMER_ID must be in \[0, 2\*\*63\).*e.g. \[-1\]"),
        ("TRANSACTION_ID", -7, r"TRANSACTION_ID must be in \[0, 2\*\*63\)"),
        ("TX_DATETIME", pd.Timestamp("1960-01-01"), r"TX_DATETIME must be in \[1970-01-01, 2200"),
    ],
)
def test_values_the_stream_refuses_are_refused(column, value, message):
    """A history row the stream would dead-letter would give training features the stream
    never computes: the table is refused, naming the column, the rule and an example."""
    df = transactions(n=10)
    df.loc[4, column] = value
    with pytest.raises(InputError, match=message):
        validate(df, SPEC)


def test_float_ids_are_taken_when_whole_and_refused_otherwise():
    """pandas writes an integer column that once held a missing value as floats."""
    df = transactions(n=10)
    df["TERMINAL_ID"] = df["TERMINAL_ID"].astype(float)
    out = validate(df, SPEC)
    assert out["TERMINAL_ID"].dtype == "int64"
    assert out["TERMINAL_ID"].tolist() == transactions(n=10)["TERMINAL_ID"].tolist()
    df.loc[[2, 5], "TERMINAL_ID"] = [5.5, 2.0**60]
    with pytest.raises(InputError, match=r"TERMINAL_ID must be whole numbers.*2 rows are not"):
        validate(df, SPEC)


def test_decimal_columns_are_read_as_numbers(parquet):
    """BigQuery advises NUMERIC for money; exported to parquet it is a DECIMAL column, which
    pandas reads as Python decimals."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    df = transactions(n=20)
    table = pa.Table.from_pandas(df, preserve_index=False)
    for name, kind in [("TX_AMOUNT", pa.decimal128(18, 2)), ("CUSTOMER_ID", pa.decimal128(38, 0))]:
        column = pa.array([decimal.Decimal(f"{v:.2f}") for v in df[name]], kind)
        table = table.set_column(table.schema.get_field_index(name), name, column)
    path = parquet(df, "plain.parquet").with_name("decimal.parquet")
    pq.write_table(table, path)
    out = read_transactions([path], SPEC)
    assert out["TX_AMOUNT"].dtype == "float64" and out["CUSTOMER_ID"].dtype == "int64"
    assert out["TX_AMOUNT"].tolist() == [float(f"{v:.2f}") for v in df["TX_AMOUNT"]]
    assert out["CUSTOMER_ID"].tolist() == df["CUSTOMER_ID"].tolist()
    decimals = df.astype({"CUSTOMER_ID": object})
    decimals["CUSTOMER_ID"] = [
        decimal.Decimal(v) + decimal.Decimal("0.5") for v in df["CUSTOMER_ID"]
    ]
    with pytest.raises(InputError, match=r"CUSTOMER_ID must be whole numbers in \[0, 2\*\*63\)"):
        validate(decimals, SPEC)


def test_boolean_ids_are_refused_and_boolean_labels_taken():
    df = transactions(n=10)
    df["TX_FRAUD"] = df["TX_FRAUD"].astype(bool)
    assert validate(df, SPEC)["TX_FRAUD"].tolist() == df["TX_FRAUD"].tolist()
    df["CUSTOMER_ID"] = df["CUSTOMER_ID"] > 0
    with pytest.raises(InputError, match="CUSTOMER_ID must hold integers, got booleans"):
        validate(df, SPEC)


def test_unsigned_ids_beyond_int64_are_refused():
    df = transactions(n=10)
    df["CUSTOMER_ID"] = df["CUSTOMER_ID"].astype("uint64")
    assert validate(df, SPEC)["CUSTOMER_ID"].dtype == "int64"
    df.loc[3, "CUSTOMER_ID"] = 2**63
    with pytest.raises(InputError, match=r"CUSTOMER_ID must be in \[0, 2\*\*63\)"):
        validate(df, SPEC)


def test_the_stream_refuses_what_the_table_refuses():
    """One rule for both: a message with each refused value is a dead letter too."""
    df = transactions(n=1)
    row = df.iloc[0]
    good = {
        "TRANSACTION_ID": int(row["TRANSACTION_ID"]),
        "TX_DATETIME": row["TX_DATETIME"].isoformat(),
        "CUSTOMER_ID": int(row["CUSTOMER_ID"]),
        "TERMINAL_ID": int(row["TERMINAL_ID"]),
        "TX_AMOUNT": float(row["TX_AMOUNT"]),
    }
    parse_transaction(json.dumps(good))
    for field, value in [
        ("TX_AMOUNT", -3.0),
        ("TX_AMOUNT", 2e9),
        ("CUSTOMER_ID", -1),
        ("TX_DATETIME", "1960-01-01T00:00:00"),
    ]:
        with pytest.raises(ValueError, match=field):
            parse_transaction(json.dumps({**good, field: value}))


def test_cli_backfill_writes_features_and_reports_errors(parquet, tmp_path, capsys):
    src = parquet(transactions(n=200))
    out = tmp_path / "out" / "features.parquet"
    assert main(["backfill", "--input", str(src), "--output", str(out), "--preset", "default"]) == 0
    written = pd.read_parquet(out)
    assert list(written.columns) == ["TRANSACTION_ID", *presets.DEFAULT.names]
    assert len(written) == 200
    bad = parquet(transactions(n=5).drop(columns=["CUSTOMER_ID"]), "bad.parquet")
    assert main(["backfill", "--input", str(bad), "--output", str(out)]) == 2
    assert "missing columns ['CUSTOMER_ID']" in capsys.readouterr().err
    assert main(["backfill", "--input", str(tmp_path / "nope.parquet"), "--output", str(out)]) == 2
    assert main(["backfill", "--input", str(src), "--output", str(out), "--preset", "x"]) == 2


def test_cli_backfill_reads_a_local_time_history_in_its_zone(tmp_path, capsys):
    """A warehouse keeping Paris wall-clock times: ``--naive_time_zone Europe/Paris`` gives the
    features of the same history exported in UTC; an unknown zone is a usage error."""
    df = transactions(n=300)
    paris = df["TX_DATETIME"].dt.tz_localize("UTC").dt.tz_convert("Europe/Paris")
    df.assign(TX_DATETIME=paris.dt.tz_localize(None)).to_csv(tmp_path / "local.csv", index=False)
    df.to_csv(tmp_path / "utc.csv", index=False)
    for name, zone in (("local", "Europe/Paris"), ("utc", "UTC")):
        out = str(tmp_path / f"{name}.parquet")
        argv = ["backfill", "--input", str(tmp_path / f"{name}.csv"), "--preset", "default",
                "--output", out, "--naive_time_zone", zone]  # fmt: skip
        assert main(argv) == 0
    got, want = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("local", "utc"))
    pd.testing.assert_frame_equal(got, want)
    argv[-1] = "Mars/Olympus"
    assert main(argv) == 2
    assert "--naive_time_zone 'Mars/Olympus': not an IANA time zone" in capsys.readouterr().err


def _write_avro(path: Path, schema: dict, records: list[dict]) -> None:
    """An Avro container file of ``records``, as a warehouse export writes one."""
    import fastavro

    with open(path, "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(schema), records)


def _bigquery_times(times: pd.Series) -> pd.Series:
    """``TIMESTAMP`` as BigQuery's CSV and JSON exports write it: `` UTC`` at the end, a
    fraction only where there is one."""
    text = times.dt.strftime("%Y-%m-%d %H:%M:%S.%f").str.rstrip("0").str.rstrip(".")
    return text + " UTC"


def test_bigquery_exports_in_csv_json_and_avro_read_as_the_parquet(tmp_path):
    """The same table exported as BigQuery writes each format (CSV, gzipped CSV, JSON lines
    with ``INT64`` and ``NUMERIC`` as strings, an Avro container with timestamp-micros, a
    decimal amount and nullable fields as unions) reads as its parquet does."""
    import gzip
    from decimal import Decimal

    df = validate(transactions(n=400, customers=20, terminals=10, days=5), SPEC)
    df.loc[::7, "TX_DATETIME"] += pd.Timedelta(microseconds=250_000)  # some with a fraction
    df["TX_AMOUNT"] = df["TX_AMOUNT"].round(2)
    df.to_parquet(tmp_path / "tx.parquet", index=False)
    expected = read_transactions([tmp_path / "tx.parquet"], SPEC)

    text = df.assign(TX_DATETIME=_bigquery_times(df["TX_DATETIME"]))
    assert text["TX_DATETIME"].str.contains(r"\.25 UTC$").any()
    text.to_csv(tmp_path / "tx.csv", index=False)
    with gzip.open(tmp_path / "tx.csv.gz", "wt") as f:
        text.to_csv(f, index=False)
    columns = ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD", "TX_AMOUNT")
    as_strings = {c: text[c].astype(str) for c in columns}
    text.assign(**as_strings).to_json(tmp_path / "tx.json", orient="records", lines=True)
    first = (tmp_path / "tx.json").read_text().splitlines()[0]
    assert '"TRANSACTION_ID":"' in first and " UTC" in first

    nullable_long = ["null", "long"]
    schema = {"type": "record", "name": "Root", "fields": [
        {"name": "TRANSACTION_ID", "type": nullable_long},
        {"name": "TX_DATETIME", "type": ["null", {"type": "long",
                                                  "logicalType": "timestamp-micros"}]},
        {"name": "CUSTOMER_ID", "type": nullable_long},
        {"name": "TERMINAL_ID", "type": nullable_long},
        {"name": "TX_AMOUNT", "type": ["null", {"type": "bytes", "logicalType": "decimal",
                                                "precision": 38, "scale": 9}]},
        {"name": "TX_FRAUD", "type": nullable_long},
    ]}  # fmt: skip
    records = [
        {**row, "TX_DATETIME": row["TX_DATETIME"].tz_localize("UTC").to_pydatetime(),
         "TX_AMOUNT": Decimal(str(row["TX_AMOUNT"]))}
        for row in df[SPEC.input_columns].to_dict("records")
    ]  # fmt: skip
    _write_avro(tmp_path / "tx.avro", schema, records)

    for name in ("tx.csv", "tx.csv.gz", "tx.json", "tx.avro"):
        got = read_transactions([tmp_path / name], SPEC)
        pd.testing.assert_frame_equal(got[SPEC.input_columns], expected[SPEC.input_columns])


def test_what_a_text_export_cannot_mean_is_refused(tmp_path):
    df = transactions(n=5)
    with pytest.raises(InputError, match=r"TX_DATETIME must be a time since the epoch in "):
        validate(df.assign(TX_DATETIME=df["TX_DATETIME"].astype("int64") // 10**11), SPEC)
    ids = df.assign(CUSTOMER_ID=["1", "05", "-3", "4", "+5"])  # "05" is a text id
    with pytest.raises(InputError, match=r"CUSTOMER_ID must be .*text ids.*2 rows are not"):
        validate(ids, SPEC)
    with pytest.raises(InputError, match=r"TX_AMOUNT must be numbers.*\['a lot'\]"):
        validate(df.assign(TX_AMOUNT=["1.5", "2", "a lot", "3", "4"]), SPEC)
    (tmp_path / "tx.csv").write_bytes(b"\x00\xff not a table")
    with pytest.raises(InputError, match=r"tx.csv: (cannot be read as CSV|missing columns)"):
        read_transactions([tmp_path / "tx.csv"], SPEC)
    (tmp_path / "tx.avro").write_text("TRANSACTION_ID,TX_DATETIME\n")
    with pytest.raises(InputError, match=r"tx.avro: cannot be read as Avro"):
        read_transactions([tmp_path / "tx.avro"], SPEC)


def test_globs_read_every_file_they_match_and_a_directory_is_named(parquet, tmp_path):
    """A sharded export (``tx-*.parquet``, as BigQuery names its files past 1 GB) is read
    whole through a glob; a glob matching nothing and a directory are clear errors."""
    from training.files import read_transactions as read_files

    df = transactions(n=300)
    for i, part in enumerate((df.iloc[200:], df.iloc[:100], df.iloc[100:200])):
        parquet(part, f"tx-{i:012d}.parquet")
    out = read_files([str(tmp_path / "tx-*.parquet")], SPEC)
    assert out["TRANSACTION_ID"].tolist() == list(range(300))
    with pytest.raises(InputError, match=r"tx-\*.csv: matches no file"):
        read_files([str(tmp_path / "tx-*.csv")], SPEC)
    with pytest.raises(InputError, match=r"is a directory; name its files, e.g. .*/\*.parquet"):
        read_files([str(tmp_path)], SPEC)


def test_columns_spelled_otherwise_are_read_under_the_contracts_names():
    """``transaction_id`` (a warehouse's snake case) or ``TransactionId`` name the same column
    as in a message; two spellings of one column are refused."""
    df = transactions(n=20)
    expected = validate(df, SPEC)
    snake = df.rename(columns=str.lower)
    pascal = df.rename(columns=lambda c: c.title().replace("_", ""))
    assert "TransactionId" in pascal.columns
    for spelled in (snake, pascal):
        pd.testing.assert_frame_equal(validate(spelled, SPEC)[SPEC.input_columns],
                                      expected[SPEC.input_columns])  # fmt: skip
    twice = snake.assign(TRANSACTION_ID=snake["transaction_id"])
    with pytest.raises(InputError, match="column TRANSACTION_ID given twice, in two spellings"):
        validate(twice, SPEC)


TEXT_IDS = {
    "TRANSACTION_ID": lambda i: str(uuid.UUID(int=int(i) + 1)),
    "CUSTOMER_ID": lambda i: f"card_tok_{i:x}",
    "TERMINAL_ID": lambda i: f"{i:06d}",  # zero-padded: text, not the number
}


def test_text_ids_are_keyed_as_the_stream_keys_them_in_every_format(tmp_path):
    """A history keyed by UUIDs, card tokens and zero-padded terminal codes, exported to
    parquet, CSV, JSON lines and Avro (a ``uuid`` logical type): every format gives each row
    the keys a message with those ids gets, and digit strings are their numbers."""

    df = transactions(n=40)
    text = df.assign(**{c: df[c].map(f) for c, f in TEXT_IDS.items()})
    messages = [
        parse_transaction(json.dumps({c: row[c] for c in TEXT_IDS} | {
            "TX_DATETIME": row["TX_DATETIME"].isoformat(), "TX_AMOUNT": row["TX_AMOUNT"]}))
        for row in text.to_dict("records")
    ]  # fmt: skip
    expected = sorted((m.transaction_id, m.customer_id, m.terminal_id) for m in messages)
    text[SPEC.input_columns].to_parquet(tmp_path / "tx.parquet")
    text[SPEC.input_columns].to_csv(tmp_path / "tx.csv", index=False)
    text[SPEC.input_columns].to_json(tmp_path / "tx.jsonl", orient="records", lines=True,
                                     date_format="iso")  # fmt: skip
    schema = {"type": "record", "name": "Tx", "fields": [
        {"name": "TRANSACTION_ID", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "TX_DATETIME", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "CUSTOMER_ID", "type": "string"}, {"name": "TERMINAL_ID", "type": "string"},
        {"name": "TX_AMOUNT", "type": "double"}, {"name": "TX_FRAUD", "type": "int"}]}  # fmt: skip
    records = [
        r | {"TRANSACTION_ID": uuid.UUID(r["TRANSACTION_ID"]),
             "TX_DATETIME": r["TX_DATETIME"].tz_localize("UTC").to_pydatetime()}
        for r in text[SPEC.input_columns].to_dict("records")
    ]  # fmt: skip
    _write_avro(tmp_path / "tx.avro", schema, records)
    for name in ("tx.parquet", "tx.csv", "tx.jsonl", "tx.avro"):
        got = read_transactions([tmp_path / name], SPEC)
        keys = sorted(zip(*(got[c] for c in TEXT_IDS), strict=True))
        assert keys == expected, name
        assert got["TERMINAL_ID"].dtype == "int64"
    csv_terminals = set(read_transactions([tmp_path / "tx.csv"], SPEC)["TERMINAL_ID"])
    assert csv_terminals == set(map(text_key, text["TERMINAL_ID"]))  # "000123", never 123
    digits = validate(df.assign(CUSTOMER_ID=df["CUSTOMER_ID"].astype(str)), SPEC)
    assert digits["CUSTOMER_ID"].tolist() == validate(df, SPEC)["CUSTOMER_ID"].tolist()


def test_a_csv_keeps_zero_padded_ids_as_text_in_any_spelling(tmp_path):
    df = transactions(n=10)
    padded = df.assign(TERMINAL_ID=df["TERMINAL_ID"].map(lambda i: f"{i:05d}"))
    padded.loc[:1, "TERMINAL_ID"] = ["NA", "null"]  # ids, not pandas' missing-value markers
    padded.rename(columns=str.lower).to_csv(tmp_path / "tx.csv.gz", index=False)
    got = read_transactions([tmp_path / "tx.csv.gz"], SPEC)
    assert sorted(got["TERMINAL_ID"]) == sorted(map(text_key, padded["TERMINAL_ID"]))
    assert got["CUSTOMER_ID"].tolist() == validate(df, SPEC)["CUSTOMER_ID"].tolist()  # numbers
    padded.loc[3, "TERMINAL_ID"] = ""
    padded.to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(InputError, match=r"TERMINAL_ID must be .*one is empty.*1 row is not"):
        read_transactions([tmp_path / "empty.csv"], SPEC)


@pytest.mark.parametrize(
    ("value", "reason"),
    [("-5", "is a signed number"), (" 5", "has spaces at an end"),
     ("a\tb", "holds control characters"), ("x" * 129, "is 129 characters long"),
     ("9" * 20, r"must be in \[0, 2\*\*63\)"), (True, "is bool"), (5.5, "is float")],
)  # fmt: skip
def test_an_id_the_stream_refuses_is_refused_with_the_reason(value, reason):
    df = transactions(n=5)
    ids = df["CUSTOMER_ID"].astype(object).map(lambda i: f"card_{i}")
    ids[3] = value
    with pytest.raises(InputError, match=rf"CUSTOMER_ID must be .*; one {reason}.*1 row is not"):
        validate(df.assign(CUSTOMER_ID=ids), SPEC)
    if isinstance(value, str):
        with pytest.raises(ValueError, match=f"CUSTOMER_ID {reason}"):
            parse_transaction(json.dumps({"TRANSACTION_ID": 1, "TX_DATETIME": "2018-04-01T00:00:00",
                                          "CUSTOMER_ID": value, "TERMINAL_ID": 2,
                                          "TX_AMOUNT": 1.0}))  # fmt: skip


def test_a_column_mixing_numbers_and_text_ids_keys_each_as_a_message_would():
    df = transactions(n=4)
    mixed = df.assign(CUSTOMER_ID=pd.Series([7, "card_7", "7", 2**62], dtype=object))
    got = validate(mixed, SPEC).sort_index()
    by_tx = dict(zip(got["TRANSACTION_ID"], got["CUSTOMER_ID"], strict=True))
    assert [by_tx[t] for t in df["TRANSACTION_ID"]] == [7, text_key("card_7"), 7, 2**62]


def test_a_duplicate_text_id_is_named_as_the_table_has_it():
    df = transactions(n=4)
    ids = pd.Series(["tx-a", "tx-b", "tx-a", "tx-c"], dtype=object)
    with pytest.raises(InputError, match=r"1 duplicate TRANSACTION_IDs, e.g. \['tx-a'\]"):
        validate(df.assign(TRANSACTION_ID=ids), SPEC)


def test_times_since_the_epoch_are_read_in_the_unit_their_size_tells_as_in_a_message(tmp_path):
    """Seconds, milliseconds, microseconds (a BigQuery export to Avro without logical types),
    nanoseconds, fractional seconds, and digits as text (JSON lines): each row's time is the
    one a message with that number gets."""

    df = transactions(n=30)
    df["TX_DATETIME"] = df["TX_DATETIME"].dt.floor("us")
    ns = df["TX_DATETIME"].astype("int64")
    expected = validate(df, SPEC)
    forms = {
        "s": ns // 10**9,
        "ms": ns // 10**6,
        "us": ns // 10**3,
        "ns": ns,
        "float s": ns / 1e9,
        "digits": (ns // 10**6).astype(str),
    }
    for form, values in forms.items():
        got = validate(df.assign(TX_DATETIME=values), SPEC)
        stream = [
            parse_transaction(json.dumps({"TRANSACTION_ID": 1, "TX_DATETIME": v, "CUSTOMER_ID": 1,
                                          "TERMINAL_ID": 1, "TX_AMOUNT": 1.0})).time_ns
            for v in values.tolist()
        ]  # fmt: skip
        assert got["TX_DATETIME"].astype("int64").tolist() == stream, form
    got = validate(df.assign(TX_DATETIME=forms["us"]), SPEC)
    pd.testing.assert_series_equal(got["TX_DATETIME"], expected["TX_DATETIME"])
    schema = {"type": "record", "name": "Tx", "fields": [
        {"name": c, "type": "double" if c == "TX_AMOUNT" else "long"} for c in SPEC.input_columns
    ]}  # fmt: skip
    records = df[SPEC.input_columns].assign(TX_DATETIME=forms["us"]).to_dict("records")
    _write_avro(tmp_path / "tx.avro", schema, records)
    pd.testing.assert_series_equal(
        read_transactions([tmp_path / "tx.avro"], SPEC)["TX_DATETIME"], expected["TX_DATETIME"]
    )
    for bad in (ns // 10**11, -(ns // 10**9), (ns // 10**9) * 20):  # 1970, < 0, 2940 in seconds
        with pytest.raises(InputError, match="TX_DATETIME must be a time since the epoch"):
            validate(df.assign(TX_DATETIME=bad), SPEC)


TRICKY_IDS = [
    "000123", "05", "0", "17", str(2**63 - 1), str(10**18), str(2**63), "9" * 20, "x", "a b",
    "+a", "-", "é", "naïve", "tok_é", "é" * 128, "é" * 129, "x" * 128, "\u00a0x", "x\u2003",
    "a\nb", "a\x7fb", "+5", "-0", "", "\ud800", str(uuid.UUID(int=7)),
]  # fmt: skip


def _check_keyed_as_the_stream_keys(values: list[str]) -> None:
    """``values`` as a CUSTOMER_ID column: each key is what ``id_of_text`` (the stream's
    rule) gives it, or the table is refused with the reason for the first it refuses."""
    df = transactions(n=len(values)).assign(CUSTOMER_ID=pd.Series(values, dtype=object))
    reasons = []
    for value in values:
        try:
            id_of_text.__wrapped__(value)
        except ValueError as exc:
            reasons.append(str(exc))
    if reasons:
        with pytest.raises(
            InputError, match=f"CUSTOMER_ID must be .*; one {re.escape(reasons[0])}"
        ):
            validate(df, SPEC, sort=False)
    else:
        got = validate(df, SPEC, sort=False)["CUSTOMER_ID"].tolist()
        assert got == [id_of_text.__wrapped__(v)[0] for v in values]


@pytest.mark.parametrize("value", TRICKY_IDS)
def test_each_id_is_keyed_or_refused_as_the_stream_would(value):
    """The vectorised path (digits, plain ASCII text ids) and the one-by-one path (non-ASCII
    or spaces at an end, long digits, refusals) agree with ``id_of_text`` at their borders,
    alone and among plain ids."""
    _check_keyed_as_the_stream_keys([value])
    _check_keyed_as_the_stream_keys(["tok_1", value, "42", value, str(uuid.UUID(int=9))])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=130),
            st.text(alphabet="0123456789+- \t\u00a0\u2003ab\x7fé", max_size=22),
            st.from_regex(r"[+-]?[0-9]{1,21}", fullmatch=True),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_strings_are_keyed_or_refused_as_the_stream_would(values):
    _check_keyed_as_the_stream_keys(values)


def test_a_categorical_id_column_is_keyed_by_its_values():
    df = transactions(n=6)
    ids = pd.Series([3, "000123", 3, "tok", 2**62, "000123"], dtype="category")
    got = validate(df.assign(TERMINAL_ID=ids), SPEC, sort=False)["TERMINAL_ID"].tolist()
    assert got == [3, text_key("000123"), 3, text_key("tok"), 2**62, text_key("000123")]


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/New_York", "Australia/Lord_Howe"])
def test_naive_times_are_read_in_the_zone_the_job_reads_messages_in(zone):
    """Each naive time, in the hours clocks skip or repeat too (Lord Howe's by 30 minutes), is
    the UTC time a message with it gets from a job run with that ``--naive_time_zone``; times
    with a zone or since the epoch are UTC whatever the option."""
    from streaming.schema import WireContract

    spring = pd.date_range("2018-03-24", "2018-04-02", freq="7min13s123456789ns")
    autumn = pd.date_range("2018-10-06", "2018-11-05", freq="23min7s987654321ns")
    times = pd.Series(spring.append(autumn))
    df = transactions(n=len(times)).assign(TX_DATETIME=times)
    got = validate(df, SPEC, sort=False, naive_time_zone=zone)["TX_DATETIME"]
    contract = WireContract(naive_time_zone=zone)
    stream = [
        parse_transaction(json.dumps({"TRANSACTION_ID": 1, "TX_DATETIME": t.isoformat(),
                                      "CUSTOMER_ID": 1, "TERMINAL_ID": 1, "TX_AMOUNT": 1.0}),
                          contract=contract).time_ns
        for t in times
    ]  # fmt: skip
    assert got.astype("int64").tolist() == stream
    assert (got != times).all()  # every time moved by its offset
    utc = df.assign(TX_DATETIME=times.dt.tz_localize("UTC"))
    assert validate(utc, SPEC, sort=False, naive_time_zone=zone)["TX_DATETIME"].equals(times)
    epoch = df.assign(TX_DATETIME=times.astype("int64"))
    assert validate(epoch, SPEC, sort=False, naive_time_zone=zone)["TX_DATETIME"].equals(times)
    with pytest.raises(InputError, match="--naive_time_zone 'Mars/Olympus': not an IANA"):
        validate(df, SPEC, naive_time_zone="Mars/Olympus")
