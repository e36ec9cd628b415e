"""The process totals line: quiet adds, watched sources, and the stages' CPU time."""

from __future__ import annotations

import time

from streaming.job.common import ProcessTotals, StageCpu, parse_totals, stage_cpu_us


def test_quiet_adds_join_the_next_line_without_calling_for_one(caplog):
    totals = ProcessTotals(every_s=3600)  # the ticker thread sleeps through the test
    with caplog.at_level("INFO", logger="streaming.job.common"):
        totals.add("cpu_us_parse", 10, quiet=True)
        totals.flush()  # flush logs loud changes only
        assert "fraudstream totals:" not in caplog.text
        totals.tick()  # the ticker logs quiet ones
        assert parse_totals(caplog.text) == {"cpu_us_parse": 10}
        totals.tick()  # unchanged: no second line
        assert caplog.text.count("fraudstream totals:") == 1
        totals.add("cpu_us_parse", 5, quiet=True)
        totals.add("feature_lookups")  # loud, not due yet (a line was just logged)
        totals.flush()  # a loud change: logged, the quiet count with it
    assert parse_totals(caplog.text) == {"cpu_us_parse": 15, "feature_lookups": 1}


def test_watched_sources_are_read_at_each_line(caplog):
    totals = ProcessTotals(every_s=3600)
    calls = {"bigtable_mutate_rows": 0}

    def source() -> dict[str, int]:
        calls["bigtable_mutate_rows"] += 1
        return dict(calls)

    totals.watch(source)
    totals.watch(source)  # once only
    with caplog.at_level("INFO", logger="streaming.job.common"):
        totals.add("states_from_store")
        totals.add("states_from_store")
        totals.flush()
    assert parse_totals(caplog.text) == {"bigtable_mutate_rows": 2, "states_from_store": 2}


def test_stage_cpu_reports_whole_microseconds_per_bundle(monkeypatch):
    import streaming.job.common as common

    totals = ProcessTotals(every_s=3600)
    monkeypatch.setattr(common, "TOTALS", totals)
    clock = iter([1_000, 3_500, 10_000, 10_700])  # thread CPU ns at start/stop
    monkeypatch.setattr(common.time, "thread_time_ns", lambda: next(clock))
    cpu = StageCpu("score")
    started = cpu.start()
    cpu.stop(started)  # 2,500 ns
    cpu.report()
    assert totals.counts == {"cpu_us_score": 2}
    assert cpu.ns == 500  # the rest waits for the next report
    cpu.stop(cpu.start())  # 700 ns: 1,200 ns in all
    cpu.report()
    assert totals.counts == {"cpu_us_score": 3}
    cpu.report()  # nothing new: no add
    assert totals.counts == {"cpu_us_score": 3}


def test_stage_cpu_us_picks_the_cpu_totals():
    totals = {"cpu_us_score": 7, "cpu_us_terminal_features": 9, "feature_lookups": 3}
    assert stage_cpu_us(totals) == {"score": 7, "terminal_features": 9}


def test_the_first_add_is_logged_on_a_machine_just_booted(caplog, monkeypatch):
    monkeypatch.setattr(time, "monotonic", lambda: 5.0)  # up 5 s, less than every_s
    totals = ProcessTotals(every_s=60)
    with caplog.at_level("INFO", logger="streaming.job.common"):
        totals.add("feature_lookups")
    assert parse_totals(caplog.text) == {"feature_lookups": 1}
