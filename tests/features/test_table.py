from __future__ import annotations

import pandas as pd
import pytest

from features import presets
from features.synthetic import transactions
from features.table import InputError, read_transactions, validate
from streaming.cli import main

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


def test_duplicate_ids_across_files_are_rejected(parquet):
    df = transactions(n=20)
    with pytest.raises(InputError, match=r"duplicate TRANSACTION_IDs, e.g. \[0, 1, 2, 3, 4\]"):
        read_transactions([parquet(df, "a.parquet"), parquet(df.iloc[:5], "b.parquet")], SPEC)


def test_non_finite_amounts_are_rejected():
    df = transactions(n=10)
    df.loc[2, "TX_AMOUNT"] = float("inf")
    with pytest.raises(InputError, match="non-finite values in TX_AMOUNT"):
        validate(df, SPEC)


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
