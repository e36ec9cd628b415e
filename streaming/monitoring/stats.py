"""Monitoring records: per event-time window, model-input drift (PSI), alert rate, latency.

A window's record (:func:`window_record`, one JSON object) is built from additive counts
(:class:`WindowCounts`: per-feature bin counts against the model's drift reference, score bin
counts, a latency histogram, events and alerts), so the streaming job (a Beam ``CombineFn``
summing counts per window) and the offline command (:func:`window_stats` over the scored
parquet parts) produce the same records. Record fields:

``window_start``, ``window_end`` (ISO 8601, event time), ``events``, ``alerts``,
``alert_rate``, ``latency_p50_ms``, ``latency_p99_ms`` (from a log-spaced histogram,
about 6 % resolution), ``score_psi`` (None without a score profile), ``max_psi``,
``max_psi_feature``, ``drift`` (``stable``/``moderate``/``significant`` of ``max_psi``),
``reference`` (where the reference came from), then ``psi_<feature>`` per model input.
NaN is written as null.

PSI reading (training/drift.py): < 0.1 stable, 0.1 to 0.25 moderate, >= 0.25 significant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.presets import PRESETS
from features.spec import Calendar
from training.drift import (
    Reference,
    bin_counts,
    bin_index,
    classify,
    psi_counts,
    score_bin_counts,
)

# Latency histogram: 40 log-spaced bins a decade from 0.01 ms to 10^7 ms (bin 0 below, last above).
LATENCY_EDGES_MS = np.geomspace(1e-2, 1e7, 9 * 40 + 1)


def latency_counts(latency_ms: np.ndarray) -> np.ndarray:
    """Additive histogram of latencies on :data:`LATENCY_EDGES_MS` (NaN ignored)."""
    values = np.asarray(latency_ms, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    idx = np.searchsorted(LATENCY_EDGES_MS, values, side="right")
    return np.bincount(idx, minlength=len(LATENCY_EDGES_MS) + 1).astype(np.int64)


def latency_quantile(counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile of a :func:`latency_counts` histogram: the geometric middle of its
    bin (the outer edge for the open end bins); NaN if empty."""
    n = int(counts.sum())
    if n == 0:
        return math.nan
    k = int(np.searchsorted(np.cumsum(counts), max(q * n, 1), side="left"))
    if k == 0:
        return float(LATENCY_EDGES_MS[0])
    if k >= len(LATENCY_EDGES_MS):
        return float(LATENCY_EDGES_MS[-1])
    return float(math.sqrt(LATENCY_EDGES_MS[k - 1] * LATENCY_EDGES_MS[k]))


@dataclass
class WindowCounts:
    """Additive per-window counters (``a + b`` is the counts of both batches)."""

    features: np.ndarray  # (features, bins + 1) int64, training/drift.py bin_counts
    scores: np.ndarray | None  # (bins + 1,) int64, or None without a score profile
    latency: np.ndarray  # latency_counts
    events: int = 0
    alerts: int = 0

    @classmethod
    def empty(cls, reference: Reference) -> WindowCounts:
        bins = reference.bins + 1
        return cls(
            np.zeros((len(reference.names), bins), np.int64),
            np.zeros(bins, np.int64) if reference.has_scores else None,
            np.zeros(len(LATENCY_EDGES_MS) + 1, np.int64),
        )

    @classmethod
    def of(
        cls,
        reference: Reference,
        X: np.ndarray,
        scores: np.ndarray,
        alerts: np.ndarray,
        latency_ms: np.ndarray,
    ) -> WindowCounts:
        """Counts of a batch: ``X`` rows × ``reference.names``, one score/alert/latency each."""
        return cls(
            bin_counts(reference, X),
            score_bin_counts(reference, scores) if reference.has_scores else None,
            latency_counts(latency_ms),
            len(scores),
            int(np.asarray(alerts, dtype=bool).sum()),
        )

    @classmethod
    def of_rows(cls, reference: Reference, rows: Sequence[dict]) -> WindowCounts:
        """Counts of scored rows (:func:`streaming.schema.scored_record` dicts)."""
        if not rows:
            return cls.empty(reference)
        X = np.array([[row[n] for n in reference.names] for row in rows], dtype=np.float64)
        return cls.of(
            reference,
            X,
            np.array([row["score"] for row in rows], dtype=np.float64),
            np.array([bool(row["alert"]) for row in rows]),
            np.array([row["latency_ms"] for row in rows], dtype=np.float64),
        )

    def __add__(self, other: WindowCounts) -> WindowCounts:
        return WindowCounts(
            self.features + other.features,
            None if self.scores is None else self.scores + other.scores,
            self.latency + other.latency,
            self.events + other.events,
            self.alerts + other.alerts,
        )

    @classmethod
    def merge(cls, reference: Reference, parts: Iterable[WindowCounts]) -> WindowCounts:
        total = cls.empty(reference)
        for part in parts:
            total = total + part
        return total


def _none_if_nan(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _iso(value: Any) -> str:
    return pd.Timestamp(value).isoformat()


PERIODIC = frozenset(c.value for c in Calendar) | {
    name for spec in PRESETS.values() for k in spec.lookups for name in k.periodic_names()
}
"""Calendar inputs, and looked-up features that follow the time of day (the hour's deviation
from the card's usual hour): periodic by construction, left out of a window's ``max_psi``."""


def window_record(
    reference: Reference,
    counts: WindowCounts,
    window_start: datetime | str | pd.Timestamp,
    window_end: datetime | str | pd.Timestamp,
    source: str = "",
) -> dict:
    """The monitoring record of one window (JSON-ready; fields in the module docstring).

    ``max_psi`` and ``drift`` leave out the periodic inputs (:data:`PERIODIC`): within a window
    shorter than their period (an hour of ``TX_HOUR``) they differ from the training mix by
    construction; their ``psi_<name>`` is still reported."""
    values = psi_counts(reference.proportions_array(), counts.features)
    score = (
        float(psi_counts(np.asarray(reference.score_proportions), counts.scores))
        if counts.scores is not None
        else math.nan
    )
    finite = [
        (v, n)
        for v, n in zip(values, reference.names, strict=True)
        if not math.isnan(v) and n not in PERIODIC
    ]
    max_psi, max_feature = max(finite) if finite else (math.nan, None)
    record: dict[str, Any] = {
        "window_start": _iso(window_start),
        "window_end": _iso(window_end),
        "events": int(counts.events),
        "alerts": int(counts.alerts),
        "alert_rate": counts.alerts / counts.events if counts.events else None,
        "latency_p50_ms": _none_if_nan(latency_quantile(counts.latency, 0.50)),
        "latency_p99_ms": _none_if_nan(latency_quantile(counts.latency, 0.99)),
        "score_psi": _none_if_nan(score),
        "max_psi": _none_if_nan(max_psi),
        "max_psi_feature": max_feature,
        "drift": classify(max_psi) if counts.events else None,
        "reference": source,
    }
    for name, value in zip(reference.names, values, strict=True):
        record[f"psi_{name}"] = _none_if_nan(float(value))
    return record


def records_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Monitoring records -> a DataFrame (window bounds as datetimes, null as NaN)."""
    df = pd.DataFrame.from_records(list(records))
    if df.empty:
        return df
    for col in ("window_start", "window_end"):
        df[col] = pd.to_datetime(df[col])
    for col in df.columns:
        if col.startswith(("psi_", "latency_")) or col in ("alert_rate", "score_psi", "max_psi"):
            df[col] = df[col].astype("float64")
    return df


def read_records(path: str | Path) -> pd.DataFrame:
    """Read ``monitoring.json`` (a JSON array) or the stream's JSON lines into a DataFrame."""
    text = Path(path).read_text().strip()
    if text.startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return records_frame(records)


def window_stats(
    scored: pd.DataFrame,
    reference: Reference,
    features: list[str],
    freq: str = "1h",
    source: str = "",
) -> pd.DataFrame:
    """Per event-time window of ``freq`` (every window from the first event's to the last's,
    empty ones included): the :func:`window_record` fields, one row per window."""
    return records_frame(window_records(scored, reference, features, freq, source))


def window_records(
    scored: pd.DataFrame,
    reference: Reference,
    features: list[str],
    freq: str = "1h",
    source: str = "",
) -> list[dict]:
    """:func:`window_stats` as the list of JSON-ready :func:`window_record` dicts."""
    ref = reference.subset(features)
    if scored.empty:
        return []
    step = pd.Timedelta(freq)
    times = pd.to_datetime(scored["event_time"])
    starts = times.dt.floor(freq)
    first = starts.min()
    codes = ((starts - first) // step).to_numpy(np.int64)
    n_windows = int(codes.max()) + 1
    width = ref.bins + 1

    def per_window(idx: np.ndarray, size: int) -> np.ndarray:
        flat = np.bincount(codes * size + idx, minlength=n_windows * size)
        return flat.reshape(n_windows, size).astype(np.int64)

    X = scored[features].to_numpy(np.float64)
    feature_counts = np.stack(
        [
            per_window(bin_index(np.asarray(cuts, np.float64), X[:, j], ref.bins), width)
            for j, cuts in enumerate(ref.edges)
        ],
        axis=1,
    )  # (windows, features, bins + 1)
    score_counts = None
    if ref.has_scores:
        idx = bin_index(np.asarray(ref.score_edges), scored["score"].to_numpy(float), ref.bins)
        score_counts = per_window(idx, width)
    latency = scored["latency_ms"].to_numpy(np.float64)
    keep = ~np.isnan(latency)
    lat_idx = np.searchsorted(LATENCY_EDGES_MS, latency[keep], side="right")
    n_lat = len(LATENCY_EDGES_MS) + 1
    lat_flat = np.bincount(codes[keep] * n_lat + lat_idx, minlength=n_windows * n_lat)
    lat_counts = lat_flat.reshape(n_windows, n_lat)
    events = np.bincount(codes, minlength=n_windows)
    alerts = np.bincount(codes, weights=scored["alert"].to_numpy(bool), minlength=n_windows)

    records = []
    for w in range(n_windows):
        counts = WindowCounts(
            feature_counts[w],
            None if score_counts is None else score_counts[w],
            lat_counts[w],
            int(events[w]),
            int(alerts[w]),
        )
        start = first + w * step
        records.append(window_record(ref, counts, start, start + step, source))
    return records
