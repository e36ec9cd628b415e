"""streaming/monitoring: window records, plots and the ``monitor`` command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streaming.cli import main
from streaming.monitoring import report
from streaming.monitoring import stats as monitoring
from training.drift import PSI_SIGNIFICANT, Reference, reference_profile, save_reference

FEATURES = ["amount", "tx_count_1d", "fraud_ratio_7d"]
START = pd.Timestamp("2018-09-01 00:00:00")
PER_HOUR = (300, 120, 400)  # events in hours 0, 1, (2 empty), 3


def _features(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    X = np.empty((n, 3))
    X[:, 0] = rng.lognormal(3.5 + shift, 0.8, n)
    X[:, 1] = rng.poisson(3.0, n)
    X[:, 2] = np.where(rng.random(n) < 0.2, np.nan, rng.beta(1, 30, n))
    return X


def _scored(rng: np.random.Generator) -> pd.DataFrame:
    """Hours 0 and 1 like training, hour 2 empty, hour 3 with amounts shifted up."""
    frames = []
    tid = 0
    for hour, (n, shift) in zip(
        (0, 1, 3), zip(PER_HOUR, (0.0, 0.0, 1.5), strict=True), strict=True
    ):
        X = _features(rng, n, shift)
        score = rng.beta(1, 20, n)
        score[: 5 * (hour + 1)] = 0.9  # 5, 10, 20 alerts
        seconds = np.sort(rng.uniform(0, 3600, n))
        df = pd.DataFrame(
            {
                "transaction_id": np.arange(tid, tid + n),
                "customer_id": rng.integers(0, 100, n),
                "terminal_id": rng.integers(0, 100, n),
                "event_time": START + pd.Timedelta(hours=hour) + pd.to_timedelta(seconds, "s"),
                "score": score,
                "threshold": 0.5,
                "alert": score >= 0.5,
                "model_version": "v0001",
                "status": "OK",
                "latency_ms": rng.lognormal(np.log(20.0), 0.3, n),
            }
        )
        df[FEATURES] = X
        frames.append(df)
        tid += n
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def scored() -> pd.DataFrame:
    return _scored(np.random.default_rng(0))


@pytest.fixture(scope="module")
def reference() -> Reference:
    rng = np.random.default_rng(1)
    return reference_profile(_features(rng, 10_000), FEATURES, scores=rng.beta(1, 20, 10_000))


def test_window_stats(scored: pd.DataFrame, reference: Reference) -> None:
    stats = monitoring.window_stats(scored, reference, FEATURES, "1h", source="test")
    assert list(stats["window_start"]) == [START + pd.Timedelta(hours=h) for h in range(4)]
    assert list(stats["events"]) == [300, 120, 0, 400]
    assert list(stats["alerts"]) == [5, 10, 0, 20]
    assert stats["alert_rate"].iloc[0] == pytest.approx(5 / 300)
    assert np.isnan(stats["alert_rate"].iloc[2])
    assert {f"psi_{f}" for f in FEATURES} <= set(stats.columns)
    assert stats["psi_amount"].iloc[0] < 0.1 and stats["psi_amount"].iloc[1] < 0.1
    assert stats["psi_amount"].iloc[3] > PSI_SIGNIFICANT
    assert stats["max_psi_feature"].iloc[3] == "amount"
    assert list(stats["drift"])[3] == "significant"
    assert stats["drift"].iloc[2] is None and np.isnan(stats["max_psi"].iloc[2])
    assert stats["latency_p50_ms"].iloc[0] == pytest.approx(20.0, rel=0.1)
    assert stats["latency_p99_ms"].iloc[0] > stats["latency_p50_ms"].iloc[0]
    assert stats["score_psi"].notna().sum() == 3


def test_window_record_from_streamed_batches(scored: pd.DataFrame, reference: Reference) -> None:
    """The Beam side: counts summed over batches of rows give the offline record."""
    hour = scored[scored["event_time"] < START + pd.Timedelta(hours=1)]
    rows = hour.to_dict("records")
    parts = [
        monitoring.WindowCounts.of_rows(reference, rows[i : i + 64]) for i in range(0, 300, 64)
    ]
    counts = monitoring.WindowCounts.merge(reference, parts)
    record = monitoring.window_record(
        reference, counts, START, START + pd.Timedelta(hours=1), source="test"
    )
    offline = json.loads(json.dumps(monitoring.window_records(hour, reference, FEATURES)[0]))
    assert json.loads(json.dumps(record)) == {**offline, "reference": "test"}
    assert record["window_start"] == "2018-09-01T00:00:00"
    assert record["events"] == 300 and record["alerts"] == 5
    empty = monitoring.window_record(
        reference, monitoring.WindowCounts.empty(reference), START, START
    )
    assert empty["max_psi"] is None and empty["alert_rate"] is None
    json.dumps(empty, allow_nan=False)  # no NaN in the JSON


def test_render_writes_pngs(scored: pd.DataFrame, reference: Reference, tmp_path: Path) -> None:
    stats = monitoring.window_stats(scored, reference, FEATURES)
    paths = report.render(scored, stats, tmp_path)
    assert [p.name for p in paths] == list(report.PLOTS)
    for p in paths:
        assert p.stat().st_size > 1_000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_parts(df: pd.DataFrame, directory: Path) -> None:
    directory.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        pq.write_table(pa.Table.from_pandas(df.iloc[part], preserve_index=False),
                       directory / f"part-{i:032x}.parquet")  # fmt: skip
    (directory / ".part-being-written.parquet.tmp").write_bytes(b"not parquet")


def _run(scored_dir: Path, out: Path, model_dir: Path | None) -> int:
    argv = ["monitor", "--scored", str(scored_dir), "--out", str(out), "--freq", "1h"]
    if model_dir is not None:
        argv += ["--model-dir", str(model_dir)]
    return main(argv)


def test_cli_with_registry_reference(
    scored: pd.DataFrame, reference: Reference, tmp_path: Path, capsys
) -> None:
    _write_parts(scored, tmp_path / "scored")
    registry = tmp_path / "models"
    (registry / "v0001").mkdir(parents=True)
    (registry / "v0001" / "meta.json").write_text("{}")
    (registry / "current").write_text('{"version": "v0001"}')
    save_reference(reference, registry / "v0001")
    out = tmp_path / "monitor"
    assert _run(tmp_path / "scored", out, registry) == 0
    printed = capsys.readouterr().out
    assert "model v0001" in printed and "first 20" not in printed
    assert "820" in printed  # events
    records = json.loads((out / "monitoring.json").read_text())
    assert [r["events"] for r in records] == [300, 120, 0, 400]
    assert records[3]["max_psi_feature"] == "amount" and records[3]["drift"] == "significant"
    md = (out / "monitoring.md").read_text()
    assert "0.25" in md and "| amount |" in md and "model v0001" in md
    for name in report.PLOTS:
        assert (out / name).stat().st_size > 0


def test_cli_without_reference(scored: pd.DataFrame, tmp_path: Path, capsys) -> None:
    _write_parts(scored, tmp_path / "scored")
    registry = tmp_path / "models"
    (registry / "v0001").mkdir(parents=True)
    (registry / "v0001" / "meta.json").write_text("{}")
    (registry / "current").write_text('{"version": "v0001"}')
    out = tmp_path / "monitor"
    assert _run(tmp_path / "scored", out, registry) == 0
    printed = capsys.readouterr().out
    assert "no drift_reference.json in" in printed
    assert "first 20% of the scored events by event time (164 events" in printed
    records = json.loads((out / "monitoring.json").read_text())
    assert records[0]["reference"].startswith("first 20%")
    assert records[3]["drift"] == "significant"  # hour 3 still stands out
    assert "first 20%" in (out / "monitoring.md").read_text()
    assert sorted(p.name for p in out.glob("*.png")) == sorted(report.PLOTS)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path / "missing", tmp_path / "out", None) == 2
    assert "no such scored-events directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _run(tmp_path / "empty", tmp_path / "out", None) == 2
    assert "no part-" in capsys.readouterr().err
