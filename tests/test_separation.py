"""Per-layer separation measures on data with known answers."""

import numpy as np
import pytest
import torch

from learning_dynamics import separation


def two_clusters(a):
    """Two classes in 1-D at -a and +a, each with points at +-1 around its mean: Tr S_W = 1, Tr S_B = a^2."""
    h = np.array([[-a - 1.0], [-a + 1.0], [a - 1.0], [a + 1.0]])
    return h, np.array([0, 0, 1, 1])


@pytest.mark.parametrize("a", [0.5, 1.0, 3.0])
def test_known_answer(a):
    h, y = two_clusters(a)
    assert separation.log_separation(h, y) == pytest.approx(-2 * np.log(a), abs=1e-14)


def test_matches_explicit_covariances():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    h = rng.standard_normal((200, 5)) + 2.0 * rng.standard_normal((4, 5))[y]
    mu = h.mean(0)
    sw = sum((h[y == c] - h[y == c].mean(0)).T @ (h[y == c] - h[y == c].mean(0)) for c in range(4)) / len(y)
    sb = sum((y == c).sum() * np.outer(h[y == c].mean(0) - mu, h[y == c].mean(0) - mu) for c in range(4)) / len(y)
    expected = np.log(np.trace(sw)) - np.log(np.trace(sb))
    assert separation.log_separation(h, y) == pytest.approx(expected, rel=1e-12)


def test_identical_classes_are_inseparable():
    h = np.array([[0.0, 1.0], [2.0, -1.0]] * 3)
    y = np.array([0, 0, 1, 1, 2, 2])            # every class holds the same two points
    assert separation.log_separation(h, y) == np.inf


def test_perfectly_separated_classes():
    h = np.array([[0.0], [0.0], [5.0], [5.0]])  # each class collapsed to a point
    assert separation.log_separation(h, np.array([0, 0, 1, 1])) == -np.inf


def test_invariant_to_scale_shift_and_rotation():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    h = rng.standard_normal((60, 4)) + rng.standard_normal((3, 4))[y]
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    base = separation.log_separation(h, y)
    for transformed in (7.5 * h, h + 3.0, h @ q, 0.01 * h @ q - 2.0):
        assert separation.log_separation(transformed, y) == pytest.approx(base, abs=1e-12)


def test_batched_over_leading_dimensions():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(2), 10)
    h = torch.as_tensor(rng.standard_normal((3, 2, 20, 4)))
    batched = separation.log_separation(h, y)
    assert batched.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert batched[i, j] == pytest.approx(separation.log_separation(h[i, j], y), abs=1e-12)


def test_load_curve_and_curvature_signs():
    layers = np.arange(6.0)
    linear, concave, convex = 5 - layers, 5 - layers**2 / 5, (5 - layers) ** 2 / 5
    assert separation.load_curve(linear) == pytest.approx(np.ones(5))
    assert separation.curvature(linear) == pytest.approx(0.0, abs=1e-12)
    assert separation.curvature(concave) < 0 < separation.curvature(convex)
    profile = separation.normalised_profile(np.stack([linear, concave]))
    assert profile[:, 0] == pytest.approx([1, 1]) and profile[:, -1] == pytest.approx([0, 0])
    # normalised curvature is (d_1 - d_L) / (log D_0 - log D_L)
    assert separation.curvature(concave) == pytest.approx((0.2 - 1.8) / 5)
    assert separation.curvature(concave, normalise=False) == pytest.approx(0.2 - 1.8)


@pytest.mark.parametrize("h,y,kwargs,message", [
    (np.ones((4, 2)), np.zeros(4, dtype=int), {}, "single class"),
    (np.ones((2, 2)), np.array([0, 1]), {"n_classes": 3}, "fewer samples"),
    (np.ones((1, 2)), np.array([4]), {}, "fewer samples"),
    (np.ones((4, 2)), np.array([0, 1, 0]), {}, "labels must have shape"),
    (np.ones((4, 2)), np.array([0.0, 1.0, 0.0, 1.0]), {}, "labels must be integers"),
    (np.ones((4, 2)), np.array([0, 1, 0, -1]), {}, "labels must be >= 0"),
    (np.ones((4, 2)), np.array([0, 1, 0, 3]), {"n_classes": 2}, "labels must be < n_classes"),
    (np.full((4, 2), np.nan), np.array([0, 1, 0, 1]), {}, "h must be finite"),
    (np.ones(4), np.array([0, 1, 0, 1]), {}, "h must have shape"),
])
def test_bad_inputs_raise_clear_errors(h, y, kwargs, message):
    with pytest.raises(ValueError, match=message):
        separation.log_separation(h, y, **kwargs)


def test_bad_profiles_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 3 layers"):
        separation.curvature([1.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        separation.load_curve([np.inf, 1.0, 0.0])
    with pytest.raises(ValueError, match="no net separation"):
        separation.curvature([1.0, 2.0, 1.0])


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 30).astype(float), rng.normal(size=30)
    assert separation.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert separation.spearman(np.arange(5), np.arange(5) ** 3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        separation.spearman([1, 2, 3], [1, 2])
