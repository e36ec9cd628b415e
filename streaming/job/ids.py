"""``PseudonymiseIds``: keyed pseudonyms for card and terminal ids, resolved on the worker."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

import apache_beam as beam

from streaming.job.common import StageCpu

MEMO_SIZE = 1 << 17
"""Pseudonyms a worker process remembers per entity (about 20 MB in all) before it starts
afresh: cards and terminals recur, and a dictionary hit costs a fortieth of an HMAC (3 µs)."""


class _Pseudonymise(beam.DoFn):
    """Transactions and labels with keyed pseudonyms for their customer and terminal ids
    (each id's remembered by the process, up to :data:`MEMO_SIZE` per entity)."""

    def __init__(self, key_secret: str | None, keep_clear: bool) -> None:
        self.key_secret, self.keep_clear = key_secret, keep_clear
        self.cpu = StageCpu("pseudonymise")

    def setup(self) -> None:
        self.ids, self.customers, self.terminals = _worker_pseudonyms(self.key_secret)

    def process(self, record: Any) -> tuple[Any]:
        started = self.cpu.start()
        customer = _remembered(self.customers, record.customer_id, self.ids.customer)
        terminal = _remembered(self.terminals, record.terminal_id, self.ids.terminal)
        extra = {}
        if self.keep_clear and hasattr(record, "clear_ids"):
            extra["clear_ids"] = (record.customer_id, record.terminal_id)
        out = dataclasses.replace(record, customer_id=customer, terminal_id=terminal, **extra)
        self.cpu.stop(started)
        return (out,)

    def finish_bundle(self) -> None:
        self.cpu.report()


_WORKER: dict[tuple[str | None, str | None, str | None], tuple[Any, dict, dict]] = {}
_WORKER_LOCK = threading.Lock()


def _worker_pseudonyms(key_secret: str | None) -> tuple[Any, dict[int, int], dict[int, int]]:
    """This process's :class:`~streaming.pseudonymise.Pseudonymiser` for ``key_secret`` (else
    the environment's key) and its remembered customer and terminal pseudonyms, shared by every
    instance of the step: a runner may set up a copy per bundle (the DirectRunner does) or per
    thread, and each would otherwise resolve the key and start with nothing remembered."""
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


class PseudonymiseIds(beam.PTransform):
    """Records (transactions or labels) -> the same with pseudonymised customer and terminal
    ids (:mod:`streaming.pseudonymise`), so clear card and terminal ids never reach the entity
    state, Bigtable, the scored sink or alerts. The key is resolved on the worker: from the
    Secret Manager version ``key_secret``, else ``$FRAUDSTREAM_ID_KEY``; it is never pickled
    into the pipeline. ``keep_clear``: transactions also carry their clear ids, for alerts."""

    def __init__(self, key_secret: str | None = None, keep_clear: bool = False) -> None:
        super().__init__()
        self.key_secret, self.keep_clear = key_secret, keep_clear

    def expand(self, records):
        return records | "Pseudonymise" >> beam.ParDo(
            _Pseudonymise(self.key_secret, self.keep_clear)
        )
