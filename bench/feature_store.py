"""Online feature store latency and throughput: Feast's stock Bigtable store, ours, the raw client.

All on one Bigtable emulator started here (stopped at the end), in the same run, the
measurements interleaved so a noisy machine disturbs each alike (stock reads in their own
loop, see :func:`_reads`). A read is a bundle of N entity
rows (a customer and a terminal each) for the preset's feature service (two views), as the
scorer asks; "raw" is one ``read_rows`` of the same row keys of our table (latest-cell filter)
with the same data client, parsing nothing; "ours" is ``FeatureStore.get_online_features`` on
our store, "adapter" the pipeline's reader (the same plus a float64 matrix). p99 is the
percentile of SAMPLES reads. Writes are bundles of 100 events (100 customer + 100 terminal
rows): "ours_feast" through ``FeatureStore.write_to_online_store``, "ours" the pipeline's
writer. Run alone: ``python -m bench.feature_store``.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features import presets
from streaming.local import emulators as emu
from streaming.store.base import EntityBatch
from streaming.store.feast_store import FeastFeatureStore, load_definitions
from streaming.store.names import EVENT_TIMESTAMP, stored_entities, view_name

SPEC = presets.DEFAULT
ENTITIES = 2_000  # per entity type
WRITE_BUNDLE = 100
SAMPLES = {1: 200, 100: 60}  # reads per size and store
WARM_UP = 5
OUR_STORE = "streaming.store.bigtable.online_store.BigtableOnlineStore"


def bench_feature_store() -> dict[str, float]:
    """Start an emulator, measure, stop it. Keys: ``<store>_read<N>_p50_ms`` / ``_p99_ms``,
    ``<store>_write_rows_per_s`` and ``feast_read100_vs_raw`` (ours through Feast / raw, p50).
    """
    with tempfile.TemporaryDirectory(prefix="bench-feature-store-") as tmp:
        root = Path(tmp)
        with emu.running("bigtable", root / "emulator"):
            return _measure(root)


def _store(tmp: Path, project: str, online: dict[str, Any]) -> Any:
    from feast import FeatureStore, RepoConfig

    config = RepoConfig(
        project=project,
        provider="local",
        registry=str(tmp / f"{project}.db"),
        online_store={
            "project_id": emu.DEFAULT_PROJECT,
            "instance": emu.DEFAULT_BIGTABLE_INSTANCE,
            **online,
        },
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )
    config.repo_path = tmp
    store = FeatureStore(config=config, repo_path=str(tmp))
    store.apply(load_definitions().definitions(SPEC))
    return store


def _measure(tmp: Path) -> dict[str, float]:
    import warnings

    warnings.filterwarnings("ignore", "Connecting to Bigtable emulator", RuntimeWarning)
    ours = _store(tmp, "bench_ours", {"type": OUR_STORE})
    stock = _store(tmp, "bench_stock", {"type": "bigtable"})
    adapter = FeastFeatureStore(ours, SPEC)
    out: dict[str, float] = {}
    out.update(_writes(ours, stock, adapter))
    out.update(_reads(ours, stock, adapter))
    out["feast_read100_vs_raw"] = round(out["ours_read100_p50_ms"] / out["raw_read100_p50_ms"], 3)
    out["stock_read100_vs_raw"] = round(out["stock_read100_p50_ms"] / out["raw_read100_p50_ms"], 3)
    return out


def _bundles(rng: np.random.Generator, ids: np.ndarray) -> list[EntityBatch]:
    now = np.datetime64(pd.Timestamp.now(tz="UTC").tz_localize(None), "ns")
    return [
        EntityBatch(
            e, ids, np.full(len(ids), now), rng.normal(size=(len(ids), len(SPEC.entity_names(e))))
        )
        for e in stored_entities(SPEC)
    ]


def _frames(batches: list[EntityBatch]) -> dict[str, pd.DataFrame]:
    frames = {}
    for b in batches:
        frame = pd.DataFrame(b.values, columns=SPEC.entity_names(b.entity))
        frame.insert(0, b.entity.key, b.ids)
        frame.insert(1, EVENT_TIMESTAMP, pd.to_datetime(b.event_times, utc=True))
        frames[view_name(SPEC, b.entity)] = frame
    return frames


def _writes(ours: Any, stock: Any, adapter: FeastFeatureStore) -> dict[str, float]:
    """Rows per second, bundles of WRITE_BUNDLE events, every entity of every type once."""
    from google.cloud.bigtable.data import RowMutationEntry, SetCell

    from streaming.store.bigtable.codec import pack, row_key, schema_tag

    rng = np.random.default_rng(0)
    bundles = [
        _bundles(rng, np.arange(start, start + WRITE_BUNDLE))
        for start in range(0, ENTITIES, WRITE_BUNDLE)
    ]
    frames = [_frames(b) for b in bundles]
    raw_table = ours._get_provider().online_store._table(ours.config)
    entries = []
    for bundle in bundles:
        entries.append([])
        for b in bundle:
            view = view_name(SPEC, b.entity)
            tag = schema_tag(SPEC.entity_names(b.entity))
            micros = b.event_times.astype("datetime64[us]").astype(np.int64)
            for i, t, row in zip(b.ids.tolist(), micros.tolist(), b.values, strict=True):
                cell = SetCell("f", view.encode(), pack(tag, t, row), t - t % 1000)
                entries[-1].append(RowMutationEntry(row_key([b.entity.key], [i]), [cell]))

    def feast_write(store: Any, frames_of_bundle: dict[str, pd.DataFrame]) -> None:
        for view, frame in frames_of_bundle.items():
            store.write_to_online_store(view, frame)

    ways: dict[str, Callable[[int], None]] = {
        "stock": lambda k: feast_write(stock, frames[k]),
        "ours_feast": lambda k: feast_write(ours, frames[k]),
        "ours": lambda k: adapter.write(bundles[k]),
        "raw": lambda k: raw_table.bulk_mutate_rows(entries[k]),
    }
    seconds = dict.fromkeys(ways, 0.0)
    for k in range(len(bundles)):
        for name, write in ways.items():
            t0 = time.perf_counter()
            write(k)
            seconds[name] += time.perf_counter() - t0
    rows = 2 * ENTITIES
    return {f"{name}_write_rows_per_s": round(rows / s) for name, s in seconds.items()}


def _reads(ours: Any, stock: Any, adapter: FeastFeatureStore) -> dict[str, float]:
    """Read latency percentiles; raw, ours and the adapter interleaved, stock in its own loop.

    Feast caches a read's resolved request in a module-level cache that it clears whenever
    the registry differs from the last call's: alternating two FeatureStores in one process
    would add ~10 ms to every call of both, which no deployment (one store) pays.
    """
    from google.cloud.bigtable.data import ReadRowsQuery
    from google.cloud.bigtable.data.row_filters import CellsColumnLimitFilter

    from streaming.store.bigtable.codec import row_key

    raw_table = ours._get_provider().online_store._table(ours.config)
    ours_service = ours.get_feature_service("model_inputs")
    stock_service = stock.get_feature_service("model_inputs")
    rng = np.random.default_rng(1)
    out: dict[str, float] = {}
    for n, samples in SAMPLES.items():
        draws = [
            (rng.choice(ENTITIES, n, replace=False), rng.choice(ENTITIES, n, replace=False))
            for _ in range(samples + WARM_UP)
        ]
        times: dict[str, list[float]] = {"raw": [], "ours": [], "adapter": [], "stock": []}
        for k, (customers, terminals) in enumerate(draws):
            rows = {"CUSTOMER_ID": customers.tolist(), "TERMINAL_ID": terminals.tolist()}
            keys = [row_key(["CUSTOMER_ID"], [i]) for i in rows["CUSTOMER_ID"]]
            keys += [row_key(["TERMINAL_ID"], [i]) for i in rows["TERMINAL_ID"]]
            query = ReadRowsQuery(row_keys=keys, row_filter=CellsColumnLimitFilter(1))
            calls = {
                "raw": lambda q=query: raw_table.read_rows(q),
                "ours": lambda r=rows: ours.get_online_features(ours_service, r),
                "adapter": lambda c=customers, t=terminals: adapter.read(
                    {"CUSTOMER_ID": c, "TERMINAL_ID": t}
                ),
            }
            order = list(calls)
            for name in order[k % 3 :] + order[: k % 3]:  # rotate: none always goes first
                _timed(calls[name], times[name], k >= WARM_UP)
        for k, (customers, terminals) in enumerate(draws):
            rows = {"CUSTOMER_ID": customers.tolist(), "TERMINAL_ID": terminals.tolist()}
            read = partial(stock.get_online_features, stock_service, rows)
            _timed(read, times["stock"], k >= WARM_UP)
        for name, values in times.items():
            ms = 1e3 * np.array(values)
            out[f"{name}_read{n}_p50_ms"] = round(float(np.percentile(ms, 50)), 2)
            out[f"{name}_read{n}_p99_ms"] = round(float(np.percentile(ms, 99)), 2)
    return out


def _timed(call: Callable[[], object], into: list[float], keep: bool) -> None:
    t0 = time.perf_counter()
    call()
    if keep:
        into.append(time.perf_counter() - t0)


if __name__ == "__main__":
    print(json.dumps(bench_feature_store(), indent=2))
