import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mseg_semantic.training.gradients.mgda import gradient_normalizers, gram_matrix, min_norm_weights, two_point_min_norm


def gram_of(vectors):
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors @ vectors.T


def combined_norm(weights, gram):
    return float(weights @ gram @ weights)


def test_two_point_line_search_branches():
    # v1 . v2 >= v1 . v1: the minimum is at v1 itself
    assert two_point_min_norm(1.0, 2.0, 5.0) == 1.0
    # v1 . v2 >= v2 . v2: at v2
    assert two_point_min_norm(5.0, 2.0, 1.0) == 0.0
    # interior: orthogonal unit vectors -> the midpoint
    assert two_point_min_norm(1.0, 0.0, 1.0) == pytest.approx(0.5)


def test_two_vectors_match_the_analytic_minimiser():
    rng = np.random.default_rng(0)
    for _ in range(20):
        g1, g2 = rng.normal(size=(2, 7))
        # analytic minimiser of ||g g1 + (1 - g) g2||^2 over [0, 1]
        gamma = np.clip(np.dot(g2 - g1, g2) / np.dot(g1 - g2, g1 - g2), 0.0, 1.0)
        weights = min_norm_weights(gram_of([g1, g2]))
        np.testing.assert_allclose(weights, [gamma, 1 - gamma], atol=1e-12)


def test_obtuse_pair_gives_the_foot_of_the_perpendicular():
    # g1 = (1, 0), g2 = (-1, 1): the min-norm point of the segment is (0.2, 0.4), at gamma = 3/5
    weights = min_norm_weights(gram_of([[1.0, 0.0], [-1.0, 1.0]]))
    np.testing.assert_allclose(weights, [0.6, 0.4], atol=1e-12)
    point = weights @ np.array([[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(point, [0.2, 0.4], atol=1e-12)


@pytest.mark.parametrize("away_steps", [True, False])
@pytest.mark.parametrize("num_tasks", [2, 3, 5, 7])
def test_orthogonal_unit_vectors_get_equal_weights(num_tasks, away_steps):
    weights = min_norm_weights(np.eye(num_tasks), away_steps=away_steps)
    np.testing.assert_allclose(weights, np.full(num_tasks, 1.0 / num_tasks), atol=1e-9)


@pytest.mark.parametrize("away_steps", [True, False])
def test_dominated_vector_takes_all_the_weight(away_steps):
    # g1 is short and every other gradient has a projection on g1 at least |g1|^2: the min-norm element is g1
    vectors = [[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [1.5, -3.0, 2.0]]
    np.testing.assert_allclose(min_norm_weights(gram_of(vectors), away_steps=away_steps), [1.0, 0.0, 0.0], atol=1e-9)
    # two tasks, second dominated by the first
    np.testing.assert_allclose(min_norm_weights(gram_of([[2.0, 1.0], [1.0, 0.0]])), [0.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("away_steps", [True, False])
@pytest.mark.parametrize("num_tasks", [1, 2, 3, 4, 7])
def test_weights_lie_on_the_simplex(num_tasks, away_steps):
    rng = np.random.default_rng(num_tasks)
    for dim in (2, 5, 50):
        weights = min_norm_weights(gram_of(rng.normal(size=(num_tasks, dim)) + rng.normal(size=dim)), away_steps=away_steps)
        assert weights.shape == (num_tasks,)
        assert np.all(weights >= 0)
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("num_tasks,dim,shift", [(3, 10, 0.0), (5, 40, 1.0), (7, 200, 0.5), (7, 4, 2.0), (4, 3, 0.0)])
def test_combined_norm_is_minimal_against_random_convex_weights(num_tasks, dim, shift):
    rng = np.random.default_rng(dim)
    vectors = rng.normal(size=(num_tasks, dim)) + shift * rng.normal(size=dim)
    gram = gram_of(vectors)
    weights = min_norm_weights(gram)
    best = combined_norm(weights, gram)
    random_weights = rng.dirichlet(np.ones(num_tasks), size=1000)
    random_norms = np.einsum("ki,ij,kj->k", random_weights, gram, random_weights)
    assert best <= random_norms.min()
    # plain Algorithm 2 (no away steps) converges as 1/k: close to, not always below, the best random draw
    assert combined_norm(min_norm_weights(gram, away_steps=False), gram) <= random_norms.min() + 1e-3 * np.diag(gram).max()
    # and the default solver agrees with a general-purpose constrained solver to ~1e-9 of the gradient scale
    reference = minimize(
        lambda w: w @ gram @ w,
        np.full(num_tasks, 1.0 / num_tasks),
        jac=lambda w: 2 * gram @ w,
        bounds=[(0, 1)] * num_tasks,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert best <= reference.fun + 1e-9 * np.diag(gram).max()


def test_single_task_and_zero_gradients():
    np.testing.assert_allclose(min_norm_weights(np.array([[3.0]])), [1.0])
    weights = min_norm_weights(np.zeros((4, 4)))
    assert weights.sum() == pytest.approx(1.0) and np.all(weights >= 0)


def test_accepts_a_torch_gram_matrix():
    gram = torch.eye(3, dtype=torch.float32)
    np.testing.assert_allclose(min_norm_weights(gram), np.full(3, 1 / 3), atol=1e-9)


@pytest.mark.parametrize("bad", [np.ones((2, 3)), np.ones(3), np.zeros((0, 0)), np.array([[1.0, np.nan], [np.nan, 1.0]]), np.array([[np.inf, 0], [0, 1.0]])])
def test_invalid_gram_matrices_are_rejected(bad):
    with pytest.raises(ValueError, match="Gram matrix"):
        min_norm_weights(bad)


def test_gram_matrix_matches_dense_products_in_float64():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3, 1000)).astype(np.float32)
    gram = gram_matrix([torch.from_numpy(v) for v in vectors])
    np.testing.assert_allclose(gram, vectors.astype(np.float64) @ vectors.T.astype(np.float64), rtol=1e-12)
    assert gram.dtype == np.float64


def test_gradient_normalizers():
    norms, losses = [2.0, 4.0], [0.5, 3.0]
    np.testing.assert_allclose(gradient_normalizers(norms, losses, "none"), [1.0, 1.0])
    np.testing.assert_allclose(gradient_normalizers(norms, losses, "l2"), [2.0, 4.0])
    np.testing.assert_allclose(gradient_normalizers(norms, losses, "loss"), [0.5, 3.0])
    np.testing.assert_allclose(gradient_normalizers(norms, losses, "loss+"), [1.0, 12.0])
    # a zero divisor (zero gradient) falls back to 1 instead of dividing by zero
    np.testing.assert_allclose(gradient_normalizers([0.0, 4.0], losses, "l2"), [1.0, 4.0])
    with pytest.raises(ValueError, match="l1"):
        gradient_normalizers(norms, losses, "l1")


def test_l2_normalisation_makes_the_weights_scale_invariant_per_task():
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(3, 6))
    scaled = vectors * np.array([[1.0], [100.0], [0.01]])
    def solve(vs):
        gram = gram_of(vs)
        divisors = gradient_normalizers(np.sqrt(np.diag(gram)), [1, 1, 1], "l2")
        return min_norm_weights(gram / np.outer(divisors, divisors), max_iter=2000, tolerance=1e-12)
    np.testing.assert_allclose(solve(vectors), solve(scaled), atol=1e-6)
