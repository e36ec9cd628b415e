"""XGBoost training and scoring: device detection, class weighting, progress, a small grid."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import weakref
from dataclasses import asdict, dataclass
from types import ModuleType

import numpy as np
import xgboost as xgb
from tqdm import tqdm

from training.treeshap import ShapTables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Params:
    """Hyperparameters of one model (``scale_pos_weight`` is the class weighting)."""

    n_estimators: int = 300
    max_depth: int = 6
    learning_rate: float = 0.05
    scale_pos_weight: float = 5.0
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    min_child_weight: float = 1.0

    def booster_params(self, device: str) -> dict:
        params = asdict(self)
        params.pop("n_estimators")
        return {
            **params,
            "objective": "binary:logistic",
            "eval_metric": "aucpr",
            "tree_method": "hist",
            "device": device,
            "nthread": os.cpu_count() or 1,
        }


# Chosen among on a validation split carved from training time, never on the test week.
GRID: tuple[Params, ...] = (
    Params(),
    Params(
        n_estimators=500,
        max_depth=5,
        learning_rate=0.03,
        scale_pos_weight=10.0,
        subsample=0.8,
        colsample_bytree=0.8,
    ),
    Params(
        n_estimators=400,
        max_depth=8,
        learning_rate=0.05,
        scale_pos_weight=1.0,
        subsample=0.8,
        colsample_bytree=0.8,
    ),
    Params(n_estimators=200, max_depth=4, learning_rate=0.1, scale_pos_weight=20.0),
)


def detect_device() -> str:
    """``"cuda"`` when this XGBoost has CUDA and a GPU is visible, else ``"cpu"``.

    XGBoost only warns and falls back when asked for CUDA without a GPU, so ask first.
    ``FRAUDSTREAM_DEVICE`` overrides the choice.
    """
    forced = os.environ.get("FRAUDSTREAM_DEVICE")
    if forced:
        if forced not in ("cpu", "cuda"):
            raise ValueError(f"FRAUDSTREAM_DEVICE must be cpu or cuda, got {forced!r}")
        return forced
    if not xgb.build_info().get("USE_CUDA"):
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    has_gpu = os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None
    return "cuda" if has_gpu else "cpu"


class _Progress(xgb.callback.TrainingCallback):
    def __init__(self, total: int, desc: str) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="tree", leave=False)

    def after_iteration(self, model, epoch, evals_log) -> bool:
        self.bar.update()
        return False

    def after_training(self, model):
        self.bar.close()
        return model


def train(
    X: np.ndarray, y: np.ndarray, params: Params, device: str | None = None, desc: str = "train"
) -> xgb.Booster:
    """A booster for features ``X`` (float32) and labels ``y`` (0/1); logs the device used."""
    if len(y) == 0:
        raise ValueError("the training window holds no transaction")
    if y.min() == y.max():
        raise ValueError("the training window holds a single class (no fraud, or only fraud)")
    device = device or detect_device()
    log.info("training %d trees on %s rows with device=%s", params.n_estimators, len(y), device)
    data = xgb.QuantileDMatrix(np.ascontiguousarray(X, np.float32), label=y)
    booster = xgb.train(
        params.booster_params(device),
        data,
        num_boost_round=params.n_estimators,
        callbacks=[_Progress(params.n_estimators, desc)],
    )
    booster.set_attr(device=device)
    return booster


@functools.cache
def cupy_module() -> ModuleType | None:
    """CuPy when it is installed (the ``gpu`` extra) and sees a GPU, else None."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy if cupy.cuda.is_available() else None


@functools.cache
def _warn_no_cupy() -> None:
    log.warning(
        "device=cuda without CuPy seeing a GPU: XGBoost copies each batch through a DMatrix, "
        "several times slower than one copy (or scores on the CPU if it sees no GPU either); "
        "on a GPU machine install the 'gpu' extra: pip install 'fraudstream[gpu]'"
    )


def predict(booster: xgb.Booster, X: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Fraud probabilities for the rows of ``X`` (one ``inplace_predict`` call).

    ``device`` is where ``booster`` runs. On ``"cuda"`` the rows go to the GPU in one copy
    through CuPy, when installed: given host rows, XGBoost would build a DMatrix first, which
    at 64 k rows costs ten times the prediction (``make bench-gpu``).
    """
    rows = np.ascontiguousarray(X, np.float32)
    if device == "cuda":
        cupy = cupy_module()
        if cupy is not None:
            return cupy.asnumpy(booster.inplace_predict(cupy.asarray(rows))).astype(np.float64)
        _warn_no_cupy()
    return booster.inplace_predict(rows).astype(np.float64)


def contributions(booster: xgb.Booster, X: np.ndarray, device: str = "cpu") -> np.ndarray:
    """SHAP contributions per feature (last column: bias), shape (rows, features + 1), float32.

    On the CPU they come from the booster's :class:`~training.treeshap.ShapTables` (the same
    values as XGBoost's ``pred_contribs`` to float32 rounding, several times faster: ``make
    bench``), or from XGBoost where no tables can be built; on ``"cuda"`` from XGBoost's GPU
    TreeSHAP.
    """
    rows = np.ascontiguousarray(X, np.float32)
    tables = shap_tables(booster) if device != "cuda" else None
    if tables is not None:
        return tables.contributions(rows)
    return booster.predict(xgb.DMatrix(rows), pred_contribs=True)


_TABLES: weakref.WeakKeyDictionary[xgb.Booster, tuple[int, ShapTables | None]] = (
    weakref.WeakKeyDictionary()
)
_TABLES_LOCK = threading.Lock()


def shap_tables(booster: xgb.Booster) -> ShapTables | None:
    """The booster's TreeSHAP tables, built on first use and kept while it lives and keeps its
    trees (None: a model they cannot be built for, see :meth:`ShapTables.of`)."""
    rounds = booster.num_boosted_rounds()
    with _TABLES_LOCK:
        known = _TABLES.get(booster)
        if known is None or known[0] != rounds:
            known = _TABLES[booster] = (rounds, ShapTables.of(booster))
        return known[1]
