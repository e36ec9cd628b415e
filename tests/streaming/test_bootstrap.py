"""Initial states: a job started from a replayed history continues as if it had seen it all."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import presets
from features.backfill import backfill
from features.incremental import KIND_TX, IncrementalEngine
from features.stream import stream_features, with_labels
from features.synthetic import transactions
from features.table import event_times_ns, validate
from streaming.batch.bootstrap import replay_states, write_states
from streaming.cli import main
from streaming.job.initial_states import StateFileInfo, read_info, read_states
from streaming.pseudonymise import Pseudonymiser

KEY = "ab" * 32


def _history(spec, n=2_500):
    return validate(transactions(n=n, customers=15, terminals=25, days=60, fraud_rate=0.05), spec)


def _continue(df: pd.DataFrame, cut: int, spec, path) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap from ``df[:cut]`` through a state file, then stream the rest of the events:
    returns the live transactions' features and statuses."""
    history = df.iloc[:cut]
    info = write_states(
        path, replay_states(history, spec), spec, int(event_times_ns(history).max())
    )
    assert info.entities == history["CUSTOMER_ID"].nunique() + history["TERMINAL_ID"].nunique()
    engine = IncrementalEngine(spec)
    for entity in spec.entities:
        for key, blob in read_states(path, spec, entity).items():
            engine.load(entity, key, blob)
    events = with_labels(df, spec)
    seen = int(np.flatnonzero(events.kind == KIND_TX)[cut - 1]) + 1  # up to the last history tx
    live = events[seen:]
    feats, status = engine.process(live)
    return feats[live.kind == KIND_TX], status[live.kind == KIND_TX]


@pytest.mark.parametrize("preset", ["default", "feedback"])
def test_a_bootstrapped_stream_continues_exactly_like_an_uninterrupted_one(preset, tmp_path):
    """``feedback`` counts labels as they arrive: labels due after the history's end must be
    left to the live feed, or its known-fraud counts would run ahead."""
    spec = presets.get(preset)
    df = _history(spec)
    cut = int(len(df) * 0.6)
    got, status = _continue(df, cut, spec, tmp_path / "states.parquet")
    uninterrupted = stream_features(df, spec)
    np.testing.assert_array_equal(got, uninterrupted[spec.names].to_numpy()[cut:])
    assert (status == 0).all()
    if not spec.needs_label_arrivals:
        np.testing.assert_array_equal(got, backfill(df, spec)[spec.names].to_numpy()[cut:])
    cold = stream_features(df.iloc[cut:], spec)[spec.names].to_numpy()
    assert not np.array_equal(got, cold, equal_nan=True)  # without states the job would differ


def test_a_state_file_for_another_spec_or_key_is_refused(tmp_path):
    spec = presets.BASELINE
    path = tmp_path / "states.parquet"
    df = _history(spec, n=300)
    write_states(path, replay_states(df, spec), spec, 0, id_key="1234abcd")
    info = read_info(path)
    assert info == StateFileInfo(spec.name, spec.names, "1234abcd", 0, info.entities)
    with pytest.raises(ValueError, match=r"written for spec 'baseline'.*--preset default"):
        read_states(path, presets.DEFAULT, presets.DEFAULT.entities[0])
    with pytest.raises(ValueError, match="keyed by key 1234abcd, the job by clear ids"):
        info.check(spec, id_key="")
    with pytest.raises(ValueError, match="keyed by key 1234abcd, the job by key ffff"):
        info.check(spec, id_key="ffff")
    info.check(spec, id_key="1234abcd")
    info.check(spec)  # key unknown at launch (remote): the spec only
    df.to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a fraudstream initial state file"):
        read_info(tmp_path / "other.parquet")


def test_bootstrap_command_keys_states_by_the_jobs_pseudonyms(tmp_path, monkeypatch, capsys):
    spec = presets.BASELINE
    df = _history(spec, n=300)
    df.to_parquet(tmp_path / "history.parquet")
    monkeypatch.setenv("FRAUDSTREAM_ID_KEY", KEY)
    out = tmp_path / "states.parquet"
    args = ["bootstrap", "--input", str(tmp_path / "history.parquet"), "--output", str(out)]
    assert main([*args, "--preset", "baseline"]) == 0
    ids = Pseudonymiser.from_env(required=True)
    info = read_info(out)
    assert info.id_key == ids.fingerprint and info.spec == "baseline"
    assert info.end_ns == int(event_times_ns(df).max())
    customers = read_states(out, spec, spec.entities[0])
    assert set(customers) == set(ids.customers(df["CUSTOMER_ID"].to_numpy()).tolist())
    assert "wrote the states of" in capsys.readouterr().out
    assert main([*args, "--preset", "baseline", "--pseudonymise_ids", "off"]) == 0
    assert set(read_states(out, spec, spec.entities[0])) == set(df["CUSTOMER_ID"].tolist())
    assert read_info(out).id_key == ""


def test_bootstrap_from_an_empty_history_is_refused_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty.parquet"
    _history(presets.BASELINE, n=10).iloc[:0].to_parquet(empty)
    out = tmp_path / "states.parquet"
    args = ["bootstrap", "--input", str(empty), "--output", str(out), "--pseudonymise_ids", "off"]
    assert main(args) == 2
    assert "empty.parquet: no transactions to bootstrap from" in capsys.readouterr().err
    assert not out.exists()


def test_a_rewritten_state_file_is_read_again(tmp_path):
    """Workers share one read per process, but a new file at the same path (a new bootstrap,
    the demo's next run) is not answered from the old one."""
    import os

    from streaming.job.initial_states import InitialStates

    spec = presets.BASELINE
    path = tmp_path / "states.parquet"
    df = _history(spec, n=300)
    write_states(path, replay_states(df.iloc[:100], spec), spec, 0)
    initial = InitialStates(str(path), spec)
    first = initial.load(spec.entities[0])
    assert initial.load(spec.entities[0]) is first  # one read per process
    write_states(path, replay_states(df, spec), spec, 0)
    os.utime(path, (1, 2))  # a different modification time, whatever the clock's resolution
    again = initial.load(spec.entities[0])
    assert again is not first and set(again) == set(df["CUSTOMER_ID"].tolist())
