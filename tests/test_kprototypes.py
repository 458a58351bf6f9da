"""Tests of segreport.methods.kprototypes against the kmodes reference."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from kmodes.kprototypes import KPrototypes
from kmodes.util.dissim import matching_dissim
from kmodes.util.init_methods import init_cao, init_huang
from sklearn.metrics import adjusted_rand_score

from segreport.methods.kprototypes import (
    KPrototypesSegmenter,
    _init_cao,
    _init_huang,
    initial_prototypes,
)

# kmodes warns about nothing we care about here, but keep the output clean.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def planted(n, seed, k=4, p=2, q=3, levels=5, spread=6.0, noise=0.5, purity=0.9):
    """Mixed data with k planted clusters: separated numeric centres and
    per-cluster categorical profiles, ``purity`` of values from the profile."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    centres = rng.normal(0.0, spread, (k, p))
    X_num = centres[truth] + rng.normal(0.0, noise, (n, p))
    profile = np.stack([rng.permutation(levels)[:k] for _ in range(q)], axis=1)
    keep = rng.random((n, q)) < purity
    X_cat = np.where(keep, profile[truth], rng.integers(0, levels, (n, q)))
    return X_num, X_cat.astype(np.int64), truth


def noisy(n, seed, p=3, q=4):
    """No structure at all: many near-ties, long trajectories."""
    rng = np.random.default_rng(seed)
    X_num = rng.normal(size=(n, p))
    X_cat = rng.integers(0, rng.integers(2, 6, q), (n, q))
    return X_num, X_cat


def kmodes_fit(X_num, X_cat, k, init, gamma, max_iter=100, seed=0):
    """Reference run of kmodes from explicit initial prototypes."""
    p, q = X_num.shape[1], X_cat.shape[1]
    model = KPrototypes(n_clusters=k, init=[init[0].copy(), init[1].copy()], n_init=1,
                        gamma=gamma, max_iter=max_iter, random_state=seed, n_jobs=1)
    return model.fit(np.hstack([X_num, X_cat.astype(float)]),
                     categorical=list(range(p, p + q)))


def recomputed_cost(model, X_num, X_cat):
    """Cost of labels_ against the prototypes, computed independently."""
    c_num = model.cluster_centroids_num_[model.labels_]
    c_cat = model.cluster_centroids_cat_[model.labels_]
    return float(((X_num - c_num) ** 2).sum() + model.gamma_ * (X_cat != c_cat).sum())


# ----------------------------------------------------------- core property


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["planted", "noisy"])
def test_fast_cost_not_above_kmodes_from_same_start(seed, kind):
    if kind == "planted":
        X_num, X_cat, _ = planted(400, seed, noise=1.5)
    else:
        X_num, X_cat = noisy(300, seed)
    k = 5
    gamma = 0.5 * np.mean(X_num.std(axis=0))
    init = initial_prototypes(X_num, X_cat, k, init="Huang", random_state=seed)
    ref = kmodes_fit(X_num, X_cat, k, init, gamma, seed=seed)
    fast = KPrototypesSegmenter(n_clusters=k, init=init, random_state=seed).fit_arrays(X_num, X_cat)
    assert fast.cost_ <= ref.cost_ * (1 + 1e-9)
    # Same start as given, and the same dissimilarity scale.
    np.testing.assert_array_equal(fast.initial_centroids_[0], init[0])
    np.testing.assert_array_equal(fast.initial_centroids_[1], init[1])
    assert fast.gamma_ == pytest.approx(ref.gamma)


@pytest.mark.parametrize("max_iter", [1, 2])
def test_fast_cost_not_above_kmodes_when_kmodes_is_cut_short(max_iter):
    # kmodes stops after max_iter passes; the fast engine's batch refinement
    # must then still end at or below kmodes' cost (usually strictly below).
    X_num, X_cat = noisy(500, 11)
    gamma = 0.5 * np.mean(X_num.std(axis=0))
    better = 0
    for seed in range(3):
        init = initial_prototypes(X_num, X_cat, 6, init="random", random_state=seed)
        ref = kmodes_fit(X_num, X_cat, 6, init, gamma, max_iter=max_iter, seed=seed)
        fast = KPrototypesSegmenter(n_clusters=6, init=init, max_iter=max_iter,
                                    random_state=seed).fit_arrays(X_num, X_cat)
        assert fast.cost_ <= ref.cost_ * (1 + 1e-9)
        better += fast.cost_ < ref.cost_ * (1 - 1e-9)
    assert better >= 1


def test_same_random_state_follows_kmodes_exactly():
    # Per-run seeds, initialisation and online passes replicate kmodes, so
    # with n_init > 1 both engines pick the same run and the same clustering.
    X_num, X_cat, _ = planted(300, 5, k=3, noise=2.0)
    for init in ("Huang", "Cao", "random"):
        kw = dict(n_clusters=4, init=init, n_init=3, random_state=7)
        fast = KPrototypesSegmenter(**kw).fit_arrays(X_num, X_cat)
        ref = KPrototypesSegmenter(engine="kmodes", **kw).fit_arrays(X_num, X_cat)
        assert fast.cost_ <= ref.cost_ * (1 + 1e-9)
        np.testing.assert_array_equal(fast.labels_, ref.labels_)
        np.testing.assert_array_equal(fast.initial_centroids_[0], ref.initial_centroids_[0])
        np.testing.assert_array_equal(fast.initial_centroids_[1], ref.initial_centroids_[1])


def test_empty_cluster_reseeding_matches_kmodes():
    # A data set on which a pass empties a cluster, which both engines then
    # re-seed with the same random draw (found by search; rare in practice).
    X_num = np.array([4, 2, 1, 4, 2, 3, 1, 3, 1, 2, 3, 3, 2, 0, 4, 4, 0, 0, 0, 0, 4, 4, 2],
                     dtype=float)[:, None]
    X_cat = np.array([[1, 0], [2, 1], [0, 1], [0, 2], [2, 0], [0, 2], [0, 0], [1, 2],
                      [2, 0], [2, 0], [1, 0], [2, 0], [2, 2], [2, 2], [1, 1], [2, 1],
                      [2, 1], [0, 1], [0, 2], [0, 1], [1, 2], [2, 0], [0, 2]])
    kw = dict(n_clusters=6, init="Cao", n_init=1, gamma=0.5, random_state=8374)
    fast = KPrototypesSegmenter(**kw).fit_arrays(X_num, X_cat)
    ref = KPrototypesSegmenter(engine="kmodes", **kw).fit_arrays(X_num, X_cat)
    assert fast.cost_ == pytest.approx(ref.cost_, rel=1e-12)
    np.testing.assert_array_equal(fast.labels_, ref.labels_)
    np.testing.assert_allclose(fast.cluster_centroids_num_, ref.cluster_centroids_num_)
    assert fast.n_iter_ == ref.n_iter_


# ------------------------------------------------------------ initialisation


@pytest.mark.parametrize("seed", range(5))
def test_initialisation_matches_kmodes_functions(seed):
    rng = np.random.default_rng(seed)
    X_cat = rng.integers(0, 4, (150, 3))
    k = 6
    expected = init_huang(X_cat.astype(np.int32), k, matching_dissim,
                          np.random.RandomState(seed)).astype(np.int64)
    np.testing.assert_array_equal(_init_huang(X_cat, k, np.random.RandomState(seed)), expected)
    expected = init_cao(X_cat.astype(np.int32), k, matching_dissim).astype(np.int64)
    np.testing.assert_array_equal(_init_cao(X_cat, k), expected)


def test_initial_prototypes_shapes_and_codes():
    X_num, X_cat, _ = planted(200, 0)
    num, cat = initial_prototypes(X_num, X_cat, 4, init="Cao", random_state=0)
    assert num.shape == (4, 2) and cat.shape == (4, 3) and cat.dtype == np.int64
    # Categorical prototypes are rows of the data (Cao picks rows).
    assert all((X_cat == row).all(axis=1).any() for row in cat)


# ------------------------------------------------------------ behaviour


def test_recovers_planted_clusters():
    X_num, X_cat, truth = planted(1500, 3, k=4, noise=0.8)
    model = KPrototypesSegmenter(n_clusters=4, random_state=0).fit_arrays(X_num, X_cat)
    assert adjusted_rand_score(truth, model.labels_) > 0.9


def test_attributes_are_consistent():
    X_num, X_cat, _ = planted(600, 4, k=4, noise=0.8)
    model = KPrototypesSegmenter(n_clusters=4, random_state=1).fit_arrays(X_num, X_cat)
    assert model.labels_.dtype == np.int64 and model.labels_.shape == (600,)
    assert model.cluster_centroids_num_.shape == (4, 2)
    assert model.cluster_centroids_cat_.shape == (4, 3)
    assert model.cluster_centroids_cat_.dtype == np.int64
    assert model.gamma_ == pytest.approx(0.5 * np.mean(X_num.std(axis=0)))
    assert set(np.unique(model.labels_)) == set(range(4))
    # cost_ is the cost of labels_ against the prototypes ...
    assert model.cost_ == pytest.approx(recomputed_cost(model, X_num, X_cat), rel=1e-12)
    # ... every row is at its closest prototype ...
    D = model.transform_arrays(X_num, X_cat)
    assert D.shape == (600, 4)
    np.testing.assert_array_equal(D.argmin(axis=1), model.labels_)
    assert D.min(axis=1).sum() == pytest.approx(model.cost_, rel=1e-12)
    # ... and on converged, well-separated data the prototypes are the
    # means and modes of their members.
    for c in range(4):
        members = model.labels_ == c
        np.testing.assert_allclose(model.cluster_centroids_num_[c],
                                   X_num[members].mean(axis=0), atol=1e-9)
        for a in range(3):
            counts = np.bincount(X_cat[members, a])
            assert counts[model.cluster_centroids_cat_[c, a]] == counts.max()


def test_predict_on_training_data_equals_labels():
    X_num, X_cat = noisy(400, 2)
    model = KPrototypesSegmenter(n_clusters=5, n_init=3, random_state=3).fit_arrays(X_num, X_cat)
    np.testing.assert_array_equal(model.predict_arrays(X_num, X_cat), model.labels_)


def test_deterministic_for_fixed_random_state():
    X_num, X_cat = noisy(400, 3)
    a = KPrototypesSegmenter(n_clusters=5, n_init=4, random_state=42).fit_arrays(X_num, X_cat)
    b = KPrototypesSegmenter(n_clusters=5, n_init=4, random_state=42).fit_arrays(X_num, X_cat)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.cost_ == b.cost_
    np.testing.assert_array_equal(a.cluster_centroids_num_, b.cluster_centroids_num_)


def test_more_inits_never_worse():
    X_num, X_cat = noisy(300, 4)
    one = KPrototypesSegmenter(n_clusters=5, n_init=1, random_state=9).fit_arrays(X_num, X_cat)
    many = KPrototypesSegmenter(n_clusters=5, n_init=5, random_state=9).fit_arrays(X_num, X_cat)
    # The first per-run seed is the same, so the best of five includes run one.
    assert many.cost_ <= one.cost_


def test_category_codes_need_not_be_dense():
    # Relabelling categories monotonically must not change the clustering.
    X_num, X_cat, _ = planted(300, 6)
    sparse_codes = X_cat * 10 + 3
    a = KPrototypesSegmenter(n_clusters=4, random_state=0).fit_arrays(X_num, X_cat)
    b = KPrototypesSegmenter(n_clusters=4, random_state=0).fit_arrays(X_num, sparse_codes)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(b.cluster_centroids_cat_, a.cluster_centroids_cat_ * 10 + 3)
    assert a.cost_ == b.cost_


def test_engine_kmodes_exposes_same_attributes():
    X_num, X_cat, truth = planted(300, 8, k=3)
    kw = dict(n_clusters=3, n_init=2, random_state=0)
    fast = KPrototypesSegmenter(**kw).fit_arrays(X_num, X_cat)
    ref = KPrototypesSegmenter(engine="kmodes", **kw).fit_arrays(X_num, X_cat)
    for name in ("labels_", "cluster_centroids_num_", "cluster_centroids_cat_"):
        assert getattr(ref, name).shape == getattr(fast, name).shape
        assert getattr(ref, name).dtype == getattr(fast, name).dtype
    for model in (fast, ref):
        assert isinstance(model.cost_, float) and isinstance(model.gamma_, float)
        assert isinstance(model.n_iter_, int) and model.n_iter_ >= 1
        assert len(model.initial_centroids_) == 2
        assert model.cost_ == pytest.approx(recomputed_cost(model, X_num, X_cat), rel=1e-9)
        np.testing.assert_array_equal(model.predict_arrays(X_num, X_cat), model.labels_)
        assert adjusted_rand_score(truth, model.labels_) > 0.9
    assert fast.cost_ <= ref.cost_ * (1 + 1e-9)


def test_engine_kmodes_does_not_modify_explicit_init():
    X_num, X_cat, _ = planted(200, 9)
    init = initial_prototypes(X_num, X_cat, 3, random_state=0)
    before = (init[0].copy(), init[1].copy())
    KPrototypesSegmenter(n_clusters=3, init=init, engine="kmodes").fit_arrays(X_num, X_cat)
    KPrototypesSegmenter(n_clusters=3, init=init).fit_arrays(X_num, X_cat)
    np.testing.assert_array_equal(init[0], before[0])
    np.testing.assert_array_equal(init[1], before[1])


def test_fast_engine_much_faster_than_kmodes():
    X_num, X_cat, _ = planted(4000, 10, k=5, noise=2.0)
    init = initial_prototypes(X_num, X_cat, 5, random_state=0)
    gamma = 0.5 * np.mean(X_num.std(axis=0))
    KPrototypesSegmenter(n_clusters=5, init=init).fit_arrays(X_num[:100], X_cat[:100])  # compile
    t0 = time.perf_counter()
    fast = KPrototypesSegmenter(n_clusters=5, init=init, max_iter=3).fit_arrays(X_num, X_cat)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = kmodes_fit(X_num, X_cat, 5, init, gamma, max_iter=3)
    t_ref = time.perf_counter() - t0
    assert fast.cost_ <= ref.cost_ * (1 + 1e-9)
    assert t_ref / t_fast > 20


# ------------------------------------------------------------ validation


def test_rejects_fewer_rows_than_clusters():
    X_num, X_cat = noisy(4, 0)
    with pytest.raises(ValueError, match="cannot form 5 clusters"):
        KPrototypesSegmenter(n_clusters=5).fit_arrays(X_num, X_cat)


@pytest.mark.parametrize("bad", [
    lambda Xn, Xc: (Xn[:-1], Xc),                      # row counts differ
    lambda Xn, Xc: (Xn[:, 0], Xc),                     # 1-D numeric
    lambda Xn, Xc: (np.where(Xn > 1, np.nan, Xn), Xc),  # NaN
    lambda Xn, Xc: (Xn, Xc + 0.5),                     # non-integer codes
])
def test_rejects_bad_input(bad):
    X_num, X_cat = noisy(50, 0)
    with pytest.raises(ValueError):
        KPrototypesSegmenter(n_clusters=3).fit_arrays(*bad(X_num, X_cat))


def test_rejects_bad_parameters():
    X_num, X_cat = noisy(50, 0)
    for kw in (dict(init="kmeans++"), dict(engine="gpu"), dict(n_init=0),
               dict(init=(np.zeros((2, 3)), np.zeros((3, 4), dtype=int)))):
        with pytest.raises(ValueError):
            KPrototypesSegmenter(n_clusters=3, **kw).fit_arrays(X_num, X_cat)
    with pytest.raises(ValueError, match="not fitted"):
        KPrototypesSegmenter().predict_arrays(X_num, X_cat)


def test_too_few_distinct_rows():
    X_num = np.zeros((20, 1))
    X_cat = np.zeros((20, 1), dtype=int)
    X_cat[10:] = 1
    with pytest.raises(ValueError, match="distinct rows"):
        KPrototypesSegmenter(n_clusters=3).fit_arrays(X_num, X_cat)
    # Exactly k distinct rows: each is a prototype, cost 0 (as in kmodes).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = KPrototypesSegmenter(n_clusters=2).fit_arrays(X_num, X_cat)
    assert model.cost_ == 0.0
    assert len(set(zip(model.labels_, X_cat[:, 0]))) == 2
