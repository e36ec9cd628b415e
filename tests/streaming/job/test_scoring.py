"""``Score`` alone: feature rows -> the offline model's scores, reason codes for the rows at or
above the threshold only, everything else carried over from the row."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from apache_beam import Create
from apache_beam.testing.util import BeamAssertException, assert_that

from features.incremental import Status
from streaming.job.entity_state import FeatureRow
from streaming.job.scoring import BoosterHandler, Score
from tests.streaming.job.stages import SPEC, batch_pipeline, to_transactions
from tests.training.cupy_standin import StandInCupy
from training import model as models
from training.treeshap import ShapTables

TOP_K = 3


def _check_reasons(reasons: tuple, booster: xgb.Booster, x: np.ndarray) -> None:
    """``reasons`` are the row's ``TOP_K`` largest SHAP contributions by XGBoost's own
    ``pred_contribs`` (to float32 rounding: a near-tie may pick either), with the row's values
    (float64, as the row carries them), largest first."""
    contrib = booster.predict(xgb.DMatrix(x[None, :].astype(np.float32)), pred_contribs=True)
    contrib = contrib[0, :-1]
    chosen = [SPEC.names.index(name) for name, _, _ in reasons]
    assert len(chosen) == TOP_K == len(set(chosen))
    np.testing.assert_array_equal([r[1] for r in reasons], x[chosen])
    np.testing.assert_allclose([r[2] for r in reasons], contrib[chosen], rtol=0, atol=1e-5)
    assert [r[2] for r in reasons] == sorted((r[2] for r in reasons), reverse=True)
    assert contrib[chosen].min() >= np.sort(contrib)[-TOP_K] - 1e-5


def test_rows_get_the_offline_scores_and_reasons_above_the_threshold(
    world: tuple[pd.DataFrame, np.ndarray], model: tuple[xgb.Booster, Path]
) -> None:
    """Lists of rows in, a list of their scored rows (same order) out for each; the handler
    scores at most 16 rows a call. The threshold (overriding the model's) is the median score,
    so about half the rows alert."""
    df, X = world
    booster, root = model
    offline = models.predict(booster, X.astype(np.float32))
    threshold = float(np.median(offline))
    statuses = [Status.OK if i % 2 else Status.LATE for i in range(len(df))]
    rows = [
        FeatureRow(tx, x, int(status), computed_at=100.0 + i)
        for i, (tx, x, status) in enumerate(zip(to_transactions(df), X, statuses, strict=True))
    ]
    by_id = dict(zip(df["TRANSACTION_ID"].tolist(), range(len(df)), strict=True))

    batches = [rows[:40], rows[40:41], rows[41:]]  # more than one call each, and a single row
    sent = sorted([r.tx.transaction_id for r in b] for b in batches)

    def match(got: Iterable) -> None:
        got = list(got)
        if sorted([s.tx.transaction_id for s in b] for b in got) != sent:
            raise BeamAssertException("not one list per list, in the same order")
        scored = [s for b in got for s in b]
        if sorted(s.tx.transaction_id for s in scored) != sorted(by_id):
            raise BeamAssertException("not exactly one scored row per feature row")
        alerting = 0
        for s in scored:
            i = by_id[s.tx.transaction_id]
            row = rows[i]
            assert s.tx == row.tx and s.status == row.status and s.accepted
            assert s.computed_at == row.computed_at
            np.testing.assert_array_equal(s.features, row.features)
            assert (s.score, s.threshold, s.model_version) == (offline[i], threshold, "v0001")
            if s.score < threshold:
                assert s.reasons == (), s.tx.transaction_id
                continue
            alerting += 1
            _check_reasons(s.reasons, booster, X[i])
        assert 0 < alerting < len(scored), alerting

    handler = BoosterHandler(str(root), SPEC.name, threshold, top_k=TOP_K, max_batch_size=16)
    with batch_pipeline() as p:
        assert_that(p | Create(batches) | Score(handler), match)


def test_a_cuda_handler_sends_each_batch_to_the_device_once(
    world: tuple[pd.DataFrame, np.ndarray],
    model: tuple[xgb.Booster, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``device="cuda"``: the batch's float32 rows are copied to the GPU in one call (CuPy, a
    stand-in here: without a GPU XGBoost scores on the CPU) and score as offline."""
    df, X = world
    booster, root = model
    cupy = StandInCupy()
    monkeypatch.setattr(models, "cupy_module", lambda: cupy)
    handler = BoosterHandler(str(root), SPEC.name, device="cuda")
    txs = to_transactions(df)[:32]
    rows = [FeatureRow(tx, x, int(Status.OK)) for tx, x in zip(txs, X[:32], strict=True)]
    with warnings.catch_warnings():  # XGBoost's, without a GPU: it scores on the CPU
        warnings.simplefilter("ignore")
        scored = list(handler.run_inference(rows, handler.load_model()))
    (sent,) = cupy.sent
    np.testing.assert_array_equal(sent, X[:32].astype(np.float32))
    offline = models.predict(booster, X[:32].astype(np.float32))
    np.testing.assert_array_equal([s.score for s in scored], offline)


def test_a_cpu_handler_builds_the_models_shap_tables_when_it_loads_it(
    world: tuple[pd.DataFrame, np.ndarray],
    model: tuple[xgb.Booster, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tables (and their kernel's compilation) cost the load, not the first alert."""
    df, X = world
    _, root = model
    built: list[xgb.Booster] = []
    of = ShapTables.of
    monkeypatch.setattr(ShapTables, "of", classmethod(lambda cls, b: built.append(b) or of(b)))
    handler = BoosterHandler(str(root), SPEC.name, threshold=0.0, poll_s=1e9)
    monkeypatch.setattr("streaming.job.scoring._LIVE", {})  # a fresh load, not another test's
    live = handler.load_model()
    assert built == [live.model.booster]
    txs = to_transactions(df)[:8]
    rows = [FeatureRow(tx, x, int(Status.OK)) for tx, x in zip(txs, X[:8], strict=True)]
    scored = list(handler.run_inference(rows, live))
    assert all(len(s.reasons) == 3 for s in scored) and len(built) == 1


def test_the_loaded_model_predicts_on_one_thread(
    model: tuple[xgb.Booster, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's parallelism is across bundles: a predict's own threads only wait on busy
    cores."""
    _, root = model
    monkeypatch.setattr("streaming.job.scoring._LIVE", {})
    live = BoosterHandler(str(root), SPEC.name, device="cpu", poll_s=1e9).load_model()
    config = json.loads(live.model.booster.save_config())
    assert config["learner"]["generic_param"]["nthread"] == "1"
