"""The local runner's scheduling: element-wise steps never run on empty bundles, and nothing else
changes (outputs, windows, timers)."""

from __future__ import annotations

import collections

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct import executor as ex
from apache_beam.runners.direct.direct_runner import (
    BundleBasedDirectRunner,
    _StreamingGroupAlsoByWindow,
    _StreamingGroupByKeyOnly,
)
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate, window
from apache_beam.transforms.timeutil import TimeDomain

from streaming.local.runner.empty_bundles import skip_empty_bundles

BUNDLES: collections.Counter[str] = collections.Counter()  # DoFn copies share the module


class _Bundles(beam.DoFn):
    """Passes elements on; counts the bundles it starts under its name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start_bundle(self) -> None:
        BUNDLES[self.name] += 1

    def process(self, element):
        yield element


class _Fizz(beam.DoFn):
    """Multiples of 3 to ``fizz``; none of the test's values are multiples of 7 (``never``)."""

    def process(self, x):
        if x % 7 == 0:
            yield beam.pvalue.TaggedOutput("never", x)
        elif x % 3 == 0:
            yield beam.pvalue.TaggedOutput("fizz", x)
        else:
            yield x


_TOTAL = userstate.CombiningValueStateSpec("total", sum)
_DONE = userstate.TimerSpec("done", TimeDomain.WATERMARK)
_TOTAL_PARAM = beam.DoFn.StateParam(_TOTAL)
_DONE_PARAM = beam.DoFn.TimerParam(_DONE)


class _SumAtWatermark(beam.DoFn):
    """Per key, the sum of its values when the watermark passes the window's end (a timer)."""

    def process(self, kv, w=beam.DoFn.WindowParam, total=_TOTAL_PARAM, done=_DONE_PARAM):
        total.add(kv[1])
        done.set(w.end)

    @userstate.on_timer(_DONE)
    def emit(self, key=beam.DoFn.KeyParam, total=_TOTAL_PARAM):
        yield key, total.read()


def test_element_wise_steps_skip_empty_bundles_and_outputs_stay_whole():
    assert skip_empty_bundles()
    BUNDLES.clear()
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(0)
        .add_elements([window.TimestampedValue(x, x) for x in (1, 2, 3, 4)])
        .advance_watermark_to(15)
        .add_elements([window.TimestampedValue(x, x) for x in (16, 18, 20)])
        .advance_processing_time(5)
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=options) as p:
        values = p | stream | "Fixed" >> beam.WindowInto(window.FixedWindows(10))
        split = values | beam.ParDo(_Fizz()).with_outputs("fizz", "never", main="rest")
        never = split.never | "Never" >> beam.ParDo(_Bundles("never"))
        rest = split.rest | "Rest" >> beam.ParDo(_Bundles("rest"))
        merged = (never, split.fizz) | beam.Flatten() | "Merged" >> beam.ParDo(_Bundles("merged"))
        sums = (
            (rest, merged)
            | "All" >> beam.Flatten()
            | beam.Map(lambda x: (x % 2, x))
            | beam.GroupByKey()
            | beam.MapTuple(lambda parity, xs: (parity, sorted(xs)))
        )
        # Beam's runner fires a watermark timer once a later watermark advance arrives: the
        # first window's (the last window's timer is not fired at the end of a TestStream)
        first = rest | "First" >> beam.Filter(lambda x: x < 10)
        timed = first | "Key" >> beam.Map(lambda x: ("k", x)) | beam.ParDo(_SumAtWatermark())
        assert_that(sums, equal_to([(0, [2, 4]), (1, [1, 3]), (0, [16, 18]), (0, [20])]), "windows")
        assert_that(timed, equal_to([("k", 7)]), "timers")
    assert BUNDLES["never"] == 0  # its input never held an element
    assert BUNDLES["rest"] >= 1 and BUNDLES["merged"] >= 1


@pytest.mark.parametrize(
    ("transform", "element_wise"),
    [
        (beam.Map(lambda x: x), True),
        (beam.Flatten(), True),
        (_StreamingGroupByKeyOnly(), False),
        (_StreamingGroupAlsoByWindow(beam.WindowInto(window.GlobalWindows()).windowing), False),
        (test_stream.TestStream(), False),
    ],
)
def test_only_pardo_and_flatten_steps_count_as_element_wise(transform, element_wise):
    from apache_beam.runners.direct.transform_evaluator import TransformEvaluatorRegistry

    from streaming.local.runner.empty_bundles import _element_wise

    executor = object.__new__(ex._ExecutorServiceParallelExecutor)
    executor.transform_evaluator_registry = TransformEvaluatorRegistry(object())
    applied = type("Applied", (), {"transform": transform})()
    assert _element_wise(executor, applied) is element_wise
