"""K-Prototypes (Huang 1997) for mixed numeric + categorical data: the estimator of method `kprototypes`.

Imported on first use (see kprototypes.py): it needs scikit-learn and numba, which a run that
reuses its finished cells never loads.

Two interchangeable engines sit behind one scikit-learn style estimator,
:class:`KPrototypesSegmenter`:

``engine="kmodes"``
    Delegates to :class:`kmodes.kprototypes.KPrototypes`, the reference
    implementation.  Pure Python per point, so it takes tens of seconds per
    initialisation on ~45k rows.

``engine="fast"``
    A re-implementation of the same algorithm.  Initialisation (Huang / Cao /
    random), gamma and the batch refinement are vectorised numpy; the
    point-by-point online loop, which cannot be vectorised because every move
    changes the prototypes the next point is compared with, is compiled with
    numba.  The numba kernels do the floating-point operations in the same
    order as kmodes (including numpy's pairwise summation of the numeric
    squared differences), so from the same initial prototypes and the same
    seed the fast engine follows kmodes' trajectory step for step.  Once kmodes
    would stop, the fast engine adds batch (Lloyd) refinement steps, each
    accepted only if it lowers the cost.  Hence its cost is never above the
    kmodes cost from the same start, and usually identical.

The dissimilarity between a row ``(x_num, x_cat)`` and a prototype
``(c_num, c_cat)`` is ``sum((x_num - c_num) ** 2) + gamma * sum(x_cat != c_cat)``
(kmodes' ``euclidean_dissim`` + gamma * ``matching_dissim``).  The cost is the
sum over rows of the dissimilarity to the closest prototype.

A module-level helper, :func:`initial_prototypes`, draws the initial
prototypes of one run exactly as kmodes does; pass its result as
``init=(centroids_num, centroids_cat)`` to compare engines from the same start.
"""

from __future__ import annotations

import numbers

import numpy as np
from numba import njit
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["KPrototypesSegmenter", "initial_prototypes"]

# Same constants as kmodes.kprototypes: after MAX_INIT_TRIES initialisations
# that leave a cluster empty kmodes switches to random initialisation, and it
# gives up after RAISE_INIT_TRIES.
MAX_INIT_TRIES = 20
RAISE_INIT_TRIES = 100

_INIT_METHODS = ("huang", "cao", "random")
_ENGINES = ("fast", "kmodes")

# numpy's pairwise summation block size (PW_BLOCKSIZE in numpy's loops).
_PW_BLOCKSIZE = 128

# A batch refinement step must lower the cost by more than this relative
# amount to be accepted: smaller "gains" are rounding noise from summing the
# same members in another order.
_POLISH_RTOL = 1e-12


# --------------------------------------------------------------------------
# numba kernels.  They mirror kmodes' arithmetic operation by operation so
# that argmin decisions (and with them the whole online trajectory) are
# bit-identical to kmodes, not merely close.
# --------------------------------------------------------------------------


@njit(cache=True)
def _pairwise_block(buf, lo, n):
    """numpy's pairwise sum of ``buf[lo:lo + n]`` for ``n <= 128``."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += buf[i]
        return res
    r0 = buf[lo]
    r1 = buf[lo + 1]
    r2 = buf[lo + 2]
    r3 = buf[lo + 3]
    r4 = buf[lo + 4]
    r5 = buf[lo + 5]
    r6 = buf[lo + 6]
    r7 = buf[lo + 7]
    i = 8
    stop = n - (n % 8)
    while i < stop:
        r0 += buf[lo + i]
        r1 += buf[lo + i + 1]
        r2 += buf[lo + i + 2]
        r3 += buf[lo + i + 3]
        r4 += buf[lo + i + 4]
        r5 += buf[lo + i + 5]
        r6 += buf[lo + i + 6]
        r7 += buf[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += buf[lo + i]
        i += 1
    return res


@njit(cache=True)
def _pairwise_sum(buf, lo, n):
    """Sum ``buf[lo:lo + n]`` in exactly the order numpy's ``np.sum`` uses.

    kmodes computes ``np.sum((a - b) ** 2, axis=1)``; numpy sums a contiguous
    row sequentially below 8 elements, with 8 interleaved accumulators up to
    128, and splits longer rows in two (at a multiple of 8) recursively.
    Rounding differs between orders, so we copy numpy's to keep argmin ties
    and near-ties identical to kmodes.

    The split is evaluated with an explicit stack, not by recursion: numba
    crashes when loading a cached recursive function (numba issue #6061).
    """
    if n <= _PW_BLOCKSIZE:
        return _pairwise_block(buf, lo, n)
    # Post-order walk of the split tree. stage 0: visit left child,
    # 1: visit right child, 2: add the two results (left + right).
    depth = 64  # n halves at each level, so 64 levels cover any int64 n
    los = np.empty(depth, dtype=np.int64)
    ns = np.empty(depth, dtype=np.int64)
    stage = np.zeros(depth, dtype=np.int64)
    vals = np.empty(depth + 1)
    top = 0
    nvals = 0
    los[0] = lo
    ns[0] = n
    while top >= 0:
        m = ns[top]
        if m <= _PW_BLOCKSIZE:
            vals[nvals] = _pairwise_block(buf, los[top], m)
            nvals += 1
            top -= 1
            continue
        half = m // 2
        half -= half % 8
        if stage[top] == 0:
            stage[top] = 1
            los[top + 1] = los[top]
            ns[top + 1] = half
            stage[top + 1] = 0
            top += 1
        elif stage[top] == 1:
            stage[top] = 2
            los[top + 1] = los[top] + half
            ns[top + 1] = m - half
            stage[top + 1] = 0
            top += 1
        else:
            vals[nvals - 2] = vals[nvals - 2] + vals[nvals - 1]
            nvals -= 1
            top -= 1
    return vals[0]


@njit(cache=True)
def _point_dissim(Xnum, Xcat, i, cnum, ccat, gamma, out, buf):
    """Dissimilarity of row ``i`` to every prototype, written into ``out``."""
    k, p = cnum.shape
    q = ccat.shape[1]
    for c in range(k):
        if p < 8:
            # numpy sums fewer than 8 terms left to right from 0.0: same
            # result as _pairwise_sum without the buffer round trip.
            num = 0.0
            for a in range(p):
                d = cnum[c, a] - Xnum[i, a]
                num += d * d
        else:
            for a in range(p):
                d = cnum[c, a] - Xnum[i, a]
                buf[a] = d * d
            num = _pairwise_sum(buf, 0, p)
        mismatches = 0
        for a in range(q):
            if ccat[c, a] != Xcat[i, a]:
                mismatches += 1
        out[c] = num + gamma * mismatches


@njit(cache=True)
def _argmin(v):
    """Index of the first minimum (np.argmin's tie rule)."""
    best = 0
    for c in range(1, v.shape[0]):
        if v[c] < v[best]:
            best = c
    return best


@njit(cache=True)
def _assign_cost(Xnum, Xcat, cnum, ccat, gamma):
    """Closest prototype of every row and the total cost.

    Equivalent of kmodes' ``labels_cost``: the cost is accumulated row by row
    in row order, as kmodes does, so both engines compare equal costs equal
    in the convergence test.
    """
    n, p = Xnum.shape
    k = cnum.shape[0]
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(k)
    buf = np.empty(max(p, 1))
    cost = 0.0
    for i in range(n):
        _point_dissim(Xnum, Xcat, i, cnum, ccat, gamma, dist, buf)
        best = _argmin(dist)
        labels[i] = best
        cost += dist[best]
    return labels, cost


@njit(cache=True)
def _dissim_matrix(Xnum, Xcat, cnum, ccat, gamma):
    """(n, k) dissimilarities, same arithmetic as :func:`_assign_cost`."""
    n, p = Xnum.shape
    k = cnum.shape[0]
    out = np.empty((n, k))
    buf = np.empty(max(p, 1))
    for i in range(n):
        _point_dissim(Xnum, Xcat, i, cnum, ccat, gamma, out[i], buf)
    return out


@njit(cache=True)
def _initial_stats(Xnum, Xcat, cnum, ccat, gamma, n_levels):
    """Assign every row to its closest initial prototype (prototypes frozen).

    Returns the membership and the per-cluster running statistics the online
    loop keeps up to date: numeric sums, member counts and category counts.
    Sums are accumulated in row order like kmodes, so the means that follow
    are bit-identical.
    """
    n, p = Xnum.shape
    k, q = ccat.shape
    member = np.empty(n, dtype=np.int64)
    attr_sum = np.zeros((k, p))
    memb_sum = np.zeros(k)
    freq = np.zeros((k, q, n_levels), dtype=np.int64)
    dist = np.empty(k)
    buf = np.empty(max(p, 1))
    for i in range(n):
        _point_dissim(Xnum, Xcat, i, cnum, ccat, gamma, dist, buf)
        c = _argmin(dist)
        member[i] = c
        memb_sum[c] += 1.0
        for a in range(p):
            attr_sum[c, a] += Xnum[i, a]
        for a in range(q):
            freq[c, a, Xcat[i, a]] += 1
    return member, attr_sum, memb_sum, freq


@njit(cache=True)
def _mode(counts):
    """Most frequent code; ties go to the smallest code (kmodes' rule)."""
    best = 0
    for v in range(1, counts.shape[0]):
        if counts[v] > counts[best]:
            best = v
    return best


@njit(cache=True)
def _centroids_from_stats(attr_sum, memb_sum, freq, cnum, ccat):
    """Means and modes of the (all non-empty) clusters, in place."""
    k, p = attr_sum.shape
    q = ccat.shape[1]
    for c in range(k):
        for a in range(p):
            cnum[c, a] = attr_sum[c, a] / memb_sum[c]
        for a in range(q):
            ccat[c, a] = _mode(freq[c, a])


@njit(cache=True)
def _move_point(i, to, frm, Xnum, Xcat, member, attr_sum, memb_sum, freq, ccat):
    """Move row ``i`` from cluster ``frm`` to ``to``, updating the statistics.

    Mirrors kmodes' ``_move_point_num`` + ``_move_point_cat``, including the
    incremental mode update: the receiving cluster's mode changes only when
    the moved value now strictly outnumbers it, and the losing cluster's mode
    is recomputed (smallest code among ties) only when it lost its own mode
    value.  These tie rules decide which prototype later rows see, so they
    have to match.  Numeric prototypes are *not* updated here (the caller
    decides, as kmodes does).
    """
    p = Xnum.shape[1]
    q = Xcat.shape[1]
    for a in range(p):
        attr_sum[to, a] += Xnum[i, a]
        attr_sum[frm, a] -= Xnum[i, a]
    memb_sum[to] += 1.0
    memb_sum[frm] -= 1.0
    member[i] = to
    for a in range(q):
        v = Xcat[i, a]
        freq[to, a, v] += 1
        if freq[to, a, ccat[to, a]] < freq[to, a, v]:
            ccat[to, a] = v
        freq[frm, a, v] -= 1
        if ccat[frm, a] == v:
            ccat[frm, a] = _mode(freq[frm, a])


@njit(cache=True)
def _online_epoch(start, Xnum, Xcat, cnum, ccat, gamma, member, attr_sum,
                  memb_sum, freq, moves):
    """One pass of Huang's online k-prototypes from row ``start`` on.

    Each row goes to its closest current prototype; on a move the two
    prototypes involved are updated at once, so later rows in the same pass
    see them.  When a move empties a cluster the pass stops and returns
    ``(moves, i, emptied_cluster)`` so that the caller can re-seed it with the
    run's numpy ``RandomState`` (the same random draw kmodes makes), then
    resume at ``i + 1``.  A finished pass returns ``(moves, -1, -1)``.
    """
    n, p = Xnum.shape
    k = cnum.shape[0]
    dist = np.empty(k)
    buf = np.empty(max(p, 1))
    for i in range(start, n):
        _point_dissim(Xnum, Xcat, i, cnum, ccat, gamma, dist, buf)
        to = _argmin(dist)
        frm = member[i]
        if to == frm:
            continue
        moves += 1
        _move_point(i, to, frm, Xnum, Xcat, member, attr_sum, memb_sum, freq, ccat)
        for a in range(p):
            for c in (to, frm):
                if memb_sum[c] != 0.0:
                    cnum[c, a] = attr_sum[c, a] / memb_sum[c]
                else:
                    cnum[c, a] = 0.0
        if memb_sum[frm] == 0.0:
            return moves, i, frm
    return moves, -1, -1


# --------------------------------------------------------------------------
# Initialisation (vectorised numpy, same random draws as kmodes).
# --------------------------------------------------------------------------


@njit(cache=True)
def _mismatches(Xcat, proto):
    """Per row, the attributes that differ from ``proto`` (kmodes' ``matching_dissim``), as int64."""
    n, q = Xcat.shape
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        c = 0
        for a in range(q):
            if Xcat[i, a] != proto[a]:
                c += 1
        out[i] = c
    return out


@njit(cache=True)
def _first_free(Xcat, ndx, cent):
    """The first row in ``ndx`` order, short of the last, that equals no prototype row; else the last."""
    n = ndx.shape[0]
    k, q = cent.shape
    for j in range(n - 1):
        i = ndx[j]
        dup = False
        for c in range(k):
            same = True
            for a in range(q):
                if Xcat[i, a] != cent[c, a]:
                    same = False
                    break
            if same:
                dup = True
                break
        if not dup:
            return i
    return ndx[n - 1]


def _init_huang(Xcat, n_clusters, rs):
    """Categorical prototypes as in kmodes' ``init_huang``.

    Each attribute of each prototype is drawn from that attribute's empirical
    distribution (``rs.choice`` on the sorted column, exactly kmodes' draw),
    then each prototype is replaced by the closest row that is not already a
    prototype, scanning rows in kmodes' ``np.argsort`` order. The mismatch
    counts (the same int64 array kmodes sorts, so the same order) and the scan
    are numba kernels: numpy's reductions over a few columns per row were 40%
    of a clusterboot refit's time at k = 9 on the bank data.
    """
    n, q = Xcat.shape
    cent = np.empty((n_clusters, q), dtype=np.int64)
    for a in range(q):
        cent[:, a] = rs.choice(np.sort(Xcat[:, a]), n_clusters)
    for ik in range(n_clusters):
        # Same integer array as kmodes' matching_dissim -> same argsort order.
        ndx = np.argsort(_mismatches(Xcat, cent[ik]))
        # kmodes drops leading candidates equal to any current prototype row
        # but never the last one, which it keeps even if it is a duplicate.
        cent[ik] = Xcat[_first_free(Xcat, ndx, cent)]
    return cent


def _init_cao(Xcat, n_clusters):
    """Categorical prototypes as in kmodes' ``init_cao`` (density x distance)."""
    n, q = Xcat.shape
    dens = np.zeros(n)
    for a in range(q):
        counts = np.bincount(Xcat[:, a])
        # Same operation order as kmodes: freq / n / n_attrs, summed per attr.
        dens += counts[Xcat[:, a]] / float(n) / float(q)
    cent = np.empty((n_clusters, q), dtype=np.int64)
    cent[0] = Xcat[np.argmax(dens)]
    # kmodes recomputes min over all previous prototypes each time; a running
    # minimum gives the same numbers in O(n q k) instead of O(n q k^2).
    min_dd = np.full(n, np.inf)
    for ik in range(1, n_clusters):
        min_dd = np.minimum(min_dd, np.sum(Xcat != cent[ik - 1], axis=1) * dens)
        cent[ik] = Xcat[np.argmax(min_dd)]
    return cent


def _start_run(Xnum, Xcat, n_clusters, gamma, init, rs, n_levels, meanx, stdx):
    """Initial prototypes of one run plus the first assignment, like kmodes.

    Retries while an initialisation leaves a cluster empty, switching to
    random initialisation after ``MAX_INIT_TRIES`` tries, as kmodes does.

    Returns
    -------
    init_num, init_cat : ndarray
        The initial prototypes that were kept (dense categorical codes).
    member, attr_sum, memb_sum, freq : ndarray
        First assignment and its per-cluster statistics.
    """
    n, p = Xnum.shape
    tries = 0
    while True:
        tries += 1
        if isinstance(init, tuple):
            cnum, ccat = init[0].copy(), init[1].copy()
        else:
            if init == "huang":
                ccat = _init_huang(Xcat, n_clusters, rs)
            elif init == "cao":
                ccat = _init_cao(Xcat, n_clusters)
            else:
                ccat = Xcat[rs.choice(n, n_clusters)].astype(np.int64)
            # kmodes draws the numeric part around the data mean after the
            # categorical part, from the same generator.
            cnum = meanx + rs.randn(n_clusters, p) * stdx
        cnum = np.ascontiguousarray(cnum, dtype=np.float64)
        ccat = np.ascontiguousarray(ccat, dtype=np.int64)
        member, attr_sum, memb_sum, freq = _initial_stats(Xnum, Xcat, cnum, ccat,
                                                          gamma, n_levels)
        if memb_sum.min() > 0:
            return cnum, ccat, member, attr_sum, memb_sum, freq
        if tries == MAX_INIT_TRIES:
            init = "random"
        elif tries == RAISE_INIT_TRIES:
            raise ValueError("K-Prototypes could not find initial prototypes without "
                             "empty clusters; pass initial prototypes explicitly.")


def _lloyd_centroids(Xnum, Xcat, labels, cnum, ccat, n_levels):
    """Means and modes of a labelling (vectorised); empty clusters keep theirs."""
    k, p = cnum.shape
    q = ccat.shape[1]
    counts = np.bincount(labels, minlength=k)
    full = counts > 0
    new_num = cnum.copy()
    new_cat = ccat.copy()
    sums = np.empty((k, p))
    for a in range(p):
        sums[:, a] = np.bincount(labels, weights=Xnum[:, a], minlength=k)
    new_num[full] = sums[full] / counts[full, None]
    offset = labels * n_levels
    for a in range(q):
        table = np.bincount(offset + Xcat[:, a], minlength=k * n_levels).reshape(k, n_levels)
        new_cat[full, a] = table.argmax(axis=1)[full]
    return new_num, new_cat


def _run_fast(Xnum, Xcat, n_clusters, gamma, init, max_iter, seed, n_levels, meanx, stdx):
    """One full fast-engine run from one seed. Returns a dict of results."""
    rs = check_random_state(seed)
    init_num, init_cat, member, attr_sum, memb_sum, freq = _start_run(
        Xnum, Xcat, n_clusters, gamma, init, rs, n_levels, meanx, stdx)
    cnum, ccat = init_num.copy(), init_cat.copy()
    _centroids_from_stats(attr_sum, memb_sum, freq, cnum, ccat)
    labels, cost = _assign_cost(Xnum, Xcat, cnum, ccat, gamma)

    # Phase 1: kmodes' online iterations and its stopping rule (no moves, or
    # the cost did not decrease), step for step.
    itr = 0
    converged = False
    while itr < max_iter and not converged:
        itr += 1
        moves, start = 0, 0
        while True:
            moves, stop, emptied = _online_epoch(start, Xnum, Xcat, cnum, ccat, gamma,
                                                 member, attr_sum, memb_sum, freq, moves)
            if stop < 0:
                break
            # Re-seed the emptied cluster with a random member of the largest
            # cluster: same draw as kmodes. Like kmodes, the numeric
            # prototypes are left as they are until the next move touches them.
            from_clust = int(np.argmax(memb_sum))
            rindx = rs.choice(np.flatnonzero(member == from_clust))
            _move_point(rindx, emptied, from_clust, Xnum, Xcat, member,
                        attr_sum, memb_sum, freq, ccat)
            start = stop + 1
        labels, new_cost = _assign_cost(Xnum, Xcat, cnum, ccat, gamma)
        converged = moves == 0 or new_cost >= cost
        cost = new_cost

    # Phase 2: batch (Lloyd) steps from where kmodes would stop. Each step
    # (means/modes of the current labels, then reassignment) cannot raise the
    # cost; we keep it only if it lowers the cost, so the result is never
    # worse than kmodes'. kmodes can stop on a cost increase, on max_iter, or
    # with prototypes that are not the means of their members (re-seeding),
    # and this recovers those cases.
    for _ in range(max_iter):
        new_num, new_cat = _lloyd_centroids(Xnum, Xcat, labels, cnum, ccat, n_levels)
        new_labels, new_cost = _assign_cost(Xnum, Xcat, new_num, new_cat, gamma)
        if not cost - new_cost > _POLISH_RTOL * abs(cost):
            break
        cnum, ccat, labels, cost = new_num, new_cat, new_labels, new_cost
        itr += 1

    return {"cnum": cnum, "ccat": ccat, "labels": labels, "cost": float(cost),
            "n_iter": itr, "init_num": init_num, "init_cat": init_cat}


# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------


def _check_data(X_num, X_cat, n_clusters=None):
    """Validate and convert inputs; raise ValueError with a clear message."""
    X_num = np.asarray(X_num)
    X_cat = np.asarray(X_cat)
    if X_num.ndim != 2 or X_cat.ndim != 2:
        raise ValueError(f"X_num and X_cat must be 2-D arrays, got {X_num.ndim}-D and "
                         f"{X_cat.ndim}-D")
    if X_num.shape[0] != X_cat.shape[0]:
        raise ValueError(f"X_num has {X_num.shape[0]} rows but X_cat has {X_cat.shape[0]}")
    if X_num.shape[1] < 1 or X_cat.shape[1] < 1:
        raise ValueError("K-Prototypes needs at least one numeric and one categorical "
                         f"column, got {X_num.shape[1]} and {X_cat.shape[1]}")
    if not (np.issubdtype(X_num.dtype, np.number) or X_num.dtype == bool):
        raise ValueError(f"X_num must be numeric, got dtype {X_num.dtype}")
    X_num = np.ascontiguousarray(X_num, dtype=np.float64)
    if not np.isfinite(X_num).all():
        raise ValueError("X_num contains NaN or infinite values")
    if not (np.issubdtype(X_cat.dtype, np.integer) or X_cat.dtype == bool):
        raise ValueError(f"X_cat must hold integer category codes, got dtype {X_cat.dtype}")
    X_cat = np.ascontiguousarray(X_cat, dtype=np.int64)
    if n_clusters is not None and X_num.shape[0] < n_clusters:
        raise ValueError(f"{X_num.shape[0]} rows cannot form {n_clusters} clusters "
                         "(need n_samples >= n_clusters)")
    return X_num, X_cat


def _check_init(init, n_clusters, p, q):
    """Normalise ``init`` to a lower-case method name or a (num, cat) tuple."""
    if isinstance(init, str):
        if init.lower() not in _INIT_METHODS:
            raise ValueError(f"init must be 'Huang', 'Cao', 'random' or (centroids_num, "
                             f"centroids_cat), got {init!r}")
        return init.lower()
    if isinstance(init, (tuple, list)) and len(init) == 2:
        num = np.asarray(init[0])
        cat = np.asarray(init[1])
        if num.shape != (n_clusters, p) or cat.shape != (n_clusters, q):
            raise ValueError(f"explicit init must have shapes ({n_clusters}, {p}) and "
                             f"({n_clusters}, {q}), got {num.shape} and {cat.shape}")
        if not np.issubdtype(cat.dtype, np.integer):
            if not np.array_equal(cat, np.round(cat)):
                raise ValueError("categorical initial prototypes must be integer codes")
        num = np.ascontiguousarray(num, dtype=np.float64)
        if not np.isfinite(num).all():
            raise ValueError("numeric initial prototypes contain NaN or infinite values")
        return (num, np.ascontiguousarray(cat, dtype=np.int64))
    raise ValueError("init must be 'Huang', 'Cao', 'random' or a (centroids_num, "
                     "centroids_cat) pair")


def _encode(X_cat, extra=None):
    """Dense per-column codes 0..L_a-1 and the sorted code books to decode them.

    The map is monotone, so kmodes' "smallest code wins ties" rule and the
    sorted draws of Huang's initialisation are unchanged; it only keeps the
    count tables of the online loop small. Values of ``extra`` (explicit
    initial prototypes) get codes too, even if no row has them.
    """
    q = X_cat.shape[1]
    books = []
    dense = np.empty_like(X_cat)
    for a in range(q):
        col = X_cat[:, a] if extra is None else np.concatenate([X_cat[:, a], extra[:, a]])
        book = np.unique(col)
        books.append(book)
        dense[:, a] = np.searchsorted(book, X_cat[:, a])
    n_levels = max(len(b) for b in books)
    return dense, books, n_levels


def _apply_books(cat, books):
    return np.column_stack([np.searchsorted(b, cat[:, a]) for a, b in enumerate(books)])


def _decode(cat, books):
    return np.column_stack([b[cat[:, a]] for a, b in enumerate(books)]).astype(np.int64)


def _count_distinct_rows(X, limit):
    """Number of distinct rows of ``X`` if it is at most ``limit``, else some
    count above ``limit``.

    Only "fewer than / exactly / more than n_clusters distinct rows" matters,
    so growing prefixes avoid sorting all rows of a large data set.
    """
    n = X.shape[0]
    end = min(n, 4 * limit + 64)
    while True:
        count = np.unique(X[:end], axis=0).shape[0]
        if count > limit or end == n:
            return count
        end = min(n, 2 * end)


def initial_prototypes(X_num, X_cat, n_clusters, init="Huang", gamma=None,
                       random_state=None):
    """Initial prototypes of one K-Prototypes run, drawn exactly as kmodes does.

    Parameters
    ----------
    X_num : array-like of shape (n_samples, n_numeric)
        Scaled numeric columns.
    X_cat : array-like of int, shape (n_samples, n_categorical)
        Category codes.
    n_clusters : int
        Number of prototypes.
    init : {'Huang', 'Cao', 'random'}, default='Huang'
        Initialisation method (numeric part: data mean + Gaussian noise scaled
        by the column standard deviations, as in kmodes).
    gamma : float, optional
        Categorical weight, used to detect initialisations that leave a
        cluster empty (which are redrawn). Default ``0.5 * mean std`` of
        ``X_num``.
    random_state : int, RandomState or None
        Generator of this run (kmodes' per-run generator).

    Returns
    -------
    centroids_num : ndarray of shape (n_clusters, n_numeric)
    centroids_cat : ndarray of int64, shape (n_clusters, n_categorical)
        Ready to pass as ``init=(centroids_num, centroids_cat)`` to
        :class:`KPrototypesSegmenter` (copy them before handing them to
        kmodes, which overwrites its ``init`` arrays in place).
    """
    X_num, X_cat = _check_data(X_num, X_cat, n_clusters)
    method = _check_init(init, n_clusters, X_num.shape[1], X_cat.shape[1])
    if not isinstance(method, str):
        raise ValueError("init must be a method name here")
    dense, books, n_levels = _encode(X_cat)
    if gamma is None:
        gamma = 0.5 * np.mean(X_num.std(axis=0))
    rs = check_random_state(random_state)
    num, cat = _start_run(X_num, dense, n_clusters, float(gamma), method, rs, n_levels,
                          np.mean(X_num, axis=0), np.std(X_num, axis=0))[:2]
    return num, _decode(cat, books)


# --------------------------------------------------------------------------
# Estimator
# --------------------------------------------------------------------------


class KPrototypesSegmenter(ClusterMixin, TransformerMixin, BaseEstimator):
    """K-Prototypes (Huang 1997) for mixed numeric + categorical data.

    A scikit-learn clusterer that takes one table, as kmodes does:
    ``fit(X, categorical=[...])`` with the indices of the categorical columns
    (their values are category codes; any numbers are accepted, each distinct
    value is a level). ``categorical`` may also be given to the constructor, so
    that ``clone`` keeps it. ``fit_arrays(X_num, X_cat)`` is the same fit on the
    two blocks.

    Parameters
    ----------
    n_clusters : int, default=5
        Number of clusters (prototypes).
    gamma : float or None, default=None
        Weight of one categorical mismatch relative to squared Euclidean
        distance. ``None`` uses kmodes' default, half the mean standard
        deviation of the numeric columns.
    init : {'Huang', 'Cao', 'random'} or (centroids_num, centroids_cat), default='Huang'
        Initialisation method, or explicit initial prototypes of shapes
        ``(n_clusters, n_numeric)`` and ``(n_clusters, n_categorical)``. With
        explicit prototypes a single run is made (``n_init`` is ignored, as in
        kmodes).
    n_init : int, default=10
        Number of runs with different seeds; the lowest cost wins (first one
        on ties).
    max_iter : int, default=100
        Maximum number of online passes over the data per run (the fast engine
        may add up to as many batch refinement steps).
    engine : {'fast', 'kmodes'}, default='fast'
        ``'kmodes'`` delegates to :class:`kmodes.kprototypes.KPrototypes`;
        ``'fast'`` is the numpy/numba implementation, which from the same
        start never ends at a higher cost.
    random_state : int, RandomState or None, default=None
        Seed. Per-run seeds are drawn from it as kmodes draws them, so both
        engines start their runs from the same initial prototypes.
    categorical : list of int or None, default=None
        Indices of the categorical columns of ``X`` (``fit``'s own argument wins).

    Attributes
    ----------
    labels_ : ndarray of int64, shape (n_samples,)
        Closest prototype of every row.
    cluster_centroids_num_ : ndarray of shape (n_clusters, n_numeric)
    cluster_centroids_cat_ : ndarray of int64, shape (n_clusters, n_categorical)
    cost_ : float
        Sum over rows of the dissimilarity to the closest prototype.
    n_iter_ : int
        Iterations of the best run (fast engine: online passes plus accepted
        batch refinement steps).
    gamma_ : float
        The gamma used.
    initial_centroids_ : tuple of ndarray
        ``(centroids_num, centroids_cat)`` the best run started from.
    """

    def __init__(self, n_clusters=5, gamma=None, init="Huang", n_init=10, max_iter=100,
                 engine="fast", random_state=None, categorical=None):
        self.n_clusters = n_clusters
        self.gamma = gamma
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.engine = engine
        self.random_state = random_state
        self.categorical = categorical

    # ------------------------------------------------------ one-table API
    def _split(self, X, reset):
        X = validate_data(self, X, reset=reset, dtype=np.float64, ensure_min_samples=1)
        if reset:
            cat = self.categorical if self._fit_categorical is None else self._fit_categorical
            cat = sorted({int(c) for c in (cat or [])})
            p = X.shape[1]
            if any(c < 0 or c >= p for c in cat):
                raise ValueError(f"categorical indices {cat} out of range for {p} feature(s)")
            if not cat or len(cat) == p:
                raise ValueError("K-Prototypes needs at least one numeric and one categorical column; got "
                                 f"{p} feature(s), {len(cat)} of them categorical")
            self.categorical_ = np.asarray(cat, dtype=np.int64)
            self.numeric_ = np.asarray([j for j in range(p) if j not in cat], dtype=np.int64)
            # category values -> codes 0..L-1 in sorted order (order-preserving: the engines
            # see the same data as with the original codes)
            self.categories_ = [np.unique(X[:, j]) for j in cat]
        Xn = np.ascontiguousarray(X[:, self.numeric_])
        Xc = np.empty((len(X), len(self.categorical_)), dtype=np.int64)
        for a, (j, levels) in enumerate(zip(self.categorical_, self.categories_)):
            pos = np.clip(np.searchsorted(levels, X[:, j]), 0, len(levels) - 1)
            Xc[:, a] = np.where(levels[pos] == X[:, j], pos, -1)  # unseen level: -1, never matches
        return Xn, Xc

    def fit(self, X, y=None, categorical=None):
        """Cluster the rows of one table; `categorical`: indices of its categorical columns."""
        self._fit_categorical = categorical
        try:
            Xn, Xc = self._split(X, reset=True)
        finally:
            del self._fit_categorical
        init = self.init
        if isinstance(init, tuple):  # explicit prototypes in the caller's codes -> ours
            codes = np.asarray(init[1])
            mapped = np.empty(codes.shape, dtype=np.int64)
            for a, levels in enumerate(self.categories_):
                pos = np.clip(np.searchsorted(levels, codes[:, a]), 0, len(levels) - 1)
                mapped[:, a] = np.where(levels[pos] == codes[:, a], pos, -1)
            init = (init[0], mapped)
        self._fit_core(Xn, Xc, init)
        return self

    def predict(self, X):
        """Closest prototype of every row (first one on ties)."""
        check_is_fitted(self, "categories_")
        Xn, Xc = self._split(X, reset=False)
        return self.predict_arrays(Xn, Xc)

    def transform(self, X):
        """Dissimilarity of every row to every prototype, shape (n_samples, n_clusters)."""
        check_is_fitted(self, "categories_")
        Xn, Xc = self._split(X, reset=False)
        return self.transform_arrays(Xn, Xc)

    def fit_predict(self, X, y=None, categorical=None):
        return self.fit(X, categorical=categorical).labels_

    # ---------------------------------------------------------------- fit
    def fit_arrays(self, X_num, X_cat):
        """Cluster the rows.

        Parameters
        ----------
        X_num : array-like of float, shape (n_samples, n_numeric)
            Numeric columns, already scaled.
        X_cat : array-like of int, shape (n_samples, n_categorical)
            Category codes (e.g. 0..L-1 per column).

        Returns
        -------
        self : KPrototypesSegmenter

        Raises
        ------
        ValueError
            On inconsistent shapes, non-finite numbers, fewer rows (or
            distinct rows) than ``n_clusters``, or invalid parameters.
        """
        return self._fit_core(X_num, X_cat, self.init)

    def _fit_core(self, X_num, X_cat, init):
        k = self.n_clusters
        if not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"n_clusters must be a positive integer, got {k!r}")
        if not isinstance(self.n_init, numbers.Integral) or self.n_init < 1:
            raise ValueError(f"n_init must be a positive integer, got {self.n_init!r}")
        if not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 0:
            raise ValueError(f"max_iter must be a non-negative integer, got {self.max_iter!r}")
        if self.engine not in _ENGINES:
            raise ValueError(f"engine must be one of {_ENGINES}, got {self.engine!r}")
        if self.gamma is not None and not (np.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma must be a non-negative number or None, got {self.gamma!r}")
        X_num, X_cat = _check_data(X_num, X_cat, k)
        init = _check_init(init, k, X_num.shape[1], X_cat.shape[1])
        n_distinct = _count_distinct_rows(np.hstack([X_num, X_cat.astype(np.float64)]), k)
        if n_distinct < k:
            raise ValueError(f"only {n_distinct} distinct rows, cannot form {k} clusters")

        self.gamma_ = float(0.5 * np.mean(X_num.std(axis=0)) if self.gamma is None
                            else self.gamma)
        if self.engine == "kmodes":
            self._fit_kmodes(X_num, X_cat, init, n_distinct)
        else:
            self._fit_fast(X_num, X_cat, init, n_distinct)
        return self

    def _fit_fast(self, X_num, X_cat, init, n_distinct):
        k = self.n_clusters
        explicit = isinstance(init, tuple)
        dense, books, n_levels = _encode(X_cat, init[1] if explicit else None)
        if n_distinct == k:
            # kmodes' shortcut: as many distinct rows as clusters -> each
            # distinct row is a prototype, cost 0, no iterations.
            # Same row order as kmodes (its get_unique_rows iterates a set of
            # row tuples; float hashing is deterministic), so both engines
            # number the clusters alike.
            rows = np.vstack(list({tuple(row) for row in
                                   np.hstack([X_num, X_cat.astype(np.float64)])}))
            num, cat = rows[:, :X_num.shape[1]], rows[:, X_num.shape[1]:].astype(np.int64)
            self._set_result(num, cat, 0, (num.copy(), cat.copy()), X_num, X_cat)
            return
        if explicit:
            init = (init[0], _apply_books(init[1], books))
        # Per-run seeds drawn as kmodes draws them (explicit init: one run).
        n_init = 1 if explicit else self.n_init
        seeds = check_random_state(self.random_state).randint(np.iinfo(np.int32).max,
                                                              size=n_init)
        meanx, stdx = np.mean(X_num, axis=0), np.std(X_num, axis=0)
        best = None
        for seed in seeds:
            res = _run_fast(X_num, dense, k, self.gamma_, init, self.max_iter, seed,
                            n_levels, meanx, stdx)
            if best is None or res["cost"] < best["cost"]:
                best = res
        self._set_result(best["cnum"], _decode(best["ccat"], books), best["n_iter"],
                         (best["init_num"], _decode(best["init_cat"], books)),
                         X_num, X_cat, labels=best["labels"], cost=best["cost"])

    def _fit_kmodes(self, X_num, X_cat, init, n_distinct):
        from kmodes.kprototypes import KPrototypes

        k = self.n_clusters
        p, q = X_num.shape[1], X_cat.shape[1]
        # kmodes takes one matrix plus the indices of the categorical columns;
        # integer codes are exact in float64.
        X = np.hstack([X_num, X_cat.astype(np.float64)])
        dense, books, n_levels = _encode(X_cat)
        explicit = isinstance(init, tuple)
        if explicit:
            # kmodes wants initial prototypes in its own encoding (index in
            # the sorted unique values of each column), which is `books`.
            cat = init[1]
            for a, b in enumerate(books):
                if not np.isin(cat[:, a], b).all():
                    raise ValueError("engine='kmodes' needs initial categorical prototypes "
                                     "whose codes occur in X_cat")
            # Copies: kmodes writes its running prototypes into these arrays.
            km_init = [init[0].copy(), _apply_books(cat, books).astype(np.uint16)]
            init = (init[0], _apply_books(cat, books))
        else:
            km_init = self.init
        rs = check_random_state(self.random_state)
        replay = np.random.RandomState()
        replay.set_state(rs.get_state())
        model = KPrototypes(n_clusters=k, max_iter=self.max_iter, init=km_init,
                            n_init=self.n_init, gamma=self.gamma_, random_state=rs,
                            n_jobs=1)
        model.fit(X, categorical=list(range(p, p + q)))
        self.kmodes_model_ = model
        centroids = np.asarray(model.cluster_centroids_, dtype=np.float64)
        num = centroids[:, :p].copy()
        cat = np.rint(centroids[:, p:]).astype(np.int64)
        labels = None if model.labels_ is None else np.asarray(model.labels_, dtype=np.int64)
        cost = float(model.cost_)
        if n_distinct == k:
            initial = (num.copy(), cat.copy())
        else:
            initial = self._kmodes_initial(X_num, dense, books, n_levels, init, replay,
                                           float(model.epoch_costs_[0]))
        self._set_result(num, cat, int(model.n_iter_), initial, X_num, X_cat,
                         labels=labels, cost=cost)

    def _kmodes_initial(self, X_num, dense, books, n_levels, init, replay, first_cost):
        """Initial prototypes of kmodes' best run (kmodes does not expose them).

        Replays kmodes' per-run seeds and initialisation, and picks the first
        run whose cost after the initial prototype update equals the best
        run's first recorded epoch cost.
        """
        n_init = 1 if isinstance(init, tuple) else self.n_init
        seeds = replay.randint(np.iinfo(np.int32).max, size=n_init)
        meanx, stdx = np.mean(X_num, axis=0), np.std(X_num, axis=0)
        candidates = []
        for seed in seeds:
            out = _start_run(X_num, dense, self.n_clusters, self.gamma_, init,
                             check_random_state(seed), n_levels, meanx, stdx)
            init_num, init_cat = out[0], out[1]
            cnum, ccat = init_num.copy(), init_cat.copy()
            _centroids_from_stats(out[3], out[4], out[5], cnum, ccat)
            cost0 = _assign_cost(X_num, dense, cnum, ccat, self.gamma_)[1]
            candidates.append((abs(cost0 - first_cost), init_num, init_cat))
            if cost0 == first_cost:
                break
        _, init_num, init_cat = min(candidates, key=lambda c: c[0])
        return init_num, _decode(init_cat, books)

    def _set_result(self, num, cat, n_iter, initial, X_num, X_cat, labels=None, cost=None):
        self.cluster_centroids_num_ = np.ascontiguousarray(num, dtype=np.float64)
        self.cluster_centroids_cat_ = np.ascontiguousarray(cat, dtype=np.int64)
        if labels is None or cost is None:
            labels, cost = _assign_cost(X_num, X_cat, self.cluster_centroids_num_,
                                        self.cluster_centroids_cat_, self.gamma_)
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.cost_ = float(cost)
        self.n_iter_ = int(n_iter)
        self.initial_centroids_ = (np.asarray(initial[0], dtype=np.float64),
                                   np.asarray(initial[1], dtype=np.int64))

    # ---------------------------------------------------- predict/transform
    def _check_fitted_data(self, X_num, X_cat):
        if not hasattr(self, "cluster_centroids_num_"):
            raise ValueError("KPrototypesSegmenter is not fitted yet; call fit first")
        X_num, X_cat = _check_data(X_num, X_cat)
        if X_num.shape[1] != self.cluster_centroids_num_.shape[1] or \
                X_cat.shape[1] != self.cluster_centroids_cat_.shape[1]:
            raise ValueError(f"expected {self.cluster_centroids_num_.shape[1]} numeric and "
                             f"{self.cluster_centroids_cat_.shape[1]} categorical columns, "
                             f"got {X_num.shape[1]} and {X_cat.shape[1]}")
        return X_num, X_cat

    def transform_arrays(self, X_num, X_cat):
        """Dissimilarity of every row to every prototype.

        Parameters
        ----------
        X_num : array-like of float, shape (n_samples, n_numeric)
        X_cat : array-like of int, shape (n_samples, n_categorical)
            Codes unseen in training simply never match a prototype.

        Returns
        -------
        ndarray of shape (n_samples, n_clusters)
        """
        X_num, X_cat = self._check_fitted_data(X_num, X_cat)
        return _dissim_matrix(X_num, X_cat, self.cluster_centroids_num_,
                              self.cluster_centroids_cat_, self.gamma_)

    def predict_arrays(self, X_num, X_cat):
        """Closest prototype of every row (first one on ties).

        Parameters
        ----------
        X_num : array-like of float, shape (n_samples, n_numeric)
        X_cat : array-like of int, shape (n_samples, n_categorical)

        Returns
        -------
        ndarray of int64, shape (n_samples,)
        """
        X_num, X_cat = self._check_fitted_data(X_num, X_cat)
        return _assign_cost(X_num, X_cat, self.cluster_centroids_num_,
                            self.cluster_centroids_cat_, self.gamma_)[0]


# pickles (model.joblib) and reprs name the public module, as before the estimator moved here
KPrototypesSegmenter.__module__ = "segreport.methods.kprototypes"
