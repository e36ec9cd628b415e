"""``PseudonymiseIds``: keyed pseudonyms for card and terminal ids, resolved on the worker."""

from __future__ import annotations

import dataclasses
from typing import Any

import apache_beam as beam

from streaming.job.common import StageCpu


class _Pseudonymise(beam.DoFn):
    """Transactions and labels with keyed pseudonyms for their customer and terminal ids."""

    def __init__(self, key_secret: str | None, keep_clear: bool) -> None:
        self.key_secret, self.keep_clear = key_secret, keep_clear
        self.cpu = StageCpu("pseudonymise")

    def setup(self) -> None:
        from streaming.pseudonymise import ENV_KEY_SECRET, Pseudonymiser

        env = {ENV_KEY_SECRET: self.key_secret} if self.key_secret else None
        self.ids = Pseudonymiser.from_env(required=True, environ=env)  # on the worker

    def process(self, record: Any) -> tuple[Any]:
        started = self.cpu.start()
        customer = self.ids.customer(record.customer_id)
        terminal = self.ids.terminal(record.terminal_id)
        extra = {}
        if self.keep_clear and hasattr(record, "clear_ids"):
            extra["clear_ids"] = (record.customer_id, record.terminal_id)
        out = dataclasses.replace(record, customer_id=customer, terminal_id=terminal, **extra)
        self.cpu.stop(started)
        return (out,)

    def finish_bundle(self) -> None:
        self.cpu.report()


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
