"""Clients, tables and retries of the Bigtable online store.

The retry policy is tested on stand-in calls; table creation and deletion on the real
emulator; an emulator that is not there on a port where nothing listens.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from uuid import uuid4

import pytest
from google.api_core import exceptions as gexc

from streaming.local import emulators as emu
from streaming.store.bigtable import admin
from streaming.store.bigtable.online_store import BigtableOnlineStoreConfig

pytestmark = pytest.mark.filterwarnings("ignore:Connecting to Bigtable emulator:RuntimeWarning")


def _failing(*errors: Exception, result: object = "done") -> tuple[Callable[[], object], list]:
    """A call that raises ``errors`` one per call, then returns ``result``; and its call log."""
    calls: list[int] = []

    def call() -> object:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return call, calls


# --------------------------------------------------------------------------- retry policy


def test_unavailable_and_deadline_exceeded_are_retried_until_the_call_succeeds():
    call, calls = _failing(gexc.ServiceUnavailable("down"), gexc.DeadlineExceeded("slow"))
    assert admin.call_with_retries(call, "read table t", budget_s=30.0) == "done"
    assert len(calls) == 3


def test_other_errors_are_raised_at_once():
    call, calls = _failing(gexc.NotFound("no table"))
    with pytest.raises(gexc.NotFound, match="no table"):
        admin.call_with_retries(call, "read table t", budget_s=30.0)
    assert len(calls) == 1


def test_a_spent_budget_raises_an_error_naming_the_operation():
    down = gexc.ServiceUnavailable("connection refused")
    call, calls = _failing(*[down] * 10_000)
    with pytest.raises(gexc.RetryError) as raised:
        admin.call_with_retries(call, "create table t (instance 'i')", budget_s=0.3)
    message = str(raised.value)
    assert "create table t (instance 'i')" in message
    assert "0.3s (online_store.operation_timeout_s)" in message
    assert "connection refused" in message
    assert raised.value.cause is down
    assert len(calls) >= 2  # the first backoff (≤ 0.1 s) fits the budget


def test_the_policy_is_api_cores_retry_with_the_budget_as_timeout():
    from google.api_core.retry import Retry

    policy = admin.retry_policy(12.0)
    assert isinstance(policy, Retry) and policy.timeout == 12.0


# --------------------------------------------------------------------------- emulator host


def _settings(**overrides: object) -> BigtableOnlineStoreConfig:
    fields = {"project_id": emu.DEFAULT_PROJECT, "instance": emu.DEFAULT_BIGTABLE_INSTANCE,
              "operation_timeout_s": 30.0, "attempt_timeout_s": 5.0}  # fmt: skip
    fields.update(overrides)
    return BigtableOnlineStoreConfig(**fields)


def test_the_emulator_host_must_agree_with_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(admin.EMULATOR_ENV, "127.0.0.1:1")
    with pytest.raises(ValueError, match=r"emulator_host is '127.0.0.1:2' but \$BIGTABLE"):
        admin.TableAdmin(_settings(emulator_host="127.0.0.1:2"))


def test_the_emulator_host_is_exported_when_the_environment_has_none(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv(admin.EMULATOR_ENV, raising=False)
    assert admin.endpoint(_settings()) == "instance 'demo-instance' on Cloud Bigtable"
    with admin.emulator(_settings(emulator_host="127.0.0.1:2")):
        pass
    assert admin.endpoint(_settings()) == "instance 'demo-instance' on emulator 127.0.0.1:2"
    assert os.environ[admin.EMULATOR_ENV] == "127.0.0.1:2"  # monkeypatch restores it after


@pytest.fixture
def nothing_listening(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``host:port`` of a bound port with no listener (connections are refused), set as the
    emulator's address for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setenv(admin.EMULATOR_ENV, address)
        yield address


def test_an_unavailable_emulator_is_retried_within_the_budget_then_named(
    nothing_listening: str, caplog: pytest.LogCaptureFixture
):
    settings = _settings(emulator_host=nothing_listening, operation_timeout_s=2.0,
                         attempt_timeout_s=0.5)  # fmt: skip
    tables = admin.TableAdmin(settings)
    caplog.set_level(logging.DEBUG, logger=admin.__name__)
    with pytest.raises(gexc.RetryError) as raised:
        tables.ensure("t-packed", "f")
    message = str(raised.value)
    assert f"read table 't-packed' (instance 'demo-instance' on emulator {nothing_listening})" in (
        message
    )
    assert "retrying for 2s (online_store.operation_timeout_s)" in message
    assert isinstance(raised.value.cause, admin.RETRYABLE)
    attempts = [r for r in caplog.records if r.getMessage().startswith("attempt failed")]
    assert len(attempts) >= 2  # every failed attempt is logged, the last one included


# --------------------------------------------------------------------------- on the emulator


def _instance():
    from google.cloud import bigtable

    client = bigtable.Client(project=emu.DEFAULT_PROJECT, admin=True)
    return client.instance(emu.DEFAULT_BIGTABLE_INSTANCE)


def test_ensure_creates_a_table_once_and_delete_removes_it(bigtable_emulator):
    tables = admin.TableAdmin(_settings())
    table_id = f"admin-{uuid4().hex[:8]}"
    assert tables.ensure(table_id, "f") is True
    assert tables.ensure(table_id, "f") is False  # there already
    families = _instance().table(table_id).list_column_families()
    assert set(families) == {"f"}
    assert families["f"].gc_rule.to_pb().max_num_versions == 1
    assert tables.delete(table_id) is True
    assert not _instance().table(table_id).exists()
    assert tables.delete(table_id) is False


def test_ensure_adds_the_family_a_table_lacks(bigtable_emulator):
    table_id = f"admin-{uuid4().hex[:8]}"
    _instance().table(table_id).create()
    tables = admin.TableAdmin(_settings())
    assert tables.ensure(table_id, "f") is False
    assert set(_instance().table(table_id).list_column_families()) == {"f"}
    tables.delete(table_id)
