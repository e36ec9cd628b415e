"""Clients, table lifecycle and retries of the Bigtable online store.

* :func:`data_client` and :class:`TableAdmin` build their clients under :func:`emulator`:
  ``emulator_host`` is exported as ``$BIGTABLE_EMULATOR_HOST`` (the only way the client library
  takes it) and must agree with a value already there.
* Admin RPCs (:meth:`TableAdmin.ensure`, :meth:`TableAdmin.delete`) retry UNAVAILABLE and
  DEADLINE_EXCEEDED with ``google.api_core``'s exponential :class:`~google.api_core.retry.Retry`
  (:func:`retry_policy`) within ``operation_timeout_s``, each attempt bounded by
  ``attempt_timeout_s``. Once the budget is spent they raise
  :class:`~google.api_core.exceptions.RetryError` naming the operation and the endpoint, the
  last error as its cause; other errors are raised at once.
* The data path retries the same errors (:data:`RETRYABLE`): feature writes through
  :mod:`.mutate` (:func:`call_with_retries`), reads and the state table through the data
  client's own ``retryable_errors``; :func:`final_cause` and :func:`missing_table` read what
  that raises.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type

logger = logging.getLogger(__name__)

RETRYABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded)
"""Errors worth another attempt: the server or the network may recover."""
EMULATOR_ENV = "BIGTABLE_EMULATOR_HOST"
FIRST_DELAY_S, LONGEST_DELAY_S = 0.1, 2.0
"""Backoff between attempts: up to 0.1 s after the first, doubling to at most 2 s."""

T = TypeVar("T")


class ClientSettings(Protocol):
    """What the clients read of the store's configuration."""

    project_id: str | None
    instance: str
    emulator_host: str | None
    operation_timeout_s: float
    attempt_timeout_s: float


def retry_policy(budget_s: float) -> Retry:
    """Retry UNAVAILABLE / DEADLINE_EXCEEDED with exponential backoff for ``budget_s``."""
    return Retry(
        predicate=if_exception_type(*RETRYABLE),
        initial=FIRST_DELAY_S,
        maximum=LONGEST_DELAY_S,
        multiplier=2.0,
        timeout=budget_s,
        on_error=lambda exc: logger.debug("attempt failed, retried within the budget: %s", exc),
    )


def call_with_retries(call: Callable[[], T], what: str, budget_s: float) -> T:
    """``call()`` under :func:`retry_policy`; a spent budget raises RetryError naming ``what``."""
    try:
        return retry_policy(budget_s)(call)()
    except gexc.RetryError as exc:
        raise gexc.RetryError(
            f"{what}: still failing after retrying for {budget_s:g}s "
            "(online_store.operation_timeout_s)",
            exc.cause,
        ) from exc


@contextlib.contextmanager
def emulator(settings: ClientSettings) -> Iterator[None]:
    """Point a client built inside at ``emulator_host`` and silence its "Connecting to Bigtable
    emulator" warning, expected here. ValueError if ``$BIGTABLE_EMULATOR_HOST`` disagrees."""
    host = settings.emulator_host
    current = os.environ.get(EMULATOR_ENV)
    if host is not None and current is None:
        os.environ[EMULATOR_ENV] = host  # kept: later clients of this process agree
    elif host is not None and current != host:
        raise ValueError(
            f"online_store.emulator_host is {host!r} but ${EMULATOR_ENV} is {current!r}; "
            "they must agree"
        )
    with warnings.catch_warnings():
        if os.environ.get(EMULATOR_ENV):
            warnings.filterwarnings("ignore", "Connecting to Bigtable emulator", RuntimeWarning)
        yield


def data_client(settings: ClientSettings) -> Any:
    """A ``BigtableDataClient`` of ``settings.project_id`` (the emulator's if one is set)."""
    from google.cloud.bigtable.data import BigtableDataClient

    with emulator(settings):
        return BigtableDataClient(project=settings.project_id)


def endpoint(settings: ClientSettings) -> str:
    """Where the clients connect, for messages: the emulator or the instance on Cloud."""
    host = os.environ.get(EMULATOR_ENV) or settings.emulator_host
    where = f"emulator {host}" if host else "Cloud Bigtable"
    return f"instance {settings.instance!r} on {where}"


class TableAdmin:
    """Creates and deletes tables of one instance; every RPC retried (see the module)."""

    def __init__(self, settings: ClientSettings) -> None:
        from google.cloud import bigtable

        with emulator(settings):
            client = bigtable.Client(project=settings.project_id, admin=True)
            self._rpc = client.table_admin_client
        self._parent = self._rpc.instance_path(client.project, settings.instance)
        self._budget_s = settings.operation_timeout_s
        self._attempt_s = settings.attempt_timeout_s
        self._where = endpoint(settings)

    def ensure(self, table_id: str, family: str) -> bool:
        """Create ``table_id`` with ``family`` (one version per cell) unless there; add
        ``family`` to an existing table that lacks it. True if the table was created."""
        from google.cloud.bigtable_admin_v2 import types

        name = self._table_path(table_id)
        family_pb = types.ColumnFamily(gc_rule=types.GcRule(max_num_versions=1))
        try:
            table = self._call("read", table_id, self._rpc.get_table, name=name)
        except gexc.NotFound:
            logger.info("creating Bigtable table %s", table_id)
            try:
                self._call(
                    "create",
                    table_id,
                    self._rpc.create_table,
                    parent=self._parent,
                    table_id=table_id,
                    table=types.Table(column_families={family: family_pb}),
                )
            except gexc.AlreadyExists:
                return False  # created concurrently, or by an attempt whose reply was lost
            return True
        if family not in table.column_families:
            add = types.ModifyColumnFamiliesRequest.Modification(id=family, create=family_pb)
            self._call(
                "add a column family to",
                table_id,
                self._rpc.modify_column_families,
                name=name,
                modifications=[add],
            )
        return False

    def delete(self, table_id: str) -> bool:
        """Delete ``table_id``; False if it was not there."""
        name = self._table_path(table_id)
        try:
            self._call("delete", table_id, self._rpc.delete_table, name=name)
        except gexc.NotFound:
            return False
        return True

    def _table_path(self, table_id: str) -> str:
        return f"{self._parent}/tables/{table_id}"

    def _call(self, verb: str, table_id: str, rpc: Callable[..., T], /, **request: Any) -> T:
        """One admin RPC: our retry policy around attempts of ``attempt_timeout_s`` each (the
        client's own default retry is off, so the budget is ours alone)."""
        attempt = functools.partial(rpc, request=request, retry=None, timeout=self._attempt_s)
        what = f"Bigtable: {verb} table {table_id!r} ({self._where})"
        return call_with_retries(attempt, what, self._budget_s)


def final_cause(failed: BaseException) -> BaseException | None:
    """What finally failed a mutation entry: its cause, or the last of its retried attempts."""
    from google.cloud.bigtable.data.exceptions import RetryExceptionGroup

    cause = failed.__cause__
    while isinstance(cause, RetryExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[-1]
    return cause


def missing_table(table_id: str, instance: str, project: str) -> LookupError:
    """The error of a read or write whose table is not there: run ``feast apply``."""
    return LookupError(
        f"Bigtable table {table_id!r} not found in instance {instance!r}: "
        f"run `feast apply` for project {project!r}"
    )
