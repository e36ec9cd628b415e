"""``PseudonymiseIds``: keyed pseudonyms for card and terminal ids, resolved on the worker."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

from streaming.schema import Label, Transaction

MEMO_SIZE = 1 << 17
"""Pseudonyms a worker process remembers per entity (about 20 MB in all) before it starts
afresh: cards and terminals recur, and a dictionary hit costs a fortieth of an HMAC (3 µs)."""


class PseudonymiseIds:
    """Records (transactions or labels) -> the same with pseudonymised customer and terminal
    ids (:mod:`streaming.pseudonymise`), so clear card and terminal ids never reach the entity
    state, Bigtable, the scored sink or alerts. The job applies it as part of parsing
    (:class:`~streaming.job.parse.ParseAndValidate`), not as a step of its own: a step costs
    the runner per element.

    Picklable settings: the key is resolved on the worker (:meth:`on_worker`), from the Secret
    Manager version ``key_secret``, else ``$FRAUDSTREAM_ID_KEY``; it is never pickled into the
    pipeline. ``keep_clear``: transactions also carry their clear ids, for alerts."""

    def __init__(self, key_secret: str | None = None, keep_clear: bool = False) -> None:
        self.key_secret, self.keep_clear = key_secret, keep_clear

    def on_worker(self) -> WorkerPseudonyms:
        """This process's pseudonymiser of these settings (the key resolved, once a process)."""
        ids, customers, terminals = _worker_pseudonyms(self.key_secret)
        return WorkerPseudonyms(ids, customers, terminals, self.keep_clear)


@dataclasses.dataclass
class WorkerPseudonyms:
    """A worker's pseudonymiser: each id's pseudonym remembered by the process, up to
    :data:`MEMO_SIZE` per entity."""

    ids: Any
    customers: dict[int, int]
    terminals: dict[int, int]
    keep_clear: bool

    def __call__(self, record: Any) -> Any:
        customer = _remembered(self.customers, record.customer_id, self.ids.customer)
        terminal = _remembered(self.terminals, record.terminal_id, self.ids.terminal)
        # the job's two records are built directly: dataclasses.replace takes twice as long
        if type(record) is Transaction:
            clear = (record.customer_id, record.terminal_id) if self.keep_clear else None
            texts = record.text_ids
            if texts is not None:  # the pseudonyms stand for the card and terminal from here
                if clear is not None:
                    clear = (texts[1] or record.customer_id, texts[2] or record.terminal_id)
                texts = None if texts[0] is None else (texts[0], None, None)
            return Transaction(
                transaction_id=record.transaction_id,
                time_ns=record.time_ns,
                customer_id=customer,
                terminal_id=terminal,
                amount=record.amount,
                received_at=record.received_at,
                clear_ids=clear or record.clear_ids,
                lookups=record.lookups,
                text_ids=texts,
            )
        if type(record) is Label:
            return Label(
                transaction_id=record.transaction_id,
                customer_id=customer,
                terminal_id=terminal,
                time_ns=record.time_ns,
                label_time_ns=record.label_time_ns,
                fraud=record.fraud,
                received_at=record.received_at,
            )
        extra = {}
        if self.keep_clear and hasattr(record, "clear_ids"):
            extra["clear_ids"] = (record.customer_id, record.terminal_id)
        return dataclasses.replace(record, customer_id=customer, terminal_id=terminal, **extra)


_WORKER: dict[tuple[str | None, str | None, str | None], tuple[Any, dict, dict]] = {}
_WORKER_LOCK = threading.Lock()


def _worker_pseudonyms(key_secret: str | None) -> tuple[Any, dict[int, int], dict[int, int]]:
    """This process's :class:`~streaming.pseudonymise.Pseudonymiser` for ``key_secret`` (else
    the environment's key) and its remembered customer and terminal pseudonyms, shared by every
    instance of the parse steps: a runner may set up a copy per bundle (the DirectRunner does)
    or per thread, and each would otherwise resolve the key and start with nothing remembered."""
    from streaming.pseudonymise import ENV_KEY, ENV_KEY_SECRET, Pseudonymiser

    source = (key_secret, os.environ.get(ENV_KEY), os.environ.get(ENV_KEY_SECRET))
    with _WORKER_LOCK:
        found = _WORKER.get(source)
        if found is None:
            env = {ENV_KEY_SECRET: key_secret} if key_secret else None
            ids = Pseudonymiser.from_env(required=True, environ=env)  # on the worker
            found = _WORKER[source] = (ids, {}, {})
        return found


def _remembered(memo: dict[int, int], entity_id: int, pseudonym: Callable[[int], int]) -> int:
    """``pseudonym(entity_id)``, from ``memo`` when it holds it (emptied when full); ids that
    are not plain ints (``True`` equals 1 as a key) always go to ``pseudonym``."""
    if type(entity_id) is not int:
        return pseudonym(entity_id)
    out = memo.get(entity_id)
    if out is None:
        out = pseudonym(entity_id)
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[entity_id] = out
    return out
