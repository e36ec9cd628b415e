"""training/drift.py: reference profiles, PSI, additive bin counts, the JSON file."""

from __future__ import annotations

import numpy as np
import pytest

from training.drift import (
    EPSILON,
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    REFERENCE_FILE,
    Reference,
    bin_counts,
    classify,
    load_reference,
    psi,
    psi_counts,
    reference_profile,
    save_reference,
    score_bin_counts,
    score_psi,
)

NAMES = ["normal", "with_nan", "constant", "binary"]


def _matrix(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    X = np.empty((n, 4))
    X[:, 0] = rng.normal(shift, 1.0, n)
    X[:, 1] = rng.exponential(1.0, n)
    X[rng.random(n) < 0.3, 1] = np.nan  # 30 % undefined
    X[:, 2] = 5.0
    X[:, 3] = (rng.random(n) < 0.1).astype(float)
    return X


@pytest.fixture(scope="module")
def ref() -> Reference:
    rng = np.random.default_rng(0)
    return reference_profile(_matrix(rng, 20_000), NAMES, scores=rng.beta(1, 20, 20_000))


def test_profile_shape_and_shares(ref: Reference) -> None:
    props = ref.proportions_array()
    assert props.shape == (4, ref.bins + 1)
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    assert len(ref.edges[0]) == ref.bins - 1  # continuous: all deciles distinct
    np.testing.assert_allclose(props[0, : ref.bins], 0.1, atol=1e-3)
    assert props[0, -1] == 0  # no NaN in the normal feature
    assert props[1, -1] == pytest.approx(0.3, abs=0.02)  # the NaN bin
    for cuts in ref.edges:
        assert list(cuts) == sorted(set(cuts))  # unique, increasing


def test_constant_and_discrete_features(ref: Reference) -> None:
    assert ref.edges[2] == (5.0, np.nextafter(5.0, np.inf))  # below, at, above 5
    np.testing.assert_array_equal(ref.proportions_array()[2], [0, 1] + [0] * (ref.bins - 1))
    assert ref.edges[3][:2] == (0.0, 1.0) and len(ref.edges[3]) == 3  # one bin per value
    assert ref.proportions_array()[3, 1:3] == pytest.approx([0.9, 0.1], abs=0.01)
    X = np.array([[0.0, 1.0, 5.0, 0.0], [0.0, 1.0, 5.0, 1.0]])
    counts = bin_counts(ref, X)
    assert counts[3].sum() == 2 and np.count_nonzero(counts[3]) == 2  # 0 and 1 apart
    # A constant feature that stays constant does not drift; one that moves does.
    rng = np.random.default_rng(1)
    window = _matrix(rng, 2_000)
    assert psi(ref, window)["constant"] == pytest.approx(0.0)
    for moved in (7.0, 3.0):
        window[:, 2] = moved
        assert psi(ref, window)["constant"] > PSI_SIGNIFICANT
    window[:, 3] = 2.0  # a value the flag never took
    assert bin_counts(ref, window)[3, 3] == 2_000


def test_psi_zero_for_identical_and_small_for_resample(ref: Reference) -> None:
    props = ref.proportions_array()
    counts = np.round(props * 1_000_000).astype(np.int64)
    np.testing.assert_allclose(psi_counts(props, counts), 0.0, atol=1e-6)
    values = psi(ref, _matrix(np.random.default_rng(2), 5_000))
    assert all(v < PSI_MODERATE for v in values.values()), values
    assert {classify(v) for v in values.values()} == {"stable"}


def test_psi_grows_with_shift(ref: Reference) -> None:
    rng = np.random.default_rng(3)
    small = psi(ref, _matrix(rng, 5_000, shift=0.25))["normal"]
    large = psi(ref, _matrix(rng, 5_000, shift=1.0))["normal"]
    assert small < large
    assert large > PSI_SIGNIFICANT
    assert classify(large) == "significant"


def test_nan_bin_drives_psi(ref: Reference) -> None:
    rng = np.random.default_rng(4)
    window = _matrix(rng, 5_000)
    window[:, 0] = np.nan  # the normal feature was never NaN in training
    window[:, 1] = np.nan  # 30 % NaN in training, all now
    values = psi(ref, window)
    assert np.isfinite(values["normal"]) and values["normal"] > PSI_SIGNIFICANT
    assert values["with_nan"] > PSI_SIGNIFICANT
    assert bin_counts(ref, window)[0, -1] == 5_000


def test_epsilon_floor_keeps_psi_finite() -> None:
    p = np.array([1.0, 0.0, 0.0])
    c = np.array([0, 10, 0])
    expected = (1.0 - EPSILON) * np.log(1.0 / EPSILON) * 2  # two bins swap, third both empty
    assert float(psi_counts(p, c)) == pytest.approx(expected)
    assert np.isnan(psi_counts(p, np.zeros(3, np.int64)))  # an empty window


def test_bin_counts_additive(ref: Reference) -> None:
    rng = np.random.default_rng(5)
    batches = [_matrix(rng, n, shift=s) for n, s in ((100, 0.0), (1, 0.5), (357, -1.0))]
    total = sum(bin_counts(ref, b) for b in batches)
    np.testing.assert_array_equal(total, bin_counts(ref, np.concatenate(batches)))
    assert total.dtype == np.int64 and total.sum() == 458 * 4
    scores = [rng.random(n) for n in (10, 20)]
    np.testing.assert_array_equal(
        score_bin_counts(ref, scores[0]) + score_bin_counts(ref, scores[1]),
        score_bin_counts(ref, np.concatenate(scores)),
    )


def test_score_profile(ref: Reference) -> None:
    rng = np.random.default_rng(6)
    assert score_psi(ref, rng.beta(1, 20, 5_000)) < PSI_MODERATE
    assert score_psi(ref, rng.beta(1, 5, 5_000)) > PSI_SIGNIFICANT
    no_scores = reference_profile(_matrix(rng, 100), NAMES)
    assert not no_scores.has_scores
    with pytest.raises(ValueError, match="no score profile"):
        score_psi(no_scores, [0.5])


def test_classify_thresholds() -> None:
    assert classify(0.0) == "stable"
    assert classify(0.0999) == "stable"
    assert classify(0.1) == "moderate"
    assert classify(0.2499) == "moderate"
    assert classify(0.25) == "significant"
    assert classify(float("nan")) == "stable"


def test_json_round_trip_and_registry_file(ref: Reference, tmp_path) -> None:
    assert Reference.from_json(ref.to_json()) == ref
    version = tmp_path / "v0001"
    version.mkdir()
    path = save_reference(ref, version)
    assert path == version / REFERENCE_FILE
    assert [p.name for p in version.iterdir()] == [REFERENCE_FILE]  # no temporary left
    assert load_reference(version) == ref
    assert load_reference(str(version)) == ref
    with pytest.raises(FileNotFoundError, match="no drift reference"):
        load_reference(tmp_path)


def test_subset_and_shape_errors(ref: Reference) -> None:
    sub = ref.subset(["binary", "normal"])
    assert sub.names == ("binary", "normal")
    assert sub.edges == (ref.edges[3], ref.edges[0])
    with pytest.raises(ValueError, match="no profile"):
        ref.subset(["nope"])
    with pytest.raises(ValueError, match="expected"):
        bin_counts(ref, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="empty"):
        reference_profile(np.zeros((0, 2)), ["a", "b"])
