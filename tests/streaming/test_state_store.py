"""Initial states from Bigtable: ``fraudstream bootstrap --to_store`` writes every entity's state
to the state table, ``run --initial_state store`` reads an entity's the first time it is seen,
once, and the job continues exactly as if it had seen the whole history."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_stream import TestStream as _TestStream  # not a test class

from features import presets
from features.backfill import backfill
from features.incremental import KIND_TX, IncrementalEngine
from features.plan import EntityPlan
from features.spec import CUSTOMER, TERMINAL, FeatureSpec
from features.stream import stream_features, with_labels
from features.synthetic import transactions
from features.table import event_times_ns, validate
from streaming.batch.bootstrap import replay_states, store_states, write_states
from streaming.cli import main
from streaming.job.common import NAMESPACE
from streaming.job.entity_state import NO_STATE, EntityStateFn, uses_labels
from streaming.job.initial_states import STORE, InitialStates, read_states
from streaming.job.pipeline import ScoreTransactions
from streaming.job.scoring import BoosterHandler
from streaming.local import emulators as emu
from streaming.pseudonymise import Pseudonymiser
from streaming.schema import Label, Transaction
from streaming.store.bigtable.states import StateTable, state_table_name
from streaming.store.feast_store import StoreSettings, scratch_repo
from training import model as models
from training.registry import Registry

KEY = "ab" * 32
SUBS = ["--transactions_subscription", "projects/demo-project/subscriptions/tx",
        "--labels_subscription", "projects/demo-project/subscriptions/labels"]  # fmt: skip


@pytest.fixture
def settings(bigtable_emulator, tmp_path: Path, unique_name) -> StoreSettings:
    """The emulator profile of a Feast repository with a project (and state table) of its own."""
    project = unique_name("st").replace("-", "_")
    return StoreSettings("emulator", str(scratch_repo(tmp_path / "repo", project)))


def _table(settings: StoreSettings) -> StateTable:
    return StateTable.of(settings.repo_config())


def _history(spec: FeatureSpec, n: int = 2_500) -> pd.DataFrame:
    return validate(transactions(n=n, customers=15, terminals=25, days=60, fraud_rate=0.05), spec)


def _counting(lookup: Callable[[int], bytes | None], reads: list[int]):
    def counted(key: int) -> bytes | None:
        reads.append(key)
        return lookup(key)

    return counted


# --------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("preset", ["default", "feedback"])
def test_a_stream_bootstrapped_from_the_store_continues_exactly_like_an_uninterrupted_one(
    preset, settings
):
    """Bootstrap 60 % of a history into Bigtable, stream the rest, each entity's state read
    from the store on its first event: the features are the uninterrupted stream's, bit for
    bit (``feedback``: labels due after the history's end are left to the live feed)."""
    spec = presets.get(preset)
    df = _history(spec)
    cut = int(len(df) * 0.6)
    history = df.iloc[:cut]
    info = store_states(
        _table(settings), replay_states(history, spec), spec, int(event_times_ns(history).max())
    )
    assert info.entities == history["CUSTOMER_ID"].nunique() + history["TERMINAL_ID"].nunique()

    events = with_labels(df, spec)
    seen = int(np.flatnonzero(events.kind == KIND_TX)[cut - 1]) + 1  # up to the last history tx
    live = events[seen:]
    engine = IncrementalEngine(spec)
    initial = InitialStates(STORE, spec, settings)
    for entity in spec.entities:
        reads: list[int] = []
        lookup = _counting(initial.lookup(entity), reads)
        applied = live.ids[entity.key][(live.kind == KIND_TX) | uses_labels(spec, entity)]
        for key in dict.fromkeys(applied.tolist()):  # first sight, in arrival order
            blob = lookup(key)
            if blob is not None:
                engine.load(entity, key, blob)
        assert len(reads) == len(set(reads))  # one read per entity
        assert set(reads) & set(history[entity.key]), entity  # the store answered some
    feats, status = engine.process(live)
    got = feats[live.kind == KIND_TX]

    uninterrupted = stream_features(df, spec)[spec.names].to_numpy()[cut:]
    np.testing.assert_array_equal(got, uninterrupted)
    assert (status[live.kind == KIND_TX] == 0).all()
    cold = stream_features(df.iloc[cut:], spec)[spec.names].to_numpy()
    assert not np.array_equal(got, cold, equal_nan=True)  # without states the job would differ


def test_the_store_holds_what_the_file_holds_and_reads_it_by_key(settings, tmp_path):
    spec = presets.BASELINE
    df = _history(spec, n=400)
    states = replay_states(df, spec)
    write_states(tmp_path / "states.parquet", states, spec, 0)
    table = _table(settings)
    store_states(table, states, spec, 0)
    for entity in spec.entities:
        in_file = read_states(tmp_path / "states.parquet", spec, entity)
        keys = sorted(in_file)
        assert table.read_many(entity, [*keys, 10**9]) == in_file  # 10**9: no such entity
        assert table.read(entity, keys[0]) == in_file[keys[0]]
        assert table.read(entity, 10**9) is None


def test_states_are_written_in_batches_and_a_new_bootstrap_replaces_the_old(settings):
    spec = presets.BASELINE
    table = _table(settings)
    table.rows_per_write = 7
    df = _history(spec, n=400)
    states = replay_states(df, spec)
    customers = states[CUSTOMER]
    batches: list[int] = []
    table.replace()
    table.write(CUSTOMER, list(customers), list(customers.values()), batches.append)
    assert batches == [7, 7, 1]  # 15 cards in MutateRows of 7 rows
    assert table.read_many(CUSTOMER, list(customers)) == customers
    assert table.read_info() is None  # states without a metadata row: not a bootstrap

    store_states(table, {CUSTOMER: {}, TERMINAL: states[TERMINAL]}, spec, 0)
    assert table.read_many(CUSTOMER, list(customers)) == {}  # the old states are gone
    assert table.read_info()["entities"] == len(states[TERMINAL])


def test_table_names_fit_bigtables_limit():
    assert state_table_name("fraudstream") == "fraudstream-states"
    long = state_table_name("p" * 60)
    assert len(long) <= 50 and long.endswith("-states") and long != state_table_name("p" * 61)


# --------------------------------------------------------------------------- the DoFn


class _BeamState:
    """A ReadModifyWriteState stand-in: None until written."""

    def __init__(self) -> None:
        self.value: bytes | None = None

    def read(self) -> bytes | None:
        return self.value

    def write(self, value: bytes) -> None:
        self.value = value


def test_an_entity_is_looked_up_once_even_when_its_first_event_leaves_no_state(settings):
    """A label of an unknown transaction leaves no state; the entity is marked seen, so its
    next events do not read the store again. A found entity is read once too, and starts from
    its history."""
    spec = presets.BASELINE  # terminals use labels
    df = _history(spec, n=400)
    store_states(_table(settings), replay_states(df, spec), spec, 0)
    plan, lateness = EntityPlan.build(spec, TERMINAL), timedelta(days=1)
    fn = EntityStateFn(plan, lateness, InitialStates(STORE, spec, settings))
    cold = EntityStateFn(plan, lateness)
    fn.setup()
    cold.setup()
    reads: list[int] = []
    fn.initial_state = _counting(fn.initial_state, reads)
    t_ns = int(event_times_ns(df).max()) + 86_400 * 10**9

    def tx(terminal: int, i: int) -> Transaction:
        return Transaction(10**6 + i, t_ns + i, 1, terminal, 10.0)

    new, known = 10**6, int(df["TERMINAL_ID"].iloc[-1])
    state = _BeamState()
    fn._apply(new, Label(10**7, 1, new, t_ns - 1, t_ns, 1), state)
    assert state.value == NO_STATE
    fn._apply(new, tx(new, 1), state)
    assert reads == [new] and state.value not in (None, NO_STATE)

    state = _BeamState()
    first = fn._apply(known, tx(known, 2), state)
    fn._apply(known, tx(known, 3), state)
    assert reads == [new, known]
    assert not np.array_equal(first.values, cold._apply(known, tx(known, 2), _BeamState()).values,
                              equal_nan=True)  # fmt: skip


# --------------------------------------------------------------------------- the Beam job

_GOT: dict[str, list] = {}


def _keep(element, name: str) -> None:
    """Collect outputs, the rows of a list (``scored`` carries lists) one by one (the
    in-process runner pickles this by reference: same globals)."""
    _GOT.setdefault(name, []).extend(element if isinstance(element, list) else [element])


def _payloads(df: pd.DataFrame, spec: FeatureSpec) -> list[tuple]:
    """``(arrival time, kind, row, tag, payload)`` of each transaction and label in the
    replay's order (labels first at equal times, then by row)."""
    events = []
    for i, row in enumerate(df.itertuples(index=False)):
        tx = {"TRANSACTION_ID": int(row.TRANSACTION_ID), "TX_DATETIME": row.TX_DATETIME.isoformat(),
              "CUSTOMER_ID": int(row.CUSTOMER_ID), "TERMINAL_ID": int(row.TERMINAL_ID)}  # fmt: skip
        label_time = row.TX_DATETIME + spec.label_delay
        label = {**tx, "LABEL_DATETIME": label_time.isoformat(), "TX_FRAUD": int(row.TX_FRAUD)}
        events.append((row.TX_DATETIME, 1, i, "transactions",
                       json.dumps({**tx, "TX_AMOUNT": float(row.TX_AMOUNT)})))  # fmt: skip
        events.append((label_time, 0, i, "labels", json.dumps(label)))
    return sorted(events, key=lambda e: e[:3])


def _run_job(
    events: list[tuple], root: Path, spec: FeatureSpec, ordering: str, initial, streaming: bool
) -> tuple[list, dict[str, int]]:
    """The core over ``events``: on the DirectRunner in streaming mode (a TestStream in their
    order) or, ``streaming`` false, on the portable runner in one batch; returns the scored
    rows and the job's counters by name."""
    _GOT.clear()
    if streaming:
        options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
        options.view_as(StandardOptions).streaming = True
        p = beam.Pipeline(options=options)
        stream = _TestStream(output_tags={"transactions", "labels"})
        for tag, run in itertools.groupby(events, key=lambda e: e[3]):
            stream.add_elements([e[4] for e in run], tag=tag)
        inputs = p | "Events" >> stream.advance_watermark_to_infinity()
    else:
        p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
        inputs = {
            tag: p | tag >> beam.Create([e[4] for e in events if e[3] == tag], reshuffle=False)
            for tag in ("transactions", "labels")
        }
    handler = BoosterHandler(str(root), spec.name)
    core = ScoreTransactions(spec, handler, timedelta(days=1), ordering=ordering, initial=initial)
    _ = (inputs | core)["scored"] | "Keep" >> beam.Map(_keep, "scored")
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    return list(_GOT.get("scored", [])), {c.key.metric.name: c.committed for c in counters}


def _counted_reads(monkeypatch) -> list[tuple[str, int, bool]]:
    """``(entity, id, found)`` of every read of the state table from now on (the local
    runners' workers run in this process)."""
    read, reads = StateTable.read, []

    def counted(self: StateTable, entity, key: int) -> bytes | None:
        state = read(self, entity, key)
        reads.append((entity.name, key, state is not None))
        return state

    monkeypatch.setattr(StateTable, "read", counted)
    return reads


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """400 transactions whose last 30 come from 5 new cards, the backfill's features and a
    model trained on them."""
    spec = presets.BASELINE
    df = transactions(n=400, customers=12, terminals=8, days=20, fraud_rate=0.05)
    df.loc[df.index[-30:], "CUSTOMER_ID"] = 1_000 + np.arange(30) % 5
    df = validate(df, spec)
    X = backfill(df, spec)[spec.names].to_numpy()
    booster = models.train(X.astype(np.float32), df["TX_FRAUD"].to_numpy(), models.Params(20))
    root = tmp_path_factory.mktemp("models")
    registry = Registry(root)
    meta = {"preset": spec.name, "features": spec.names,
            "spec_fingerprint": spec.fingerprint(), "threshold": 0.5}  # fmt: skip
    registry.promote(registry.save(booster, meta))
    return df, X, root


def _live(world, settings: StoreSettings, cut: int = 250):
    """Bootstrap the first ``cut`` transactions into the store; the events after the last of
    them (the rest, and the labels due after it), and by entity the ids the job applies events
    to: ``(found in the store, absent)``."""
    spec = presets.BASELINE
    df = world[0]
    history = df.iloc[:cut]
    store_states(_table(settings), replay_states(history, spec), spec, 0)
    events = _payloads(df, spec)
    seen = next(i for i, e in enumerate(events) if e[1] == 1 and e[2] == cut - 1) + 1
    live = events[seen:]
    entities = {}
    for entity in spec.entities:
        kinds = (0, 1) if uses_labels(spec, entity) else (1,)
        applied = {int(df[entity.key].iloc[e[2]]) for e in live if e[1] in kinds}
        known = applied & set(history[entity.key])
        entities[entity.name] = (known, applied - known)
    assert len(entities["customer"][1]) >= 5  # the new cards
    return live, entities


@pytest.mark.slow
@pytest.mark.parametrize("ordering", ["arrival", "event_time"])
def test_a_job_started_from_the_store_has_the_features_of_the_whole_history(
    world, ordering, settings, monkeypatch
):
    """Bootstrap the first 250 transactions into Bigtable, run the job with
    ``--initial_state store`` on what comes after: every live transaction gets the backfill's
    features of the whole history, bit for bit; the new cards, absent from the store, start
    empty. Each entity's state is read once, on its first event."""
    spec = presets.BASELINE
    df, X, root = world
    live, entities = _live(world, settings)
    reads = _counted_reads(monkeypatch)
    initial = InitialStates(STORE, spec, settings)
    scored, _ = _run_job(live, root, spec, ordering, initial, streaming=True)

    got = {s.tx.transaction_id: s.features for s in scored}
    assert len(scored) == len(got) == len(df) - 250
    np.testing.assert_array_equal(np.stack([got[i] for i in df["TRANSACTION_ID"][250:]]), X[250:])
    cold = backfill(df.iloc[250:].reset_index(drop=True), spec)[spec.names].to_numpy()
    assert not np.array_equal(cold, X[250:])  # a cold start would have differed
    for name, (known, missing) in entities.items():
        read = [(key, found) for entity, key, found in reads if entity == name]
        assert len(read) == len(known) + len(missing), name  # one read per entity
        assert {key for key, found in read if found} == known, name
        assert {key for key, found in read if not found} == missing, name


@pytest.mark.slow
def test_the_counters_say_how_many_entities_were_found_in_the_store_and_how_many_not(
    world, settings
):
    """The portable runner (the DirectRunner in streaming mode commits the counters of a
    step's first bundle only): ``<entity>_initial_state_loaded`` and ``_missing`` count each
    entity once."""
    spec = presets.BASELINE
    df, X, root = world
    live, entities = _live(world, settings)
    initial = InitialStates(STORE, spec, settings)
    scored, counters = _run_job(live, root, spec, "event_time", initial, streaming=False)
    got = {s.tx.transaction_id: s.features for s in scored}
    np.testing.assert_array_equal(np.stack([got[i] for i in df["TRANSACTION_ID"][250:]]), X[250:])
    for name, (known, missing) in entities.items():
        assert counters.get(f"{name}_initial_state_loaded", 0) == len(known), name
        assert counters.get(f"{name}_initial_state_missing", 0) == len(missing), name
    assert counters["customer_initial_state_missing"] >= 5  # the new cards


# --------------------------------------------------------------------------- the commands


def _job(settings: StoreSettings, *more: str) -> list[str]:
    return ["run", "--model_dir", "/models/not/here", "--preset", "baseline", *SUBS,
            "--initial_state", "store", "--feature_repo", settings.repo, *more]  # fmt: skip


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_launch_refuses_a_store_for_another_preset_or_id_key(settings, monkeypatch, capsys):
    monkeypatch.setenv("FRAUDSTREAM_ID_KEY", KEY)
    key = Pseudonymiser.from_env(required=True).fingerprint
    table = _table(settings)
    assert main(_job(settings)) == 2  # nothing bootstrapped yet
    assert "no complete bootstrap in Bigtable table" in _one_line(capsys)

    store_states(table, {}, presets.DEFAULT, 0, id_key=key)
    assert main(_job(settings)) == 2
    err = _one_line(capsys)
    assert err.startswith("fraudstream run: error: initial state store (table ")
    assert "was written for spec 'default'" in err and "--preset baseline" in err

    store_states(table, {}, presets.BASELINE, 0, id_key="")
    assert main(_job(settings)) == 2
    assert f"is keyed by clear ids, the job by key {key}" in _one_line(capsys)
    store_states(table, {}, presets.BASELINE, 0, id_key="1234abcd")
    assert main(_job(settings)) == 2
    assert f"is keyed by key 1234abcd, the job by key {key}" in _one_line(capsys)

    store_states(table, {}, presets.BASELINE, 0, id_key=key)
    assert main(_job(settings)) == 2
    assert "no such model directory" in _one_line(capsys)  # the store is fine: the next check


def test_a_remote_launch_leaves_the_store_to_the_workers(settings, monkeypatch):
    from streaming.job.pipeline import build

    options = PipelineOptions(["--runner", "DataflowRunner", "--id_key_secret", "projects/p/"
                               "secrets/k/versions/1", *_job(settings)[1:]])  # fmt: skip
    build(beam.Pipeline(runner="DirectRunner", options=options), options)  # no table: no I/O


def test_bootstrap_to_the_store_keys_states_by_the_jobs_pseudonyms(
    settings, tmp_path, monkeypatch, capsys
):
    spec = presets.BASELINE
    df = _history(spec, n=300)
    df.to_parquet(tmp_path / "history.parquet")
    monkeypatch.setenv("FRAUDSTREAM_ID_KEY", KEY)
    ids = Pseudonymiser.from_env(required=True)
    out = tmp_path / "states.parquet"
    args = ["bootstrap", "--input", str(tmp_path / "history.parquet"), "--preset", "baseline",
            "--feature_repo", settings.repo]  # fmt: skip
    assert main([*args, "--to_store", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"to {out} and Bigtable table '{_table(settings).table_id}'" in printed
    info = InitialStates(STORE, spec, settings).info()
    assert info.id_key == ids.fingerprint and info.spec == "baseline"
    assert info.end_ns == int(event_times_ns(df).max())
    assert info.entities == df["CUSTOMER_ID"].nunique() + df["TERMINAL_ID"].nunique()
    in_file = read_states(out, spec, CUSTOMER)
    assert set(in_file) == set(ids.customers(df["CUSTOMER_ID"].to_numpy()).tolist())
    assert _table(settings).read_many(CUSTOMER, list(in_file)) == in_file

    assert main([*args, "--to_store", "--pseudonymise_ids", "off"]) == 0
    clear = df["CUSTOMER_ID"].unique().tolist()
    assert set(_table(settings).read_many(CUSTOMER, clear)) == set(clear)
    assert InitialStates(STORE, spec, settings).info().id_key == ""


def test_bootstrap_needs_a_target_and_a_bigtable_profile(tmp_path, capsys):
    history = tmp_path / "history.parquet"
    _history(presets.BASELINE, n=50).to_parquet(history)
    assert main(["bootstrap", "--input", str(history)]) == 2
    assert _one_line(capsys) == (
        "fraudstream bootstrap: error: give --output FILE, --to_store, or both\n"
    )
    argv = ["bootstrap", "--input", str(history), "--to_store", "--feature_store_profile", "local"]
    assert main(argv) == 2
    assert "online store is 'sqlite'" in _one_line(capsys)


def _unreachable(tmp_path: Path, monkeypatch) -> StoreSettings:
    """The emulator profile pointed at a port where nothing listens, with a 1 s budget."""
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", f"127.0.0.1:{emu.free_port()}")
    repo = scratch_repo(tmp_path / "repo", "unreachable")
    yaml = repo / "profiles" / "emulator.yaml"
    yaml.write_text(yaml.read_text().replace(
        "online_store:\n", "online_store:\n  operation_timeout_s: 1\n  attempt_timeout_s: 0.2\n"
    ))  # fmt: skip
    return StoreSettings("emulator", str(repo))


def test_an_unreachable_bigtable_stops_bootstrap_and_launch_in_one_line(
    tmp_path, monkeypatch, capsys
):
    settings = _unreachable(tmp_path, monkeypatch)
    history = tmp_path / "history.parquet"
    _history(presets.BASELINE, n=50).to_parquet(history)
    argv = ["bootstrap", "--input", str(history), "--to_store", "--pseudonymise_ids", "off",
            "--feature_repo", settings.repo]  # fmt: skip
    assert main(argv) == 1
    err = _one_line(capsys)
    assert err.startswith("fraudstream bootstrap: cannot reach the emulators (")
    assert "BIGTABLE_EMULATOR_HOST=" in err  # beside any other emulator host of the session
    assert "still failing after retrying for 1s" in err

    assert main(_job(settings, "--pseudonymise_ids", "off")) == 1
    err = _one_line(capsys)
    assert err.startswith("fraudstream run: the pipeline failed: cannot reach the emulators")
    assert "read states from table 'unreachable-states'" in err


def test_a_worker_stops_on_an_unreachable_store_after_its_budget(tmp_path, monkeypatch):
    from google.api_core import exceptions as gexc

    settings = _unreachable(tmp_path, monkeypatch)
    table = _table(settings)
    with pytest.raises(gexc.RetryError, match="still failing after retrying for 1s") as raised:
        table.read(CUSTOMER, 1)
    assert isinstance(raised.value.cause, gexc.ServiceUnavailable | gexc.DeadlineExceeded)
