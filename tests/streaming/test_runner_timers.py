"""The local runner's timer scan: which stateful steps it skips."""

from __future__ import annotations

import time
from datetime import timedelta

import apache_beam as beam

from features import presets
from features.plan import EntityPlan
from streaming.job.arrival import _ChainLink
from streaming.job.event_time import _OrderedEntityState
from streaming.local.runner.timers import _declares_no_timers


def test_the_timer_scan_skips_stateful_steps_without_timers():
    spec = presets.BASELINE
    customer, terminal = spec.entities
    plan = EntityPlan.build(spec, customer)

    def applied(transform: beam.PTransform) -> object:
        return type("Applied", (), {"transform": transform})()

    day = timedelta(days=1)
    link = _ChainLink(spec, customer, day, (terminal,), time.time)
    assert _declares_no_timers(applied(beam.ParDo(link)))
    assert not _declares_no_timers(applied(beam.ParDo(_OrderedEntityState(plan, day))))
    assert not _declares_no_timers(applied(beam.Map(lambda x: x)))  # not stateful
    assert not _declares_no_timers(applied(beam.GroupByKey()))
