"""The no-skew proof: the Beam job gives every transaction the backfill's features and the
offline score, exactly; bad messages go to the dead-letter output; duplicates count once."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from datetime import timedelta

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_stream import TestStream as _TestStream  # not a test class

from features import batch, presets
from features.backfill import backfill
from features.incremental import Status
from features.limits import text_key
from features.spec import FeatureSpec
from features.synthetic import transactions
from features.table import validate
from streaming.batch.bootstrap import replay_states, write_states
from streaming.job.initial_states import InitialStates
from streaming.job.pipeline import ScoreTransactions
from streaming.job.scoring import BoosterHandler
from streaming.store.lookup import LookupReader, MemoryLookupReader
from training import model as models
from training.registry import Registry, model_meta

SPEC = presets.BASELINE
OPTIONS = PipelineOptions([])


def _id(value: object) -> int | str:
    return value if isinstance(value, str) else int(value)  # type: ignore[call-overload]


def to_payloads(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The transactions and labels of ``df`` as messages (ids as numbers, or text as given)."""
    txs, labels = [], []
    for row in df.itertuples(index=False):
        tx = {
            "TRANSACTION_ID": _id(row.TRANSACTION_ID),
            "TX_DATETIME": row.TX_DATETIME.isoformat(),
            "CUSTOMER_ID": _id(row.CUSTOMER_ID),
            "TERMINAL_ID": _id(row.TERMINAL_ID),
            "TX_AMOUNT": float(row.TX_AMOUNT),
        }
        txs.append(json.dumps(tx))
        label_time = row.TX_DATETIME + SPEC.label_delay
        labels.append(
            json.dumps(
                {
                    **{k: tx[k] for k in tx if k != "TX_AMOUNT"},
                    "LABEL_DATETIME": label_time.isoformat(),
                    "TX_FRAUD": int(row.TX_FRAUD),
                }
            )
        )
    return txs, labels


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    df = validate(transactions(n=400, customers=12, terminals=8, days=20, fraud_rate=0.05), SPEC)
    X = backfill(df, SPEC)[SPEC.names].to_numpy()
    booster = models.train(X.astype(np.float32), df["TX_FRAUD"].to_numpy(), models.Params(20))
    root = tmp_path_factory.mktemp("models")
    registry = Registry(root)
    meta = model_meta(SPEC, 0.5)
    registry.promote(registry.save(booster, meta))
    return df, X, booster, root


_GOT: dict[str, list] = {}


def _keep(element, name: str) -> None:
    """Collect outputs, the rows of a list (``scored`` carries lists) one by one (the
    in-process runner pickles this by reference: same globals)."""
    _GOT.setdefault(name, []).extend(element if isinstance(element, list) else [element])


def run_core(txs: list, labels: list, model_dir) -> dict[str, list]:
    _GOT.clear()

    # The portable FnApiRunner (what DirectRunner falls back to, without trying Prism first):
    # the bundle-based runner rejects timers that emit into a downstream grouping.
    with beam.Pipeline(runner=FnApiRunner(), options=OPTIONS) as p:
        inputs = {
            "transactions": p | "Tx" >> beam.Create(txs, reshuffle=False),
            "labels": p | "Labels" >> beam.Create(labels, reshuffle=False),
        }
        handler = BoosterHandler(str(model_dir), SPEC.name)
        out = inputs | ScoreTransactions(SPEC, handler, ordering="event_time")
        for name in ("scored", "dead_letter", "alerts"):
            _ = out[name] | f"Keep{name}" >> beam.Map(_keep, name)
    return {name: list(_GOT.get(name, [])) for name in ("scored", "dead_letter", "alerts")}


def stream_run(
    stream: _TestStream,
    root,
    max_lateness: timedelta = timedelta(days=1),
    ordering: str = "event_time",
    initial: InitialStates | None = None,
    spec: FeatureSpec = SPEC,
    lookup: Callable[[], LookupReader] | None = None,
) -> dict[str, list]:
    """Run the core in streaming mode on the DirectRunner over ``stream`` (one TestStream with
    the tagged outputs ``transactions`` and ``labels``: the DirectRunner ends a pipeline with
    two TestStreams as soon as one of them is exhausted)."""
    options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    _GOT.clear()
    with beam.Pipeline(options=options) as p:
        inputs = p | "Events" >> stream
        handler = BoosterHandler(str(root), spec.name)
        out = inputs | ScoreTransactions(
            spec, handler, max_lateness, ordering=ordering, initial=initial, lookup=lookup
        )
        for name in ("scored", "dead_letter", "alerts"):
            _ = out[name] | f"Keep{name}" >> beam.Map(_keep, name)
    return {name: list(_GOT.get(name, [])) for name in ("scored", "dead_letter", "alerts")}


def _assert_backfill_parity(got: dict[str, list], df, X, booster, redelivered: int) -> None:
    """Every transaction scored once, with the backfill's features bit for bit and the offline
    score; the redelivered copies are ``DUPLICATE`` dead letters."""
    scored = {s.tx.transaction_id: s for s in got["scored"]}
    assert len(got["scored"]) == len(df) == len(scored)
    np.testing.assert_array_equal(np.stack([scored[i].features for i in df["TRANSACTION_ID"]]), X)
    np.testing.assert_array_equal(
        np.array([scored[i].score for i in df["TRANSACTION_ID"]]),
        models.predict(booster, X.astype(np.float32)),
    )
    assert [d["error"] for d in got["dead_letter"]] == ["DUPLICATE"] * redelivered


@pytest.mark.slow
def test_every_transaction_gets_the_backfill_features_and_the_offline_score(world):
    df, X, booster, root = world
    txs, labels = to_payloads(df)
    bad = ["{not json", json.dumps({"TRANSACTION_ID": 1}), b"\xff\xfe"]
    got = run_core(txs + bad + txs[:25], labels, root)  # 25 duplicates
    scored = {s.tx.transaction_id: s for s in got["scored"]}
    assert len(got["scored"]) == len(df) == len(scored)
    streamed_x = np.stack([scored[i].features for i in df["TRANSACTION_ID"]])
    np.testing.assert_array_equal(streamed_x, X)  # bit-identical features: no skew
    offline = models.predict(booster, X.astype(np.float32))
    streamed = np.array([scored[i].score for i in df["TRANSACTION_ID"]])
    np.testing.assert_array_equal(streamed, offline)
    stages = [(d["stage"], d["error"]) for d in got["dead_letter"]]
    assert len(stages) == 3 + 25
    assert sum(stage == "parse_transactions" for stage, _ in stages) == 3
    assert stages.count(("features", "DUPLICATE")) == 25  # redeliveries: refused, with reason
    alerts = got["alerts"]
    assert {a["transaction_id"] for a in alerts} == set(
        df["TRANSACTION_ID"][offline >= 0.5].tolist()
    )
    for alert in alerts:
        assert alert["model_version"] == "v0001" and alert["threshold"] == 0.5
        assert len(alert["reasons"]) == 3 and alert["score"] >= 0.5


@pytest.mark.slow
def test_text_ids_get_the_features_of_their_history_and_alerts_carry_them(world):
    """A producer keying payments by UUID, cards by token and terminals by a zero-padded code:
    the history of those texts (read as a table) and the stream of them give every transaction
    the same features and score, bit for bit, labels included; alerts carry the texts."""
    df, _, booster, root = world
    namespace = uuid.UUID("9b2f0c1e-4a8d-4c57-9e3a-2f6d1b7c8e90")
    text = df.assign(
        TRANSACTION_ID=[str(uuid.uuid5(namespace, str(i))) for i in df["TRANSACTION_ID"]],
        CUSTOMER_ID=[f"card_tok_{i:x}" for i in df["CUSTOMER_ID"]],
        TERMINAL_ID=[f"{i:06d}" for i in df["TERMINAL_ID"]],
    )
    keyed = validate(text, SPEC)
    X = backfill(keyed, SPEC)[SPEC.names].to_numpy()
    assert X[:, [SPEC.names.index(n) for n in SPEC.label_names]].any()  # labels found their tx
    txs, labels = to_payloads(text)
    got = run_core(txs, labels, root)
    scored = {s.tx.transaction_id: s for s in got["scored"]}
    assert len(scored) == len(df) and not got["dead_letter"]
    np.testing.assert_array_equal(
        np.stack([scored[i].features for i in keyed["TRANSACTION_ID"]]), X
    )
    offline = models.predict(booster, X.astype(np.float32))
    by_key = dict(zip(keyed["TRANSACTION_ID"], offline, strict=True))
    texts = {text_key(t): t for t in text["TRANSACTION_ID"]}
    expected = {texts[k] for k, score in by_key.items() if score >= 0.5}
    assert {a["transaction_id"] for a in got["alerts"]} == expected and expected
    sent = text.set_index("TRANSACTION_ID")
    for alert in got["alerts"]:
        row = sent.loc[alert["transaction_id"]]
        assert (alert["customer_id"], alert["terminal_id"]) == (row.CUSTOMER_ID, row.TERMINAL_ID)


@pytest.mark.slow
def test_streaming_mode_on_the_direct_runner_gives_the_same_features_and_scores(world):
    """The same core in streaming mode (watermarks and event-time timers) on the DirectRunner,
    transactions (and 10 copies) first, labels after: the watermark orders them."""
    df, X, booster, root = world
    txs, labels = to_payloads(df)
    stream = (
        _TestStream(output_tags={"transactions", "labels"})
        .add_elements(txs + txs[:10], tag="transactions")
        .add_elements(labels, tag="labels")
        .advance_watermark_to_infinity()
    )
    _assert_backfill_parity(stream_run(stream, root), df, X, booster, redelivered=10)


def _arrival_events(df: pd.DataFrame) -> list[tuple]:
    """The replay's order (``features.stream.with_labels``): transactions at their time, each
    label at its label time, labels first at equal times; ``(time, kind, row, tag, payload)``."""
    txs, labels = to_payloads(df)
    times = df["TX_DATETIME"].tolist()
    return sorted(
        [(t, 1, i, "transactions", p) for i, (t, p) in enumerate(zip(times, txs, strict=True))]
        + [
            (t + SPEC.label_delay, 0, i, "labels", p)
            for i, (t, p) in enumerate(zip(times, labels, strict=True))
        ]
    )


def _in_arrival_order(df: pd.DataFrame, events: list[tuple] | None = None):
    """:func:`_arrival_events` (or ``events``) as runs of one tag each."""
    runs: list[tuple[str, list[str]]] = []
    for *_, tag, payload in _arrival_events(df) if events is None else events:
        if not runs or runs[-1][0] != tag:
            runs.append((tag, []))
        runs[-1][1].append(payload)
    return runs


@pytest.mark.slow
def test_arrival_ordering_gives_the_backfill_features_when_events_arrive_in_order(world):
    """``ordering="arrival"`` applies events as they come, without waiting for the watermark:
    delivered in arrival order (labels interleaved with transactions), every transaction gets
    the backfill's features bit for bit and the offline score; a redelivered copy is refused."""
    df, X, booster, root = world
    runs = _in_arrival_order(df)
    assert sum(tag == "labels" for tag, _ in runs) > 10  # labels do interleave
    stream = _TestStream(output_tags={"transactions", "labels"})
    for tag, payloads in runs:
        stream.add_elements(payloads, tag=tag)
    # redelivered (the newest: a copy older than the lateness would be TOO_LATE)
    stream.add_elements(to_payloads(df.iloc[-5:])[0], tag="transactions")
    stream.advance_watermark_to_infinity()
    got = stream_run(stream, root, ordering="arrival")
    _assert_backfill_parity(got, df, X, booster, redelivered=5)


def _after(df: pd.DataFrame, cut: int) -> _TestStream:
    """What a job taking over after the first ``cut`` transactions receives: the rest, and the
    labels due after the ``cut``-th, in arrival order."""
    events = _arrival_events(df)
    seen = next(i for i, e in enumerate(events) if e[1] == 1 and e[2] == cut - 1) + 1
    stream = _TestStream(output_tags={"transactions", "labels"})
    for tag, payloads in _in_arrival_order(df, events[seen:]):
        stream.add_elements(payloads, tag=tag)
    return stream.advance_watermark_to_infinity()


@pytest.mark.slow
@pytest.mark.parametrize("ordering", ["arrival", "event_time"])
def test_a_job_started_from_bootstrapped_states_has_the_features_of_the_whole_history(
    world, ordering, tmp_path
):
    """``fraudstream bootstrap`` on the first 250 transactions, then the job on what comes
    after them (the rest, and the labels due after the 250th): every live transaction gets the
    backfill's features of the whole history, bit for bit."""
    df, X, booster, root = world
    cut = 250
    history = df.iloc[:cut]
    path = tmp_path / "states.parquet"
    write_states(path, replay_states(history, SPEC), SPEC, 0)
    stream = _after(df, cut)
    got = stream_run(stream, root, ordering=ordering, initial=InitialStates(str(path), SPEC))
    live = df.iloc[cut:]
    _assert_backfill_parity(got, live, X[cut:], booster, redelivered=0)
    cold = backfill(live.reset_index(drop=True), SPEC)[SPEC.names].to_numpy()
    assert not np.array_equal(cold, X[cut:])  # a cold start would have differed


_LOOKUPS: dict[str, MemoryLookupReader] = {}


def _lookup(name: str) -> MemoryLookupReader:
    return _LOOKUPS[name]


@pytest.mark.slow
@pytest.mark.parametrize("ordering", ["arrival", "event_time"])
def test_looked_up_batch_features_reach_the_scored_rows_as_the_training_set_has_them(
    ordering, tmp_path
):
    """Preset ``enriched``: states bootstrapped from the history before the last day D, the
    store holding the batch features as of D (the daily materialization), then D's events:
    every transaction is scored with the training set's features (backfill with the
    point-in-time join), lookups included, bit for bit, and the offline score."""
    spec = presets.get("enriched")
    df = validate(transactions(n=1_200, customers=30, terminals=20, days=40, fraud_rate=0.05),
                  spec)  # fmt: skip
    day = df["TX_DATETIME"].max().normalize()
    cut = int((df["TX_DATETIME"] < day).sum())
    X = backfill(df, spec)[spec.names].to_numpy()
    booster = models.train(X.astype(np.float32), df["TX_FRAUD"].to_numpy(), models.Params(20))
    registry = Registry(tmp_path / "models")
    registry.promote(registry.save(booster, model_meta(spec, 0.5)))
    states = tmp_path / "states.parquet"
    write_states(states, replay_states(df.iloc[:cut], spec), spec, 0)
    tables = batch.snapshots(df.iloc[:cut], spec, days=(day.value, day.value))
    stream = _after(df, cut)
    name = f"{ordering}-{tmp_path.name}"
    _LOOKUPS[name] = MemoryLookupReader(spec, tables)
    try:
        got = stream_run(stream, tmp_path / "models", ordering=ordering,
                         initial=InitialStates(str(states), spec), spec=spec,
                         lookup=functools.partial(_lookup, name))  # fmt: skip
    finally:
        del _LOOKUPS[name]
    _assert_backfill_parity(got, df.iloc[cut:], X[cut:], booster, redelivered=0)
    looked_up = X[cut:, len(spec.stream_names) :]
    assert np.isfinite(looked_up).any(axis=0).all()  # every lookup column has values


def test_an_unknown_ordering_is_refused(world):
    handler = BoosterHandler(str(world[3]), SPEC.name)
    with pytest.raises(ValueError, match="ordering must be one of"):
        ScoreTransactions(SPEC, handler, ordering="processing_time")


@pytest.mark.parametrize(("ordering", "statuses"), [("arrival", ["OK", "LATE"]),
                                                    ("event_time", ["OK", "OK"])])  # fmt: skip
def test_the_orderings_differ_on_a_transaction_delivered_after_a_newer_one(
    world, ordering, statuses
):
    """The same card pays twice, an hour apart; the later payment is delivered first. Arrival
    ordering scores it at once, without the earlier one, which then arrives late (inserted where
    it belongs); event-time ordering waits for the watermark and applies both in time order."""
    df, _, _, root = world
    first = df.iloc[0]
    pair = pd.DataFrame([first, first]).assign(
        TRANSACTION_ID=[10**9, 10**9 + 1],
        TX_DATETIME=[first.TX_DATETIME, first.TX_DATETIME + pd.Timedelta(hours=1)],
    )
    earlier, later = to_payloads(pair)[0]
    stream = (
        _TestStream(output_tags={"transactions", "labels"})
        .add_elements([later], tag="transactions")
        .add_elements([earlier], tag="transactions")
        .advance_watermark_to_infinity()
    )
    got = stream_run(stream, root, ordering=ordering)
    by_id = {s.tx.transaction_id: s for s in got["scored"]}
    assert [Status(by_id[i].status).name for i in (10**9 + 1, 10**9)] == statuses
    count = SPEC.names.index("CUSTOMER_ID_NB_TX_1DAY_WINDOW")
    later_count = by_id[10**9 + 1].features[count]
    assert later_count == (1.0 if ordering == "arrival" else 2.0)  # sees the earlier one?
