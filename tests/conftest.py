"""Shared fixtures: the real emulators (once per session), unique names, the reference data.

Tests that use an emulator fixture get the ``emulator`` marker automatically, tests that use
``shared_data`` the ``reference`` marker, so ``-m "not emulator"`` selects the fast suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from streaming.local import emulators as emu
from streaming.local.gcs import anonymous_for_emulator

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_PRODUCER = REPO_ROOT / "tests" / "producers" / "node"
_EMULATOR_FIXTURES = {"emulators", "pubsub_emulator", "bigtable_emulator", "gcs_emulator"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the fixtures they use (the markers are declared in pyproject.toml)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _EMULATOR_FIXTURES:
            item.add_marker(pytest.mark.emulator)
        if "shared_data" in fixtures:
            item.add_marker(pytest.mark.reference)


@pytest.fixture(scope="session")
def emulator_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State directory (pid files, logs) of this session's emulators."""
    return tmp_path_factory.mktemp("emulators")


def _run_emulator(name: str, state_dir: Path) -> Iterator[emu.EmulatorInfo]:
    """Start ``name``, point the client libraries at it, stop it and restore os.environ."""
    reason = emu.gcloud_available((name,))
    if reason is not None:
        pytest.skip(reason)
    try:
        info = emu.start(name, state_dir)
    except BaseException:
        emu.stop(name, state_dir)  # start() cleans up after itself; this covers an interrupt
        raise
    env = emu.env_for({name: info})
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield info
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        emu.stop(name, state_dir)


@pytest.fixture(scope="session", autouse=True)
def in_process_runner_without_state_cache() -> Iterator[None]:
    """The in-process FnApiRunner keeps a 100 MB cache of user state and weighs each write with
    objsize, which walks every loaded module's globals: milliseconds a write in a test process
    (three quarters of a batch run of the job). Dataflow's workers run without that cache by
    default (``--max_cache_memory_usage_mb`` 0), and so do the tests' in-process runs."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    saved = worker_handlers.STATE_CACHE_SIZE_MB
    worker_handlers.STATE_CACHE_SIZE_MB = 0
    yield
    worker_handlers.STATE_CACHE_SIZE_MB = saved


@pytest.fixture(scope="session")
def pubsub_emulator(emulator_state_dir: Path) -> Iterator[emu.EmulatorInfo]:
    """The Pub/Sub emulator, with PUBSUB_EMULATOR_HOST set for the session."""
    yield from _run_emulator("pubsub", emulator_state_dir)


@pytest.fixture(scope="session")
def bigtable_emulator(emulator_state_dir: Path) -> Iterator[emu.EmulatorInfo]:
    """The Bigtable emulator, with BIGTABLE_EMULATOR_HOST set for the session.

    ``emu.restart("bigtable", emulator_state_dir)`` keeps the port (so the address stays
    valid) but changes the pid and empties the emulator.
    """
    yield from _run_emulator("bigtable", emulator_state_dir)


@pytest.fixture(scope="session")
def gcs_emulator(emulator_state_dir: Path) -> Iterator[emu.EmulatorInfo]:
    """The Cloud Storage emulator (in memory), with STORAGE_EMULATOR_HOST set for the session:
    google-cloud-storage and Beam's ``gs://`` file system then use it anonymously (Beam's at
    once, as ``fraudstream`` commands do: :func:`streaming.local.gcs.anonymous_for_emulator`)."""
    for info in _run_emulator("gcs", emulator_state_dir):
        anonymous_for_emulator()
        yield info


@pytest.fixture
def gcs_bucket(gcs_emulator: emu.EmulatorInfo, unique_name: Callable[[str], str]) -> str:
    """A new, empty bucket on the GCS emulator; its name (use ``gs://NAME/...``)."""
    from google.cloud import storage

    client = storage.Client(project=emu.DEFAULT_PROJECT)
    return client.create_bucket(unique_name("fraudstream")).name


@pytest.fixture(scope="session")
def emulators(
    pubsub_emulator: emu.EmulatorInfo, bigtable_emulator: emu.EmulatorInfo
) -> dict[str, emu.EmulatorInfo]:
    """Both emulators, by name."""
    return {"pubsub": pubsub_emulator, "bigtable": bigtable_emulator}


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """A factory of fresh resource names, ``prefix-1a2b3c4d``.

    The Pub/Sub emulator keeps routing a subscription's messages to stale streaming-pull
    clients even after the subscription is recreated, so never reuse a topic or subscription.
    """

    def make(prefix: str = "test") -> str:
        return f"{prefix}-{uuid4().hex[:8]}"

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference data directory (``../shared/data``, or $FRAUDSTREAM_SHARED_DATA)."""
    default = REPO_ROOT.parent / "shared" / "data"
    path = Path(os.environ.get("FRAUDSTREAM_SHARED_DATA") or default).resolve()
    if not path.is_dir():
        pytest.skip(f"reference data not found: {path} (set FRAUDSTREAM_SHARED_DATA)")
    if not (path / "transactions.parquet").is_file():
        pytest.skip(f"reference data incomplete: {path / 'transactions.parquet'} is missing")
    return path


@pytest.fixture(scope="session")
def node() -> str:
    """``node``, with the test producer's packages installed (``tests/producers/node``, ``npm
    ci``), or the test skips (no ``node`` or ``npm`` on PATH)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        reason = "node and npm not found on PATH: the Node.js producer tests need them"
        print(reason)
        pytest.skip(reason)
    modules = NODE_PRODUCER / "node_modules"
    if not all((modules / name).is_dir() for name in ("@google-cloud/pubsub", "avsc", "ajv")):
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_PRODUCER,
                                   capture_output=True, text=True, timeout=600)  # fmt: skip
        assert installed.returncode == 0, installed.stderr[-2000:]
    return node
