"""Scoring with RunInference: one ``inplace_predict`` on one float32 array per batch.

The booster is loaded on the worker (:meth:`BoosterHandler.load_model`): boosters are not
picklable, so nothing model-related is captured when the pipeline is built.

Hot swap: the loaded "model" is a :class:`LiveModel`, which follows the registry's ``current``
pointer (a local path or ``gs://``, read through Beam's ``FileSystems``). At most every
``poll_s`` seconds a batch reads the pointer (one small object); when it names another version,
that version is loaded and checked against the preset, and the next rows are scored by it. A
version that does not load or does not match, or an unreadable pointer, is rejected with a
logged reason and the ``model_rejected`` counter, and the previous one keeps scoring.

Why not Beam's ``WatchFilePattern`` feeding RunInference's model-update side input: it emits
the newest file matching a pattern, so it would load each version as soon as its files appear,
before (and whether or not) the registry's gate promotes it, and it has no way to refuse a
broken version and keep the previous one. The registry's contract is the promoted pointer, so
the job polls that pointer; polling behaves the same on every runner.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from features import presets
from features.spec import FeatureSpec
from streaming.job.common import NAMESPACE, StageCpu
from streaming.job.entity_state import FeatureRow
from streaming.schema import Transaction
from training.model import contributions, detect_device, predict, shap_tables
from training.registry import ModelVersion, Registry, RegistryError

log = logging.getLogger(__name__)


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
    computed_at: float = 0.0  # processing time the features were assembled (FeatureRow's)


class LiveModel:
    """The registry's champion, following ``current`` (see the module docstring).

    Thread-safe: RunInference shares one loaded model between a worker's threads. The first
    load raises :class:`RegistryError` (no usable champion: the job cannot start); later ones
    only log, count and keep the previous version. A rejected target is not retried until
    ``current`` points elsewhere.
    """

    def __init__(
        self,
        model_dir: str | Path,
        spec: FeatureSpec,
        device: str,
        poll_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = Registry(model_dir, create=False)
        self.spec, self.device, self.poll_s, self.clock = spec, device, poll_s, clock
        self._lock = threading.Lock()
        self._target = self._current_target()
        self.model = self._load()
        self._next_check = clock() + poll_s
        self.swaps = Metrics.counter(NAMESPACE, "model_swaps")
        self.rejected = Metrics.counter(NAMESPACE, "model_rejected")

    def _current_target(self) -> str | None:
        return self.registry.current_version()

    def _load(self) -> ModelVersion:
        model = self.registry.load()
        model.check_spec(self.spec)
        # One thread per call: a job runs many bundles at once (Dataflow: a thread per core),
        # and a predict's OpenMP threads wait on each other whenever the cores are busy (a
        # 40-row batch took 0.2 ms alone and up to 25 ms beside two busy processes).
        model.booster.set_param({"device": self.device, "nthread": 1})
        tables = shap_tables(model.booster) if self.device == "cpu" else None
        if tables is not None:  # built and compiled here, not at the first alert
            tables.contributions(np.zeros((1, tables.n_features), np.float32))
        return model

    def get(self) -> ModelVersion:
        """The model to score the next batch with (re-checks ``current`` when a poll is due)."""
        if self.clock() >= self._next_check:
            with self._lock:
                if self.clock() >= self._next_check:
                    self._next_check = self.clock() + self.poll_s
                    self._follow()
        return self.model

    def _follow(self) -> None:
        try:
            target = self._current_target()
        except (RegistryError, OSError) as exc:  # an unreadable pointer: keep scoring
            self.rejected.inc()
            log.error("champion pointer unreadable, %s keeps scoring: %s", self.model.version, exc)
            return
        if target == self._target:
            return
        self._target = target
        try:
            model = self._load()
        except (RegistryError, OSError) as exc:
            self.rejected.inc()
            log.error("model at %s rejected, %s keeps scoring: %s", target, self.model.version, exc)
            return
        log.info("model swap: %s -> %s", self.model.version, model.version)
        self.model = model
        self.swaps.inc()


_LIVE: dict[tuple, LiveModel] = {}
_LIVE_LOCK = threading.Lock()


class BoosterHandler(ModelHandler[FeatureRow, Scored, LiveModel]):
    """Scores batches with the registry's champion, swapped live (:class:`LiveModel`).

    ``device``: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when XGBoost sees a GPU).
    ``max_batch_size`` caps the rows of one predict (512 by default: on 2 CPU cores rows/s is
    flat from ~256 rows; a GPU wants larger batches, see ``make bench-gpu``): the job's lists
    (a bundle's rows, :class:`Score`) are scored in chunks of it, and RunInference on single
    rows batches up to it.
    """

    def __init__(
        self,
        model_dir: str | Path,
        preset: str,
        threshold: float | None = None,
        top_k: int = 3,
        max_batch_size: int = 512,
        device: str = "cpu",
        poll_s: float = 10.0,
    ) -> None:
        super().__init__()
        if device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto, not {device!r}")
        self.model_dir, self.preset, self.threshold = str(model_dir), preset, threshold
        self.top_k, self.max_batch_size = top_k, max_batch_size
        self.device, self.poll_s = device, poll_s

    def load_model(self) -> LiveModel:
        """One :class:`LiveModel` per process and settings, shared by every DoFn instance (the
        DirectRunner builds a new one per bundle; RunInference only holds the model weakly)."""
        device = detect_device() if self.device == "auto" else self.device
        key = (os.path.realpath(self.model_dir), self.preset, device, self.poll_s)
        with _LIVE_LOCK:
            live = _LIVE.get(key)
            if live is None:
                live = _LIVE[key] = LiveModel(
                    self.model_dir, presets.get(self.preset), device, self.poll_s
                )
        return live

    def run_inference(
        self,
        batch: Sequence[FeatureRow],
        live: LiveModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[Scored]:
        return self.score(batch, live)

    def score(self, rows: Sequence[FeatureRow], live: LiveModel) -> list[Scored]:
        """``rows`` scored by ``live``'s model, in order, at most ``max_batch_size`` a call."""
        cpu = StageCpu("score")  # RunInference's DoFn is Beam's: timed per batch, here
        started = cpu.start()
        scored: list[Scored] = []
        for i in range(0, len(rows), self.max_batch_size):
            scored += self._score(rows[i : i + self.max_batch_size], live)
        cpu.stop(started)
        cpu.report()
        return scored

    def _score(self, batch: Sequence[FeatureRow], live: LiveModel) -> list[Scored]:
        model = live.get()
        X = np.ascontiguousarray(np.stack([r.features for r in batch]), np.float32)
        scores = predict(model.booster, X, live.device)
        threshold = model.threshold if self.threshold is None else self.threshold
        names = model.features
        # Reason codes (SHAP, several times the cost of a score) only for the rows that alert.
        alerting = np.flatnonzero(scores >= threshold)
        reasons: dict[int, tuple[tuple[str, float, float], ...]] = {}
        if len(alerting):
            contrib = contributions(model.booster, X[alerting], live.device)[:, :-1]
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
                computed_at=row.computed_at,
            )
            for i, row in enumerate(batch)
        ]

    def get_num_bytes(self, batch: Sequence[FeatureRow]) -> int:
        """The batch's feature bytes, for RunInference's byte metrics (Beam's default pickles
        the whole batch, transactions included: more CPU than scoring it)."""
        return sum(row.features.nbytes for row in batch)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_size}


class _Batches(ModelHandler[Sequence[FeatureRow], list[Scored], LiveModel]):
    """``handler`` on elements that are batches already (lists of rows): RunInference skips its
    own batching, and the prediction of a batch is the list of its rows' :class:`Scored`, one
    element downstream instead of one a row."""

    def __init__(self, handler: BoosterHandler) -> None:
        super().__init__()
        self.handler = handler

    def load_model(self) -> LiveModel:
        return self.handler.load_model()

    def run_inference(
        self,
        batch: Sequence[FeatureRow],
        live: LiveModel,
        inference_args: dict[str, Any] | None = None,
    ) -> list[list[Scored]]:
        return [self.handler.score(batch, live)]

    def get_num_bytes(self, batch: Sequence[FeatureRow]) -> int:
        return self.handler.get_num_bytes(batch)

    def should_skip_batching(self) -> bool:
        return True


class Score(beam.PTransform):
    """Lists of feature rows -> lists of :class:`Scored` (same rows, same order), through
    ``RunInference`` with :class:`BoosterHandler` (batches of up to its ``max_batch_size``)."""

    def __init__(self, handler: BoosterHandler) -> None:
        super().__init__()
        self.handler = handler

    def expand(self, batches):
        return batches | "RunInference" >> RunInference(_Batches(self.handler))
