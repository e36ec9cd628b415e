"""Scoring with RunInference: one ``inplace_predict`` on one float32 array per batch.

The booster is loaded on the worker (:meth:`BoosterHandler.load_model`): boosters are not
picklable, so nothing model-related is captured when the pipeline is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference

from features import presets
from streaming.schema import Transaction
from streaming.transforms_features import FeatureRow
from training.model import contributions, predict
from training.registry import ModelVersion, Registry


@dataclass(frozen=True, slots=True)
class Scored:
    """A scored transaction. ``reasons`` (feature, value, SHAP contribution), largest first,
    are computed for alerting rows (score >= threshold) only; empty otherwise."""

    tx: Transaction
    score: float
    threshold: float
    model_version: str
    reasons: tuple[tuple[str, float, float], ...]
    status: int
    accepted: bool
    features: np.ndarray  # the model's inputs, in the model's order (for the scored sink)


class BoosterHandler(ModelHandler[FeatureRow, Scored, ModelVersion]):
    """Loads the registry's champion (checked against the preset) and scores batches."""

    def __init__(
        self,
        model_dir: str | Path,
        preset: str,
        threshold: float | None = None,
        top_k: int = 3,
        max_batch_size: int = 512,
    ) -> None:
        super().__init__()
        self.model_dir, self.preset, self.threshold = str(model_dir), preset, threshold
        self.top_k, self.max_batch_size = top_k, max_batch_size

    def load_model(self) -> ModelVersion:
        model = Registry(self.model_dir, create=False).load()
        model.check_spec(presets.get(self.preset))
        return model

    def run_inference(
        self,
        batch: Sequence[FeatureRow],
        model: ModelVersion,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[Scored]:
        X = np.ascontiguousarray(np.stack([r.features for r in batch]), np.float32)
        scores = predict(model.booster, X)
        threshold = model.threshold if self.threshold is None else self.threshold
        names = model.features
        # Reason codes (SHAP, ~50x the cost of a score) only for the rows that will alert.
        alerting = np.flatnonzero(scores >= threshold)
        reasons: dict[int, tuple[tuple[str, float, float], ...]] = {}
        if len(alerting):
            contrib = contributions(model.booster, X[alerting])[:, :-1]
            top = np.argsort(-contrib, axis=1, kind="stable")[:, : self.top_k]
            for k, i in enumerate(alerting):
                row = batch[i].features
                reasons[int(i)] = tuple(
                    (names[j], float(row[j]), float(contrib[k, j])) for j in top[k]
                )
        return [
            Scored(
                tx=row.tx,
                score=float(scores[i]),
                threshold=threshold,
                model_version=model.version,
                reasons=reasons.get(i, ()),
                status=row.status,
                accepted=row.accepted,
                features=row.features,
            )
            for i, row in enumerate(batch)
        ]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_size}


class Score(beam.PTransform):
    """Feature rows -> :class:`Scored` through ``RunInference`` with :class:`BoosterHandler`."""

    def __init__(self, handler: BoosterHandler) -> None:
        super().__init__()
        self.handler = handler

    def expand(self, rows):
        return rows | "RunInference" >> RunInference(self.handler)
