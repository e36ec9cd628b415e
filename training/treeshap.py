"""Exact TreeSHAP for an XGBoost booster on the CPU, from tables built once per model.

XGBoost's CPU ``pred_contribs`` runs TreeSHAP's recursion for every row: about 450 µs a row for
50 trees of depth 6 on the dev VM, 2.8 ms for 300, which is the reason codes' cost in the
streaming job. The values are the same sums over each leaf's path (Lundberg et al., "Consistent
individualized feature attribution for tree ensembles", Algorithm 2), and a row enters them only
through which of the path's conditions it meets: one bit per distinct feature on the path. So
:class:`ShapTables` computes, once per model, each leaf's contribution to each of its features
for every combination of those bits (the "Fast TreeSHAP v2" idea, Yang 2021); a row then costs
one comparison per split and one table row per leaf.

Contributions equal XGBoost's up to float32 rounding (XGBoost sums in float32): the tests check
them against ``pred_contribs`` on trained models with missing values and repeated features.
Multi-output, dart and categorical models are not covered (:meth:`ShapTables.of` returns None),
nor are models whose tables would exceed :data:`MAX_TABLE_BYTES`;
:func:`training.model.contributions` then uses XGBoost's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import xgboost as xgb
from numba import njit

MAX_TABLE_BYTES = 512 * 2**20
"""Tables larger than this (deep trees: a leaf of depth d has 2^d rows) are not built."""


@dataclass(frozen=True)
class ShapTables:
    """A booster's trees as flat arrays (a node's parent precedes it, as XGBoost numbers them),
    and each leaf's contributions for every pattern of conditions its path meets."""

    n_features: int
    bias: float
    """The contributions' last column (the model's expected margin), the same for every row."""
    tree_nodes: np.ndarray  # int64 (trees + 1): each tree's first node
    parent: np.ndarray  # int32 per node: its parent's index in its tree (-1: the root)
    feature: np.ndarray  # int32 per node (-1: a leaf)
    split: np.ndarray  # float32 per node: a row goes left if its value is below
    default_left: np.ndarray  # bool per node: where a missing value goes
    is_left: np.ndarray  # bool per node: whether it is its parent's left child
    element: np.ndarray  # int64 per node: the bit of its parent's feature on its path
    tree_splits: np.ndarray  # int64 (trees + 1): each tree's first entry in ``splits``
    splits: np.ndarray  # int32: the split nodes, tree by tree, parents first
    tree_leaves: np.ndarray  # int64 (trees + 1): each tree's first entry in ``leaves``
    leaves: np.ndarray  # int32: the leaves, tree by tree
    leaf_bits: np.ndarray  # int64 per leaf: 2^d - 1 for the d distinct features of its path
    leaf_table: np.ndarray  # int64 per leaf: where its 2^d rows of ``width`` start in ``table``
    leaf_features: np.ndarray  # int32 (leaves, width): its distinct features, then the bias
    table: np.ndarray  # float32 (summed in float64); a leaf's padding columns hold zeros

    @classmethod
    def of(cls, booster: xgb.Booster) -> ShapTables | None:
        """The tables of ``booster``; None unless it is a single-output ``gbtree`` model with
        numerical splits whose tables fit in :data:`MAX_TABLE_BYTES`."""
        learner = json.loads(booster.save_raw("json"))["learner"]
        outputs = learner["learner_model_param"]
        if (
            learner["gradient_booster"]["name"] != "gbtree"
            or max(int(outputs.get("num_class", 0)), int(outputs.get("num_target", 1))) > 1
        ):
            return None
        trees = learner["gradient_booster"]["model"]["trees"]
        if not trees or any(any(t["split_type"]) for t in trees):
            return None
        nodes = np.cumsum([0] + [len(t["left_children"]) for t in trees]).astype(np.int64)

        def cat(key: str, dtype: type) -> np.ndarray:
            return np.concatenate([np.asarray(t[key], dtype) for t in trees])

        left = cat("left_children", np.int32)
        parent = cat("parents", np.int64)
        parent = np.where(parent >= 2**31 - 1, -1, parent).astype(np.int32)  # the root's: 2^31-1
        feature = np.where(left < 0, -1, cat("split_indices", np.int32)).astype(np.int32)
        split = cat("split_conditions", np.float32)
        cover = cat("sum_hessian", np.float32).astype(np.float64)
        base = np.repeat(nodes[:-1], np.diff(nodes))  # each node's tree's first node
        local = np.arange(len(left)) - base
        if np.any(parent >= local):
            return None  # a parent after its child: not a layout these tables are built for
        is_left = np.zeros(len(left), bool)
        children = np.flatnonzero(parent >= 0)
        is_left[children] = left[parent[children] + base[children]] == local[children]
        walk = _walk(nodes, parent, feature, is_left, cover)
        element, leaf_first, leaf_d, element_feature, zero = walk
        n_features = booster.num_features()
        leaves = np.flatnonzero(feature < 0).astype(np.int32)
        splits = np.flatnonzero(feature >= 0).astype(np.int32)
        d = leaf_d[leaves]
        width = max(int(d.max()), 1)
        if width > 24:
            return None
        sizes = (1 << d) * width
        if int(sizes.sum()) * 4 > MAX_TABLE_BYTES:
            return None
        leaf_table = (np.cumsum(sizes) - sizes).astype(np.int64)
        leaf_features = np.full((len(leaves), width), n_features, np.int32)
        for j in range(width):
            has = d > j
            leaf_features[has, j] = element_feature[leaf_first[leaves[has]] + j]
        table = np.zeros(int(sizes.sum()), np.float32)
        _fill(split.astype(np.float64), leaves, leaf_first, leaf_d, zero, leaf_table, width, table)
        probe = np.zeros((1, n_features), np.float32)
        bias = float(booster.predict(xgb.DMatrix(probe), pred_contribs=True)[0, -1])
        default_left = cat("default_left", np.int8).astype(bool)
        return cls(
            n_features, bias, nodes, parent, feature, split, default_left, is_left, element,
            np.searchsorted(splits, nodes).astype(np.int64), splits,
            np.searchsorted(leaves, nodes).astype(np.int64), leaves,
            ((1 << d) - 1).astype(np.int64), leaf_table, leaf_features, table,
        )  # fmt: skip

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """SHAP contributions of each row of ``X`` (rows, features; NaN: missing) per feature,
        the last column the bias: shape (rows, features + 1), float32 as XGBoost's."""
        X = np.ascontiguousarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got {X.shape}")
        out = np.zeros((len(X), self.n_features + 1))
        _rows(
            X, self.tree_nodes, self.parent, self.feature, self.split, self.default_left,
            self.is_left, self.element, self.tree_splits, self.splits, self.tree_leaves,
            self.leaves, self.leaf_bits, self.leaf_table, self.leaf_features, self.table, out,
        )  # fmt: skip
        out[:, -1] = self.bias
        return out.astype(np.float32)


@njit(cache=True)
def _walk(nodes, parent, feature, is_left, cover):
    """Per node, the bit (distinct-feature index, from the root) of its parent's feature on its
    path; per leaf, its distinct features and the share of the training cover that follows
    the path on each (``zero``, aligned with ``element_feature``)."""
    n = len(parent)
    element = np.zeros(n, np.int64)
    leaf_first = np.full(n, -1, np.int64)
    leaf_d = np.zeros(n, np.int64)
    path = np.empty(64, np.int64)  # the node's ancestors, root first
    capacity = 64
    element_feature = np.empty(capacity, np.int32)
    zero = np.empty(capacity)
    used = 0
    for t in range(len(nodes) - 1):
        base = nodes[t]
        for g in range(base, nodes[t + 1]):
            if parent[g] < 0:
                continue
            depth = 0
            a = g
            while parent[a] >= 0:
                a = parent[a] + base
                if depth == len(path):
                    grown = np.empty(2 * len(path), np.int64)
                    grown[:depth] = path[:depth]
                    path = grown
                path[depth] = a
                depth += 1
            # distinct features from the root down; ``a`` walks the path, ``c`` its child on it
            d = 0
            distinct = np.empty(depth, np.int32)
            share = np.ones(depth)
            for i in range(depth - 1, -1, -1):
                a = path[i]
                c = g if i == 0 else path[i - 1]
                j = 0
                while j < d and distinct[j] != feature[a]:
                    j += 1
                if j == d:
                    distinct[d] = feature[a]
                    d += 1
                share[j] *= cover[c] / cover[a]
                if i == 0:
                    element[g] = j
            if feature[g] < 0:
                while used + d > capacity:
                    capacity *= 2
                    grown_f = np.empty(capacity, np.int32)
                    grown_f[:used] = element_feature[:used]
                    element_feature = grown_f
                    grown_z = np.empty(capacity)
                    grown_z[:used] = zero[:used]
                    zero = grown_z
                leaf_first[g] = used
                leaf_d[g] = d
                element_feature[used : used + d] = distinct[:d]
                zero[used : used + d] = share[:d]
                used += d
    return element, leaf_first, leaf_d, element_feature[:used], zero[:used]


@njit(cache=True)
def _fill(value, leaves, leaf_first, leaf_d, zero, leaf_table, width, table):
    """Each leaf's contribution to each distinct feature of its path, for every pattern of met
    conditions (bit j: the row meets every split on the path's j-th distinct feature)."""
    for k in range(len(leaves)):
        g = leaves[k]
        d = leaf_d[g]
        z = zero[leaf_first[g] : leaf_first[g] + d]
        v = value[g]  # a leaf's value is stored as its split condition
        pz = np.empty(d + 1)
        po = np.empty(d + 1)
        pw = np.empty(d + 1)
        for mask in range(1 << d):
            _extend(pz, po, pw, 0, 1.0, 1.0)
            for j in range(d):
                _extend(pz, po, pw, j + 1, z[j], float((mask >> j) & 1))
            row = leaf_table[k] + mask * width
            for j in range(d):
                w = _unwound_sum(pz, po, pw, d, j + 1)
                table[row + j] = w * (po[j + 1] - pz[j + 1]) * v


@njit(cache=True)
def _extend(pz, po, pw, depth, zero, one):
    """TreeSHAP's EXTEND: add an element (zero, one fractions) to a path of ``depth``."""
    pz[depth] = zero
    po[depth] = one
    pw[depth] = 1.0 if depth == 0 else 0.0
    for i in range(depth - 1, -1, -1):
        pw[i + 1] += one * pw[i] * (i + 1) / (depth + 1)
        pw[i] = zero * pw[i] * (depth - i) / (depth + 1)


@njit(cache=True)
def _unwound_sum(pz, po, pw, depth, index):
    """TreeSHAP's UNWOUND-PATH-SUM: the path's weight with element ``index`` left out."""
    one = po[index]
    zero = pz[index]
    next_one = pw[depth]
    total = 0.0
    for i in range(depth - 1, -1, -1):
        if one != 0.0:
            tmp = next_one * (depth + 1) / ((i + 1) * one)
            total += tmp
            next_one = pw[i] - tmp * zero * (depth - i) / (depth + 1)
        elif zero != 0.0:
            total += pw[i] / zero / ((depth - i) / (depth + 1))
    return total


@njit(cache=True)
def _rows(
    X, tree_nodes, parent, feature, split, default_left, is_left, element, tree_splits, splits,
    tree_leaves, leaves, leaf_bits, leaf_table, leaf_features, table, out,
):  # fmt: skip
    """Adds each row's contributions to ``out``: per tree, a pass over the splits (parents
    first) carries the bits of the conditions met so far down, then each leaf reads the table
    row of its bits."""
    width = leaf_features.shape[1]
    nodes = 1
    for t in range(len(tree_nodes) - 1):
        nodes = max(nodes, tree_nodes[t + 1] - tree_nodes[t])
    goes_left = np.empty(nodes, np.bool_)
    met = np.empty(nodes, np.int64)
    for t in range(len(tree_nodes) - 1):  # a tree's table rows stay cached across the rows
        base = tree_nodes[t]
        for r in range(X.shape[0]):
            x = X[r]
            met[0] = -1
            for s in range(tree_splits[t], tree_splits[t + 1]):
                g = splits[s]
                i = g - base
                p = parent[g]
                if p >= 0:
                    missed = np.int64(goes_left[p] != is_left[g])
                    met[i] = met[p] & ~(missed << element[g])
                v = x[feature[g]]
                goes_left[i] = default_left[g] if np.isnan(v) else v < split[g]
            for k in range(tree_leaves[t], tree_leaves[t + 1]):
                g = leaves[k]
                p = parent[g]
                bits = -1
                if p >= 0:
                    missed = np.int64(goes_left[p] != is_left[g])
                    bits = met[p] & ~(missed << element[g])
                row = leaf_table[k] + (bits & leaf_bits[k]) * width
                for j in range(width):
                    out[r, leaf_features[k, j]] += table[row + j]
