"""Initial states from Bigtable (``run --initial_state store``): how fast a worker loads states,
and that its memory does not grow with the number of entities in the store.

On one Bigtable emulator started here (stopped at the end): two state tables written by the
bootstrap's writer, :data:`SMALL` and :data:`LARGE` cards, each a real exported state of the
``default`` preset (replayed from a synthetic history, reused round-robin) under random 62-bit
ids, as pseudonymised ids spread. A fresh worker process (``python -c``) opens each store the
way the job's workers do (``InitialStates(STORE, ...).lookup``) and reads the same
:data:`READ` cards, one read per card as on first sight; its peak RSS is reported, with the
same for a state file of each size (the file path loads the whole file into every worker).
``states_loaded_per_s`` is those per-card reads per second (after :data:`WARM_UP`);
``..._batched`` the same cards in one ReadRows. Run alone: ``python -m bench.state_store``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from features import presets
from features.spec import CUSTOMER
from features.synthetic import transactions
from features.table import validate
from streaming.local import emulators as emu

SPEC = presets.DEFAULT
SMALL, LARGE = 10_000, 100_000
"""Cards in the two stores."""
READ = 1_000
"""Cards a worker reads (the same in both stores)."""
WARM_UP = 50

_WORKER = """
import json, sys, time
from features import presets
from features.spec import CUSTOMER
from streaming.job.initial_states import STORE, InitialStates
from streaming.store.feast_store import StoreSettings

kind, source, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if kind == "store":  # source: the Feast repository
    initial = InitialStates(STORE, presets.DEFAULT, StoreSettings("emulator", source))
else:  # source: a state file
    initial = InitialStates(source, presets.DEFAULT)
lookup = initial.lookup(CUSTOMER)
t0 = time.perf_counter()
found = sum(lookup(i) is not None for i in ids)
seconds = time.perf_counter() - t0
status = open("/proc/self/status").read().split("VmHWM:")[1]  # ru_maxrss survives exec
peak_mb = int(status.split()[0]) / 1024
print(json.dumps({"found": found, "seconds": seconds, "peak_mb": peak_mb}))
"""


def bench_state_store() -> dict[str, float | int]:
    """Start an emulator, measure, stop it. Keys: ``states_loaded_per_s``,
    ``states_loaded_per_s_batched``, ``states_written_per_s``, ``worker_rss_mb_small_store``,
    ``worker_rss_mb_large_store`` and the same for files (``worker_rss_mb_*_file``)."""
    with tempfile.TemporaryDirectory(prefix="bench-state-store-") as tmp:
        root = Path(tmp)
        with emu.running("bigtable", root / "emulator"):
            return _measure(root)


def _measure(tmp: Path) -> dict[str, float | int]:
    from streaming.batch.bootstrap import replay_states, store_states, write_states
    from streaming.store.bigtable.states import StateTable
    from streaming.store.feast_store import StoreSettings, scratch_repo

    history = validate(transactions(n=20_000, customers=500, terminals=1_000, days=60), SPEC)
    blobs = list(replay_states(history, SPEC)[CUSTOMER].values())
    ids = np.random.default_rng(0).choice(2**62, LARGE, replace=False)
    read = ids[:READ].tolist()
    out: dict[str, float | int] = {"state_bytes_mean": int(np.mean([len(b) for b in blobs]))}
    for name, size in (("small", SMALL), ("large", LARGE)):
        states = {CUSTOMER: {int(k): blobs[i % len(blobs)] for i, k in enumerate(ids[:size])}}
        repo = scratch_repo(tmp / f"{name}_repo", f"bench_{name}")
        table = StateTable.of(StoreSettings("emulator", str(repo)).repo_config())
        t0 = time.perf_counter()
        store_states(table, states, SPEC, 0)
        if name == "large":
            out["states_written_per_s"] = round(size / (time.perf_counter() - t0))
            per_key, batched = _reads(table, read)
            out["states_loaded_per_s"] = per_key
            out["states_loaded_per_s_batched"] = batched
        write_states(tmp / f"{name}.parquet", states, SPEC, 0)
        out[f"worker_rss_mb_{name}_store"] = _worker("store", str(repo), read)
        out[f"worker_rss_mb_{name}_file"] = _worker("file", str(tmp / f"{name}.parquet"), read)
    return out


def _reads(table, keys: list[int]) -> tuple[int, int]:
    """Per-key reads per second (the job's first-sight path), and one ReadRows of them all."""
    for key in keys[:WARM_UP]:
        table.read(CUSTOMER, key)
    t0 = time.perf_counter()
    found = sum(table.read(CUSTOMER, key) is not None for key in keys)
    per_key = len(keys) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    found_batched = len(table.read_many(CUSTOMER, keys))
    batched = len(keys) / (time.perf_counter() - t0)
    if found != len(keys) or found_batched != len(keys):
        raise RuntimeError(f"read {found} and {found_batched} of {len(keys)} states")
    return round(per_key), round(batched)


def _worker(kind: str, source: str, keys: list[int]) -> float:
    """Peak RSS (MB) of a fresh process that opens ``source`` (``kind``: a ``store``'s Feast
    repository or a state ``file``) as a worker does and reads the states of ``keys``."""
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, kind, source, json.dumps(keys)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["found"] != len(keys):
        raise RuntimeError(f"{source}: the worker found {result['found']} of {len(keys)} states")
    return round(result["peak_mb"], 1)


if __name__ == "__main__":
    print(json.dumps(bench_state_store(), indent=2))
