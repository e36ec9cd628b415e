"""Model-input drift: a reference profile of the training data and the PSI of a window against it.

The reference holds, per feature, bin edges cut at quantiles of the training values and the
share of training rows in each bin; NaN (a feature can be undefined) is a bin of its own, the
last one. The same is kept, optionally, for the model's scores. A window of rows is binned with
the same edges and compared by the Population Stability Index::

    PSI = sum_i (q_i - p_i) * ln(q_i / p_i)

``p_i`` the reference share of bin ``i``, ``q_i`` the window's. Both are floored at
:data:`EPSILON` (1e-4) before the sum, so an empty bin on either side gives a large but finite
term; a bin empty on both sides gives 0. No renormalisation after the floor.

The usual reading (:func:`classify`): PSI < 0.1 stable, 0.1 to 0.25 moderate shift,
>= 0.25 significant shift.

Counts are additive (:func:`bin_counts` of two batches summed equals that of their
concatenation), so a streaming combiner sums per-bin counts and calls :func:`psi_counts` at the
end of a window. Pure numpy; the file lives beside a model as ``drift_reference.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REFERENCE_FILE = "drift_reference.json"
DEFAULT_BINS = 10
EPSILON = 1e-4  # floor of a bin's share in the PSI sum
PSI_MODERATE = 0.1  # PSI >= this: moderate shift
PSI_SIGNIFICANT = 0.25  # PSI >= this: significant shift
STABLE, MODERATE, SIGNIFICANT = "stable", "moderate", "significant"


@dataclass(frozen=True)
class Reference:
    """Training-data profile: per feature its interior cut points and bin shares.

    ``edges[j]``: the sorted, unique cut points of feature ``j`` (at most ``bins - 1``): the
    interior training quantiles, or, for a feature with at most ``bins - 2`` distinct values
    (flags, counts, constants), each value plus the float just above the largest, so that every
    value has its own bin and values outside the training range land in the end bins. A finite
    value ``x`` falls in bin ``searchsorted(edges[j], x, side="right")``, so bin ``k`` is
    ``[edges[k-1], edges[k])``, the first and last finite bins open-ended; NaN falls in bin
    ``bins`` (the last column).
    ``proportions[j]``: ``bins + 1`` shares summing to 1 (bins a feature does not use are 0).
    ``score_edges`` / ``score_proportions``: the same for the model's scores, or None.
    """

    names: tuple[str, ...]
    bins: int
    edges: tuple[tuple[float, ...], ...]
    proportions: tuple[tuple[float, ...], ...]
    n_rows: int
    score_edges: tuple[float, ...] | None = None
    score_proportions: tuple[float, ...] | None = None
    n_scores: int = 0

    @property
    def has_scores(self) -> bool:
        return self.score_edges is not None

    def proportions_array(self) -> np.ndarray:
        """``(features, bins + 1)`` float array of the reference shares."""
        return np.asarray(self.proportions, dtype=np.float64).reshape(len(self.names), -1)

    def subset(self, names: list[str]) -> Reference:
        """The profile of ``names`` only, in that order; ValueError for a name it lacks."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise ValueError(f"drift reference has no profile of {missing}")
        pos = [self.names.index(n) for n in names]
        return replace(
            self,
            names=tuple(names),
            edges=tuple(self.edges[i] for i in pos),
            proportions=tuple(self.proportions[i] for i in pos),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": 1,
                "names": list(self.names),
                "bins": self.bins,
                "n_rows": self.n_rows,
                "edges": [list(e) for e in self.edges],
                "proportions": [list(p) for p in self.proportions],
                "n_scores": self.n_scores,
                "score_edges": None if self.score_edges is None else list(self.score_edges),
                "score_proportions": (
                    None if self.score_proportions is None else list(self.score_proportions)
                ),
                "epsilon": EPSILON,
                "thresholds": {MODERATE: PSI_MODERATE, SIGNIFICANT: PSI_SIGNIFICANT},
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Reference:
        d = json.loads(text)
        score_edges, score_props = d.get("score_edges"), d.get("score_proportions")
        ref = cls(
            names=tuple(d["names"]),
            bins=int(d["bins"]),
            edges=tuple(tuple(float(v) for v in e) for e in d["edges"]),
            proportions=tuple(tuple(float(v) for v in p) for p in d["proportions"]),
            n_rows=int(d["n_rows"]),
            score_edges=None if score_edges is None else tuple(float(v) for v in score_edges),
            score_proportions=None if score_props is None else tuple(float(v) for v in score_props),
            n_scores=int(d.get("n_scores", 0)),
        )
        if len(ref.edges) != len(ref.names) or len(ref.proportions) != len(ref.names):
            raise ValueError("drift reference: edges/proportions do not match the feature names")
        if any(len(p) != ref.bins + 1 for p in ref.proportions):
            raise ValueError(f"drift reference: every feature needs {ref.bins + 1} proportions")
        return ref


def _cuts(values: np.ndarray, bins: int) -> tuple[float, ...]:
    """Cut points of the finite ``values`` (empty if none): for a feature with at most
    ``bins - 2`` distinct values, each value and the float just above the largest (one bin per
    value, one below and one above the training range); else the unique interior quantiles."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return ()
    distinct = np.unique(finite.astype(np.float64))
    if distinct.size <= bins - 2:
        top = np.nextafter(distinct[-1], np.inf)
        return (*(float(v) for v in distinct), float(top))
    qs = np.quantile(finite.astype(np.float64), np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return tuple(float(v) for v in np.unique(qs))


def bin_index(cuts: np.ndarray, values: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each value against one feature's ``cuts`` (``Reference.edges[j]``):
    ``0 .. len(cuts)`` for finite values (±inf in the end bins), ``bins`` for NaN."""
    values = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(cuts, values, side="right")
    idx[np.isnan(values)] = bins
    return idx


def _counts_1d(cuts: tuple[float, ...], values: np.ndarray, bins: int) -> np.ndarray:
    idx = bin_index(np.asarray(cuts, dtype=np.float64), values, bins)
    return np.bincount(idx, minlength=bins + 1).astype(np.int64)


def reference_profile(
    X: np.ndarray, names: list[str], bins: int = DEFAULT_BINS, scores: np.ndarray | None = None
) -> Reference:
    """Profile the training matrix ``X`` (rows × ``names``), and ``scores`` when given."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"X has shape {X.shape}, expected (rows, {len(names)})")
    if X.shape[0] == 0:
        raise ValueError("cannot profile an empty training matrix")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    edges, props = [], []
    for j in range(X.shape[1]):
        cuts = _cuts(X[:, j], bins)
        counts = _counts_1d(cuts, X[:, j], bins)
        edges.append(cuts)
        props.append(tuple(float(v) for v in counts / counts.sum()))
    score_edges = score_props = None
    n_scores = 0
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if scores.size:
            score_edges = _cuts(scores, bins)
            counts = _counts_1d(score_edges, scores, bins)
            score_props = tuple(float(v) for v in counts / counts.sum())
            n_scores = int(scores.size)
    return Reference(
        names=tuple(names),
        bins=bins,
        edges=tuple(edges),
        proportions=tuple(props),
        n_rows=int(X.shape[0]),
        score_edges=score_edges,
        score_proportions=score_props,
        n_scores=n_scores,
    )


def bin_counts(reference: Reference, X: np.ndarray) -> np.ndarray:
    """``(features, bins + 1)`` int64 counts of the rows of ``X`` (columns in
    ``reference.names`` order) in the reference bins; additive across batches."""
    X = np.asarray(X)
    if X.ndim == 1 and len(reference.names) == X.shape[0]:
        X = X.reshape(1, -1)  # one row
    if X.ndim != 2 or X.shape[1] != len(reference.names):
        raise ValueError(f"X has shape {X.shape}, expected (rows, {len(reference.names)})")
    out = np.zeros((len(reference.names), reference.bins + 1), dtype=np.int64)
    for j, cuts in enumerate(reference.edges):
        out[j] = _counts_1d(cuts, X[:, j], reference.bins)
    return out


def score_bin_counts(reference: Reference, scores: np.ndarray) -> np.ndarray:
    """``(bins + 1,)`` int64 counts of ``scores`` in the reference's score bins."""
    if reference.score_edges is None:
        raise ValueError("this drift reference has no score profile")
    return _counts_1d(reference.score_edges, np.asarray(scores).ravel(), reference.bins)


def psi_counts(ref_props: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """PSI per row of ``counts`` against ``ref_props`` (same shape; 1-D for one distribution).

    Shares are ``counts / counts.sum()`` per row, both sides floored at :data:`EPSILON`. A row
    with no counts gives NaN (nothing to compare).
    """
    p = np.atleast_2d(np.asarray(ref_props, dtype=np.float64))
    c = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    if p.shape != c.shape:
        raise ValueError(f"reference shares {p.shape} and counts {c.shape} differ in shape")
    n = c.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.maximum(c / n, EPSILON)
    p = np.maximum(p, EPSILON)
    out = ((q - p) * np.log(q / p)).sum(axis=1)
    out[n[:, 0] == 0] = np.nan
    return out if np.ndim(counts) > 1 else out[0]


def psi(reference: Reference, X: np.ndarray) -> dict[str, float]:
    """PSI of each feature for the window of rows ``X`` (NaN where ``X`` has no rows)."""
    values = psi_counts(reference.proportions_array(), bin_counts(reference, X))
    return {name: float(v) for name, v in zip(reference.names, values, strict=True)}


def score_psi(reference: Reference, scores: np.ndarray) -> float:
    """PSI of the model scores of a window against the reference score distribution."""
    counts = score_bin_counts(reference, scores)
    return float(psi_counts(np.asarray(reference.score_proportions), counts))


def classify(value: float) -> str:
    """``"stable"`` (< 0.1), ``"moderate"`` (0.1 to < 0.25) or ``"significant"`` (>= 0.25).

    NaN (an empty window) reads as stable: there is nothing to alarm on."""
    if value is None or math.isnan(value) or value < PSI_MODERATE:
        return STABLE
    return MODERATE if value < PSI_SIGNIFICANT else SIGNIFICANT


def save_reference(reference: Reference, model_version_dir: str | Path) -> Path:
    """Write ``drift_reference.json`` into a registry version directory; returns its path.

    Written to a temporary name and renamed, so a reader never sees half a file."""
    path = Path(model_version_dir) / REFERENCE_FILE
    tmp = path.with_name(f".{REFERENCE_FILE}.tmp")
    tmp.write_text(reference.to_json() + "\n")
    tmp.replace(path)
    return path


def load_reference(model_version_dir: str | Path) -> Reference:
    """Read ``drift_reference.json`` of a version directory (a local path or a ``gs://`` URI);
    FileNotFoundError if there is none."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    path = FileSystems.join(str(model_version_dir), REFERENCE_FILE)
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"{path}: no drift reference for this model version")
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return Reference.from_json(f.read().decode())
