"""The emulator lifecycle against the real gcloud emulators.

Tests that use an emulator fixture are marked ``emulator`` by tests/conftest.py; the rest
(stale state, CLI without gcloud) need no emulator and always run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streaming.cli import main
from streaming.local import emulators as emu

pytestmark = pytest.mark.filterwarnings(
    "ignore:Connecting to Bigtable emulator:RuntimeWarning"  # emitted by every bigtable.Client
)


def _bigtable_instance():
    from google.cloud import bigtable

    client = bigtable.Client(project=emu.DEFAULT_PROJECT, admin=True)
    return client.instance(emu.DEFAULT_BIGTABLE_INSTANCE)


def _write_and_read(instance, table_id: str) -> dict[str, dict[bytes, list[bytes]]]:
    """Create ``table_id`` with family ``cf``, write one row, return that row's cells."""
    from google.cloud.bigtable import column_family

    table = instance.table(table_id)
    table.create(column_families={"cf": column_family.MaxVersionsGCRule(1)})
    row = table.direct_row(b"customer#42")
    row.set_cell("cf", b"amount_sum_7d", b"12.50")
    row.set_cell("cf", b"nb_tx_7d", (3).to_bytes(8, "big"))
    row.commit()
    read = table.read_row(b"customer#42")
    assert read is not None
    return {
        family: {column: [cell.value for cell in cells] for column, cells in columns.items()}
        for family, columns in read.cells.items()
    }


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _cli(*argv: str) -> int:
    return main(["emulators", *argv])


def test_pubsub_publish_and_pull(
    pubsub_emulator: emu.EmulatorInfo, unique_name: Callable[[str], str]
) -> None:
    from google.cloud import pubsub_v1

    assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_emulator.address
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(emu.DEFAULT_PROJECT, unique_name("tx"))
    publisher.create_topic(name=topic)
    with pubsub_v1.SubscriberClient() as subscriber:
        subscription = subscriber.subscription_path(emu.DEFAULT_PROJECT, unique_name("tx-sub"))
        subscriber.create_subscription(name=subscription, topic=topic)
        sent = [(f'{{"tx": {i}}}'.encode(), {"seq": str(i), "kind": "tx"}) for i in range(3)]
        futures = [publisher.publish(topic, data, **attrs) for data, attrs in sent]
        assert len({future.result(timeout=30) for future in futures}) == 3

        received = []
        deadline = time.monotonic() + 30
        while len(received) < 3 and time.monotonic() < deadline:
            response = subscriber.pull(subscription=subscription, max_messages=10, timeout=10)
            if response.received_messages:
                ack_ids = [m.ack_id for m in response.received_messages]
                subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids)
            received += [
                (m.message.data, dict(m.message.attributes)) for m in response.received_messages
            ]
        subscriber.delete_subscription(subscription=subscription)
    publisher.delete_topic(topic=topic)
    publisher.stop()

    assert sorted(received, key=lambda item: item[1]["seq"]) == sent


def test_bigtable_write_and_read(
    bigtable_emulator: emu.EmulatorInfo, unique_name: Callable[[str], str]
) -> None:
    assert os.environ["BIGTABLE_EMULATOR_HOST"] == bigtable_emulator.address
    instance = _bigtable_instance()
    table_id = unique_name("features")

    cells = _write_and_read(instance, table_id)

    assert cells == {"cf": {b"amount_sum_7d": [b"12.50"], b"nb_tx_7d": [(3).to_bytes(8, "big")]}}
    assert instance.table(table_id).read_row(b"customer#unknown") is None
    assert table_id in {table.table_id for table in instance.list_tables()}


def test_status_reports_both_running(
    emulators: dict[str, emu.EmulatorInfo], emulator_state_dir: Path
) -> None:
    current = emu.status(emulator_state_dir)

    assert set(current) == {"pubsub", "bigtable", "gcs"}
    for name in emulators:  # the fixture starts Pub/Sub and Bigtable
        info = current[name]
        assert info is not None
        assert (info.name, info.host, info.port) == (name, "127.0.0.1", emulators[name].port)
        assert info.address == f"127.0.0.1:{info.port}"
        assert os.environ[info.env_var] == info.address
        assert _group_alive(info.pid)
    assert emu.env_for({n: current[n] for n in emulators}) == {
        "PUBSUB_EMULATOR_HOST": current["pubsub"].address,
        "BIGTABLE_EMULATOR_HOST": current["bigtable"].address,
        "PUBSUB_PROJECT_ID": "demo-project",
    }


def test_start_returns_the_running_emulator(
    bigtable_emulator: emu.EmulatorInfo, emulator_state_dir: Path
) -> None:
    again = emu.start("bigtable", emulator_state_dir)

    assert again == emu.status(emulator_state_dir)["bigtable"]
    assert again.port == bigtable_emulator.port


def test_restart_bigtable_keeps_the_port(
    bigtable_emulator: emu.EmulatorInfo,
    emulator_state_dir: Path,
    unique_name: Callable[[str], str],
) -> None:
    before = emu.status(emulator_state_dir)["bigtable"]
    assert before is not None
    old_table = unique_name("before")
    _write_and_read(_bigtable_instance(), old_table)

    after = emu.restart("bigtable", emulator_state_dir)

    assert after.port == before.port
    assert after.pid != before.pid
    assert not _group_alive(before.pid)
    assert emu.status(emulator_state_dir)["bigtable"] == after
    instance = _bigtable_instance()
    cells = _write_and_read(instance, unique_name("after"))
    assert cells["cf"][b"amount_sum_7d"] == [b"12.50"]
    # The emulator keeps everything in memory: tables from before the restart are gone.
    assert old_table not in {table.table_id for table in instance.list_tables()}


def test_restart_after_a_crash_reuses_the_port(
    bigtable_emulator: emu.EmulatorInfo,
    emulator_state_dir: Path,
    unique_name: Callable[[str], str],
) -> None:
    crashed = emu.start("bigtable", emulator_state_dir)
    os.killpg(crashed.pid, signal.SIGKILL)

    after = emu.restart("bigtable", emulator_state_dir)

    assert after.port == bigtable_emulator.port
    assert after.pid != crashed.pid
    cells = _write_and_read(_bigtable_instance(), unique_name("crash"))
    assert cells["cf"][b"nb_tx_7d"] == [(3).to_bytes(8, "big")]


def test_cli_up_status_down_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = emu.gcloud_available(("bigtable",))
    if reason is not None:
        pytest.skip(reason)
    state_dir = str(tmp_path / "state")
    try:
        assert _cli("up", "--only", "bigtable", "--state-dir", state_dir) == 0
        exports = capsys.readouterr().out.splitlines()
        info = emu.status(Path(state_dir))["bigtable"]
        assert info is not None
        assert f"export BIGTABLE_EMULATOR_HOST={info.address}" in exports
        assert _cli("status", "--only", "bigtable", "--state-dir", state_dir) == 0
        assert "running on" in capsys.readouterr().out
    finally:
        stopped_first = emu.stop("bigtable", Path(state_dir))
    assert stopped_first
    assert not _group_alive(info.pid)
    assert not (Path(state_dir) / "bigtable.json").exists()
    assert emu.stop("bigtable", Path(state_dir)) is False
    assert _cli("down", "--state-dir", state_dir) == 0
    assert _cli("status", "--state-dir", state_dir) == 3


def test_stale_state_file_is_reported_stopped_and_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state_file = tmp_path / "bigtable.json"
    state_file.write_text(
        json.dumps({"name": "bigtable", "pid": dead.pid, "host": "127.0.0.1", "port": 1})
    )

    assert emu.status(tmp_path) == {"pubsub": None, "bigtable": None, "gcs": None}
    assert not state_file.exists()
    state_file.write_text("{not json")
    assert emu.stop("bigtable", tmp_path) is False
    assert not state_file.exists()
    assert emu.stop("bigtable", tmp_path) is False


def test_gcloud_available_explains_a_missing_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    assert emu.gcloud_available() == "gcloud not found on PATH (install the Google Cloud SDK)"


def test_state_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(emu.STATE_DIR_ENV, raising=False)
    assert emu.resolve_state_dir() == tmp_path / ".emulators"
    monkeypatch.setenv(emu.STATE_DIR_ENV, "elsewhere")
    assert emu.resolve_state_dir() == tmp_path / "elsewhere"
    assert emu.resolve_state_dir(Path("/x/y")) == Path("/x/y")
    with pytest.raises(ValueError, match="unknown emulator 'redis'"):
        emu.start("redis", tmp_path)


def test_the_gcs_emulator_starts_answers_and_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``emulators up --only gcs`` exports the URL google-cloud-storage wants; a bucket and an
    object round-trip through it; ``down`` ends its process group."""
    from google.cloud import storage

    state_dir = str(tmp_path / "state")
    try:
        assert _cli("up", "--only", "gcs", "--state-dir", state_dir) == 0
        info = emu.status(Path(state_dir))["gcs"]
        assert info is not None and info.host == "127.0.0.1"
        assert f"export STORAGE_EMULATOR_HOST=http://{info.address}" in capsys.readouterr().out
        client = storage.Client(
            project=emu.DEFAULT_PROJECT,
            client_options={"api_endpoint": f"http://{info.address}"},
            credentials=_anonymous(),
        )
        client.create_bucket("probe").blob("x").upload_from_string(b"42")
        assert client.bucket("probe").blob("x").download_as_bytes() == b"42"
    finally:
        assert _cli("down", "--only", "gcs", "--state-dir", state_dir) == 0
    assert not _group_alive(info.pid)


def _anonymous():
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()
