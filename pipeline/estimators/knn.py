"""k-nearest-neighbour estimators: KSG mutual information, Kozachenko-Leonenko entropies.

    from pipeline.estimators.knn import ksg_mutual_information, kl_entropy
    ksg_mutual_information(a, b, k=5)        # bits; a 1-D integer b means discrete labels
    kl_entropy(a, k=5, whiten=True)          # bits

Neighbours come from scipy's cKDTree (max-norm for KSG, Euclidean for KL). Trees slow down
above ~20 dimensions; the "cuda" device uses brute-force distances on the GPU instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln, ndtri

from pipeline.estimators._common import LOG2, as_labels, as_samples, is_discrete, row_symbols, same_length

TRANSFORMS = ("auto", "normal_scores", "standardise")


def standardise(a: np.ndarray) -> np.ndarray:
    std = a.std(axis=0)
    return (a - a.mean(axis=0)) / np.where(std > 0, std, 1.0)


def normal_scores(a: np.ndarray) -> np.ndarray:
    """Each coordinate replaced by the standard normal quantile of its rank (ties averaged).

    A strictly increasing map per coordinate, so MI is unchanged, while monotone distortions of
    the marginals (saturating or heavy-tailed units) do not bias the neighbour counts.
    """
    from scipy.stats import rankdata  # late: scipy.stats takes 0.6 s to import; only kNN needs it

    ranks = rankdata(a, axis=0)
    return ndtri(ranks / (len(a) + 1))


def _transform(a: np.ndarray, transform: str) -> np.ndarray:
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    return normal_scores(a) if transform == "normal_scores" else standardise(a)


def _jitter(a: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    return a + scale * rng.standard_normal(a.shape)


ALGORITHMS = ("auto", "tree", "brute")

# n -> (dims a side, layer dims with labels) up to which KSG (k = 5) held max(0.1 bit, 15%) on
# every case of `python -m benchmarks.ksg_bias` (docs/estimators.md, "Where KSG is biased").
KSG_RELIABLE_DIMS: dict[int, tuple[int, int]] = {500: (2, 8), 1000: (2, 8), 2000: (3, 10), 5000: (4, 10)}


def ksg_biased(n: int, dim_a: int, dim_b: int | None = None) -> bool:
    """Whether KSG on n samples of these dimensions (`dim_b` None: labels) lies outside the rule.

    The rule is the measured table at the largest n of `KSG_RELIABLE_DIMS` not above this n;
    two continuous sides count by the larger. Fewer samples than the table's least are flagged.
    """
    measured = [size for size in KSG_RELIABLE_DIMS if size <= n]
    if not measured:
        return True
    pairs, labels = KSG_RELIABLE_DIMS[max(measured)]
    return dim_a > labels if dim_b is None else max(dim_a, dim_b) > pairs


def _tree(device: str, algorithm: str, shape: tuple[int, int], rule=None) -> bool:
    """cKDTree on the CPU, or blocked brute-force distances with torch (any device); `rule`
    (n, d) -> bool decides "auto" on the CPU (default `tree_is_faster`)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "tree" and device != "cpu":
        raise ValueError("algorithm='tree' runs on the CPU only; use algorithm='brute' on a GPU")
    rule = rule or tree_is_faster
    return algorithm == "tree" or (algorithm == "auto" and device == "cpu" and rule(*shape))


def tree_is_faster(n: int, d: int) -> bool:
    """The rule of `algorithm="auto"` on the CPU for one set of points (Kozachenko-Leonenko, KSG
    with labels), measured with KSG's float64 brute force on 2 cores (the tree's time grows
    steeply with the dimension d, brute force's with n^2): the tree up to 4 dimensions, and up to
    12 above 2000 samples; brute force otherwise. Tree / brute ms at 4096 samples: 31 / 256
    (4 dims), 228 / 284 (10), 588 / 289 (16), 869 / 304 (22), 2082 / 417 (50); at 1000: 10 / 16
    (4), 48 / 14 (10); at 10000: 1030 / 1262 (10), 3230 / 745 (16)."""
    return d <= 4 or (d <= 12 and n > 2000)


def pair_tree_is_faster(n: int, d: int) -> bool:
    """The rule of `algorithm="auto"` on the CPU for KSG on two continuous sides (d: both sides'
    dimensions), whose brute force screens in float32: the tree up to 4 dimensions, and up to 8
    above 2000 samples. Tree / brute ms, best of 3 on 2 cores (a noisy machine, about 20% either
    way): at 1000 samples 10 / 15 (4 dims), 20 / 18 (6), 39 / 20 (10); at 4096: 47 / 191 (4),
    111 / 133 (6), 196 / 202 (8), 321 / 171 (10), 1190 / 275 (22); at 10000: 745 / 995 (8),
    1242 / 889 (10), 2143 / 726 (12)."""
    return d <= 4 or (d <= 8 and n > 2000)


# Brute force: the distances of a block of rows to all points at a time, O(n x block) memory.
# Each pass writes its blocks' results into arrays allocated once: small arrays allocated
# between the large blocks pin the heap (glibc does not return it), and the resident memory then
# grew by a block per step (1.8 GB above the baseline at n = 10000).
BLOCK_BYTES = 8 * 2**20


def _distances(rows: torch.Tensor, points: torch.Tensor, p: float) -> torch.Tensor:
    """Distances of `rows` to every point from exact differences, never the |a|^2 + |b|^2 - 2ab
    expansion: the same distances as the tree's."""
    return torch.cdist(rows, points, p=p, compute_mode="donot_use_mm_for_euclid_dist")


def _distance_blocks(points: np.ndarray, p: float, device: str):
    """(rows, their distances to every point), a block of rows at a time."""
    h = torch.as_tensor(points, device=device)
    block = max(1, BLOCK_BYTES // (8 * len(h)))
    for start in range(0, len(h), block):
        rows = slice(start, min(start + block, len(h)))
        yield rows, _distances(h[rows], h, p)


def _smallest(distances: torch.Tensor, k: int) -> torch.Tensor:
    """The k smallest of each row, ascending."""
    return distances.topk(k, dim=1, largest=False).values


def _tree_threads() -> int:
    """Threads for a tree query: torch's thread count, so that a caller limiting torch (the
    estimate stage's single-threaded workers, one per core) limits the trees too."""
    return torch.get_num_threads()


def _kth_distance(points: np.ndarray, k: int, p: float, device: str, algorithm: str = "auto") -> np.ndarray:
    """Distance of every point to its k-th neighbour (itself excluded)."""
    if _tree(device, algorithm, points.shape):
        return cKDTree(points).query(points, k=k + 1, p=p, workers=_tree_threads())[0][:, k]
    out = np.empty(len(points))
    for rows, d in _distance_blocks(points, p, device):
        out[rows] = _smallest(d, k + 1)[:, k].cpu().numpy()
    return out


# Leaves of the trees that count neighbours within a radius: larger leaves than cKDTree's default
# 16 (which suits the k-th neighbour queries) cut the traversal. Max-norm counts at each point's
# 5th-neighbour radius, Gaussian points, one thread, ms for leaves of 16 / 64: 8.5 / 7.5 (4096
# points in 2 dims), 99.7 / 61.0 (6), 306.6 / 202.9 (10), 617 / 309 (12 dims, 20th neighbour),
# 104.5 / 74.5 (10000 in 4), 7.2 / 5.1 (1000 in 4); on the compression estimator's counts of
# 54 SZT cells: 4.00 / 3.11 s. The counts are the same: each candidate's distance is checked.
COUNT_LEAFSIZE = 64


def _count_within(points: np.ndarray, radius: np.ndarray, p: float, device: str,
                  algorithm: str = "auto") -> np.ndarray:
    """Points strictly closer than `radius` to each point, itself included."""
    strict = np.nextafter(radius, 0)
    if _tree(device, algorithm, points.shape):
        tree = cKDTree(points, leafsize=COUNT_LEAFSIZE)
        counts = tree.query_ball_point(points, strict, p=p, workers=_tree_threads(), return_length=True)
        return np.asarray(counts)
    r = torch.as_tensor(strict, device=device)
    out = np.empty(len(points), dtype=np.int64)
    for rows, d in _distance_blocks(points, p, device):
        out[rows] = (d <= r[rows, None]).sum(1).cpu().numpy()
    return out


# A side whose rows take at most this many distinct values before the jitter (discrete inputs
# compressed to a few codes: SZT's 12 bits give 16) counts its neighbours group by group. Grouped
# / tree ms, 4096 points in 4 dims, one thread: 11 / 101 (8 groups), 22 / 108 (16), 28 / 81
# (32), 51 / 91 (64) (one run each; the tree enumerates every neighbour, about n / groups).
MAX_COUNT_GROUPS = 32
GROUP_BLOCK_ELEMENTS = 2**20  # rows x groups x dims per step of the grouped count


def _group_boxes(points: np.ndarray, groups: np.ndarray):
    """Each group's members (indices, sorted by group), their runs' starts, and bounding boxes."""
    order = np.argsort(groups, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(groups[order]) != 0])
    members = points[order]
    return order, starts, np.minimum.reduceat(members, starts), np.maximum.reduceat(members, starts)


def _row_blocks(n: int, boxes: int, dims: int):
    """Index arrays of consecutive rows, GROUP_BLOCK_ELEMENTS (rows x boxes x dims) at a time."""
    block = max(1, GROUP_BLOCK_ELEMENTS // (boxes * dims))
    for first in range(0, n, block):
        yield np.arange(first, min(first + block, n))


def _box_distances(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max-norm distances (rows, boxes) of each point to each box's nearest face (at most 0
    inside it) and farthest corner. Computed one coordinate at a time on (boxes, rows) arrays:
    numpy's loops then run along the rows, not along the few coordinates (15x faster at 4096
    points, 16 boxes, 4 dimensions); |fl(lo - p)| = |fl(p - lo)|, so the values are those of
    the differences taken point minus box."""
    nearest = farthest = None
    for j, column in enumerate(points.T):
        below, above = lo[:, j, None] - column, column - hi[:, j, None]
        near, far = np.maximum(below, above), np.maximum(np.abs(below), np.abs(above))
        nearest = near if nearest is None else np.maximum(nearest, near, out=nearest)
        farthest = far if farthest is None else np.maximum(farthest, far, out=farthest)
    return nearest.T, farthest.T


def _count_within_groups(points: np.ndarray, groups: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """`_count_within` (max-norm, itself included) of points partitioned into `groups`, equal to
    the tree's count for any partition, fast where the groups are few and tight.

    A group whose bounding box lies wholly within the strict radius of a point counts whole; one
    whose box lies wholly outside counts nothing; the members of the others are compared one by
    one. Rounding keeps this exact: fl(p - q) is monotone in q, so a member's distance lies
    between the distances to its box's nearest face and farthest corner, computed the same way.
    """
    strict = np.nextafter(radius, 0)
    order, starts, lo, hi = _group_boxes(points, groups)
    ends = np.r_[starts[1:], len(points)]
    sizes = ends - starts
    counts = np.zeros(len(points), dtype=np.int64)
    for rows in _row_blocks(len(points), len(starts), points.shape[1]):
        nearest, farthest = _box_distances(points[rows], lo, hi)
        r = strict[rows, None]
        counts[rows] = (sizes * (farthest <= r)).sum(1)
        for i, g in zip(*np.nonzero((farthest > r) & (nearest <= r)), strict=True):
            near = np.abs(points[order[starts[g]:ends[g]]] - points[rows[i]]).max(1)
            counts[rows[i]] += int((near <= r[i, 0]).sum())
    return counts


def _group_of_each(order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each point's group index from `_group_boxes`'s order and run starts."""
    ids = np.empty(len(order), dtype=np.int64)
    ids[order] = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(order)]))
    return ids


def _distance_to_other_boxes(points: np.ndarray, own: np.ndarray, lo: np.ndarray,
                             hi: np.ndarray) -> np.ndarray:
    """A lower bound of each point's max-norm distance to every point of the other groups: the
    distance to the nearest other group's bounding box (exact under rounding, as in
    `_count_within_groups`; at most 0 for a point inside such a box)."""
    gap = np.empty(len(points))
    for rows in _row_blocks(len(points), len(lo), points.shape[1]):
        d = _box_distances(points[rows], lo, hi)[0]
        d[np.arange(len(rows)), own[rows]] = np.inf
        gap[rows] = d.min(1)
    return gap


def _joint_kth_distance_groups(grouped: np.ndarray, groups: np.ndarray, other: np.ndarray,
                               k: int) -> np.ndarray:
    """`_kth_distance` of the joint points [grouped, other] (max-norm, tree), the same values,
    where `grouped` takes few, tight values (groups of `groups`): within a group whose width on
    the grouped side is w, the k-th joint distance is the k-th on the other side alone if that
    is at least w (every pair's grouped distance is at most w), so a small tree per group on
    the other side finds it; it is the k-th of all points if no other group's box lies closer.
    Points where either test fails are queried on the joint tree."""
    order, starts, lo, hi = _group_boxes(grouped, groups)
    eps = np.full(len(grouped), np.inf)
    for g, members in enumerate(np.split(order, starts[1:])):
        if len(members) > k:
            side = other[members]
            nearest = cKDTree(side).query(side, k=k + 1, p=np.inf, workers=_tree_threads())[0][:, k]
            eps[members] = np.where(nearest >= (hi[g] - lo[g]).max(), nearest, np.inf)
    redo = np.flatnonzero(eps > _distance_to_other_boxes(grouped, _group_of_each(order, starts), lo, hi))
    if len(redo):
        joint = np.hstack([grouped, other])
        eps[redo] = cKDTree(joint).query(joint[redo], k=k + 1, p=np.inf, workers=_tree_threads())[0][:, k]
    return eps


def _ksg_counts_exact(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, k: int):
    """eps (k-th joint max-norm neighbour distance), n_a and n_b of `rows` from float64 distances:
    the joint max-norm distance is the larger of the two marginal ones."""
    da, db = _distances(a[rows], a, np.inf), _distances(b[rows], b, np.inf)
    e = _smallest(torch.maximum(da, db), k + 1)[:, k:k + 1]
    return e[:, 0], (da < e).sum(1), (db < e).sum(1)


# KSG's brute force screens in float32 and settles in float64. Max-norm distances computed one
# coordinate at a time in float32 vectorise (torch's cdist kernel for p = inf does not, in
# either precision) and take about half the time of float64 cdist; every float32 distance lies
# within SCREEN_TOLERANCE x (the side's largest |coordinate|) of the float64 one (2^-22 bounds the
# two roundings of the inputs and the one of their difference), so whatever the screen cannot
# decide is computed again in float64: eps and the counts are those of the float64 distances.
SCREEN_TOLERANCE = 2.0 ** -21
SCREEN_SPARE = 4  # joint neighbours beyond the k-th kept by the screen; a row needing more is redone
# The bound holds where float32 neither overflows nor loses its relative precision (subnormals,
# flushed or not): sides whose largest |coordinate| lies outside this range go to float64 whole.
SCREEN_RANGE = (2.0 ** -100, 2.0 ** 100)


class _ScreenedSide:
    """One side's float64 points, a transposed float32 copy and the bound between their distances."""

    def __init__(self, points: np.ndarray, device: str):
        self.exact = torch.as_tensor(points, device=device)
        self.columns = self.exact.T.to(torch.float32).contiguous()
        largest = float(self.exact.abs().max())
        self.tolerance = SCREEN_TOLERANCE * largest
        self.screenable = largest == 0 or SCREEN_RANGE[0] <= largest <= SCREEN_RANGE[1]

    def screened(self, rows: slice, out: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        """float32 max-norm distances of `rows` to every point, into `out`."""
        r = self.columns[:, rows].T
        torch.sub(r[:, :1], self.columns[:1], out=out).abs_()
        for c in range(1, r.shape[1]):
            torch.maximum(out, torch.sub(r[:, c:c + 1], self.columns[c:c + 1], out=scratch).abs_(), out=out)
        return out

    def exact_to(self, rows: slice, index: torch.Tensor) -> torch.Tensor:
        """float64 max-norm distances of each row to its listed points, (rows, len(index[0]))."""
        return (self.exact[index] - self.exact[rows, None, :]).abs().amax(-1)

    def count(self, screened: torch.Tensor, eps: torch.Tensor, index: torch.Tensor, exact: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points strictly closer than eps to each row, and whether the screen settled the row:
        it does when every distance it cannot place against eps is one of the listed points,
        whose float64 distances `exact` are known."""
        inf = torch.tensor(np.inf, device=eps.device)  # float32 bounds rounded outwards
        lo = torch.nextafter((eps - self.tolerance).float(), -inf)[:, None]
        hi = torch.nextafter((eps + self.tolerance).float(), inf)[:, None]
        # comparisons into a reused mask and int32 sums: each is half the time of the plain form
        sure = torch.lt(screened, lo, out=mask).sum(1, dtype=torch.int32)
        undecided = torch.le(screened, hi, out=mask).sum(1, dtype=torch.int32) - sure
        listed = screened.gather(1, index)
        listed_undecided = (listed >= lo) & (listed <= hi)
        closer = (listed_undecided & (exact < eps[:, None])).sum(1)
        return sure + closer, listed_undecided.sum(1) == undecided


def _screen_block(a: _ScreenedSide, b: _ScreenedSide, rows: slice, k: int, buffers: list[torch.Tensor],
                  eps: torch.Tensor, n_a: torch.Tensor, n_b: torch.Tensor) -> torch.Tensor:
    """eps, n_a and n_b of `rows` from the float32 screen, written in place; returns which rows
    it settled (the others are left to float64)."""
    da, db, scratch, mask = buffers
    sa, sb = a.screened(rows, da, scratch), b.screened(rows, db, scratch)
    kept = min(len(a.exact), k + 1 + SCREEN_SPARE)
    nearest = torch.maximum(sa, sb, out=scratch).topk(kept, dim=1, largest=False)
    index, values = nearest.indices, nearest.values.double()
    complete = (kept == len(a.exact)) | (values[:, -1] > values[:, k] + 2 * max(a.tolerance, b.tolerance))
    ea, eb = a.exact_to(rows, index), b.exact_to(rows, index)
    e = torch.maximum(ea, eb).sort(dim=1).values[:, k]
    eps[rows] = e
    n_a[rows], settled_a = a.count(sa, e, index, ea, mask)
    n_b[rows], settled_b = b.count(sb, e, index, eb, mask)
    return complete & settled_a & settled_b


def _ksg_counts_brute(xa: np.ndarray, xb: np.ndarray, k: int, device: str):
    """eps (k-th joint max-norm neighbour distance), n_a and n_b in one blocked pass, equal to
    those of float64 distances: screened in float32, settled in float64 (SCREEN_TOLERANCE).

    The screen keeps each row's k + 1 + SCREEN_SPARE nearest joint points (itself included); when
    every point that can be nearer than the k-th lies among them, their float64 distances give
    eps, and the counts need float64 only for the kept points near eps. A row where either fails
    (ties at the float32 resolution: repeated or discrete values) is computed in float64; so is
    every row where a side's largest |coordinate| lies outside SCREEN_RANGE.
    """
    n = len(xa)
    a, b = _ScreenedSide(xa, device), _ScreenedSide(xb, device)
    eps = torch.empty(n, dtype=torch.float64, device=device)
    n_a, n_b = (torch.empty(n, dtype=torch.int64, device=device) for _ in range(2))
    block = max(1, BLOCK_BYTES // (4 * n))
    buffers = [torch.empty(min(block, n), n, device=device) for _ in range(3)]
    buffers.append(torch.empty(min(block, n), n, dtype=torch.bool, device=device))
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        redo = torch.arange(rows.start, rows.stop, device=device)
        if a.screenable and b.screenable:
            redo = redo[~_screen_block(a, b, rows, k, [buf[:len(redo)] for buf in buffers], eps, n_a, n_b)]
        if len(redo):
            eps[redo], n_a[redo], n_b[redo] = _ksg_counts_exact(a.exact, b.exact, redo, k)
    return eps.cpu().numpy(), n_a.cpu().numpy(), n_b.cpu().numpy()


def ksg_mutual_information(a: np.ndarray, b: np.ndarray, k: int = 5, jitter: float = 1e-10,
                           transform: str = "auto", seed: int = 0, device: str = "cpu",
                           algorithm: str = "auto") -> float:
    """KSG-1 estimate of I(A;B) in bits, clipped at 0.

    I = psi(k) + psi(N) - < psi(n_a + 1) + psi(n_b + 1) >, with eps_i the max-norm distance to
    the k-th joint neighbour and marginal counts strictly inside eps_i. Each coordinate is
    first mapped to normal scores (default) or standardised (the papers' wording), and a
    `jitter` of standard normal noise breaks ties. A 1-D integer `b` is taken as discrete
    labels (Ross 2014): I = psi(N) - <psi(N_y)> + psi(k) - <psi(m)>.

    Parameters
    ----------
    a, b : (n, ...) arrays (or b (n,) integer labels)
    k : int
        Neighbours (default 5).
    transform : {"auto", "normal_scores", "standardise"}
        Per-coordinate preprocessing; all preserve MI. "auto": normal scores for two
        continuous sides (they keep the error within the accuracy table of docs/estimators.md
        after monotone maps of the coordinates, where plain standardisation loses up to 35% in
        5 dimensions), standardisation when `b` is labels (ranks would close the gaps between
        class clusters that the label estimator measures).
    device : {"cpu", "cuda"}
    algorithm : {"auto", "tree", "brute"}
        Neighbour search: scipy's cKDTree, or brute-force torch distances (the GPU path, also
        faster on the CPU above ~20 dimensions). "auto": tree on the CPU, brute on a GPU.
    """
    n = same_length(a=a, b=b)
    if k < 1 or k >= n:
        raise ValueError(f"k must be between 1 and n - 1 = {n - 1}, got {k}")
    rng = np.random.default_rng(seed)
    if transform == "auto":
        transform = "standardise" if is_discrete(b) else "normal_scores"
    ta = _transform(as_samples(a, "a", min_samples=k + 1), transform)
    xa = _jitter(ta, jitter, rng)
    if is_discrete(b):
        return _ksg_discrete(xa, as_labels(b), k, device, algorithm)
    tb = _transform(as_samples(b, "b", min_samples=k + 1), transform)
    xb = _jitter(tb, jitter, rng)
    joint = np.hstack([xa, xb])
    if _tree(device, algorithm, joint.shape, pair_tree_is_faster):
        groups_a, groups_b = _few_groups(ta), _few_groups(tb)
        if groups_a is not None:
            eps = _joint_kth_distance_groups(xa, groups_a, xb, k)
        elif groups_b is not None:
            eps = _joint_kth_distance_groups(xb, groups_b, xa, k)
        else:
            eps = _kth_distance(joint, k, np.inf, device, "tree")
        n_a, n_b = (_count_side(x, groups, eps) for x, groups in ((xa, groups_a), (xb, groups_b)))
    else:
        eps, n_a, n_b = _ksg_counts_brute(xa, xb, k, device)
    mi = digamma(k) + digamma(n) - np.mean(digamma(n_a) + digamma(n_b))
    return max(float(mi), 0.0) / LOG2


def _few_groups(before_jitter: np.ndarray) -> np.ndarray | None:
    """Each row's id among the side's distinct rows before the jitter, where there are at most
    MAX_COUNT_GROUPS of them (None otherwise): such a side is searched group by group."""
    groups = row_symbols(before_jitter)
    return groups if groups.max() < MAX_COUNT_GROUPS else None  # ids run from 0


def _count_side(points: np.ndarray, groups: np.ndarray | None, eps: np.ndarray) -> np.ndarray:
    """A KSG side's marginal counts on the CPU: group by group where the side has few distinct
    rows (`_few_groups`), else with the tree (the same counts)."""
    if groups is not None:
        return _count_within_groups(points, groups, eps)
    return _count_within(points, eps, np.inf, "cpu", "tree")


def _ksg_discrete(xa: np.ndarray, labels: np.ndarray, k: int, device: str, algorithm: str) -> float:
    n = len(labels)
    class_size = np.bincount(labels)[labels]
    k_used, m = _ross_counts(xa, labels, k, device, algorithm)
    mi = digamma(n) - np.mean(digamma(class_size)) + np.mean(digamma(k_used)) - np.mean(digamma(m))
    return max(float(mi), 0.0) / LOG2


def _ross_counts(xa: np.ndarray, labels: np.ndarray, k: int, device: str, algorithm: str,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each point's k (at most its class's size - 1) and m: the points of any class closer than
    its k-th neighbour within its class, self included (Ross's count: the k-th neighbour
    included, self excluded). A class of one point has radius 0 and k = 1.

    With trees, m is counted in two parts: the point's own class from its k-th neighbour query
    (`_own_class_counts`), the other classes by a ball count on a tree of their points only. The
    same counts as one ball count over all points, without enumerating the k in-class neighbours
    again.
    """
    n = len(labels)
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    radius, k_used, m = np.zeros(n), np.ones(n), np.ones(n, dtype=np.int64)
    trees = _tree(device, algorithm, xa.shape)
    for idx in (group for group in groups if len(group) > 1):
        k_used[idx] = kk = min(k, len(idx) - 1)
        if trees:
            radius[idx], m[idx] = _own_class_counts(xa[idx], kk)
        else:
            radius[idx] = _kth_distance(xa[idx], kk, np.inf, device, algorithm)
    if not trees:
        return k_used, _count_within(xa, radius, np.inf, device, algorithm)
    for idx in groups if len(groups) > 1 else []:
        others = np.ones(n, dtype=bool)
        others[idx] = False
        tree = cKDTree(xa[others], leafsize=COUNT_LEAFSIZE)
        m[idx] += np.asarray(tree.query_ball_point(xa[idx], np.nextafter(radius[idx], 0), p=np.inf,
                                                   workers=_tree_threads(), return_length=True))
    return k_used, m


def _own_class_counts(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The max-norm distance of each point to its k-th neighbour among `points`, and the points
    strictly closer, itself included: from the k + 1 distances the query returns (every point
    closer than the k-th is among them), or where that distance is 0 (more than k copies of a
    point) a count of the points at distance 0, as `_count_within` does."""
    tree = cKDTree(points)
    nearest = tree.query(points, k=k + 1, p=np.inf, workers=_tree_threads())[0]
    radius = nearest[:, k]
    counts = (nearest < radius[:, None]).sum(1)
    zero = np.flatnonzero(radius == 0)
    if len(zero):
        counts[zero] = tree.query_ball_point(points[zero], 0.0, p=np.inf, return_length=True)
    return radius, counts


def log_unit_ball_volume(d: int) -> float:
    """log of the volume of the Euclidean unit ball in d dimensions."""
    return 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1)


def _whiten(a: np.ndarray) -> tuple[np.ndarray, float]:
    """Whitened copy and 1/2 log det of the covariance (nats), to add back to the entropy."""
    centred = a - a.mean(axis=0)
    cov = np.atleast_2d(np.cov(centred, rowvar=False))
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.clip(eigval, 1e-300, None)
    white = centred @ eigvec / np.sqrt(eigval)
    return white, 0.5 * float(np.log(eigval).sum())


def _neighbour_distances(points: np.ndarray, ks: np.ndarray, device: str,
                         algorithm: str = "auto") -> np.ndarray:
    """Euclidean distance to the ks-th neighbours, (n, len(ks))."""
    kmax = int(ks.max())
    if _tree(device, algorithm, points.shape):
        dist = cKDTree(points).query(points, k=kmax + 1, workers=_tree_threads())[0]
    else:
        dist = np.empty((len(points), kmax + 1))
        for rows, d in _distance_blocks(points, 2.0, device):
            dist[rows] = _smallest(d, kmax + 1).cpu().numpy()
    dist = dist[:, ks]
    if (dist <= 0).any():
        raise ValueError("duplicate samples: kNN entropies need continuous data; add noise first "
                         "(e.g. the compression estimator's `noise`)")
    return dist


def kl_entropy(a: np.ndarray, k: int = 5, whiten: bool = True, device: str = "cpu",
               algorithm: str = "auto") -> float:
    """Kozachenko-Leonenko differential entropy in bits.

    H = psi(N) - psi(k) + log V_d + (d / N) sum_i log r_{i,k}; with `whiten`, computed on the
    whitened sample and 1/2 log det Sigma added back (Butakov et al.).
    """
    points = as_samples(a, "a", min_samples=k + 1)
    offset = 0.0
    if whiten:
        points, offset = _whiten(points)
    n, d = points.shape
    r = _neighbour_distances(points, np.array([k]), device, algorithm)[:, 0]
    h = digamma(n) - digamma(k) + log_unit_ball_volume(d) + d * np.mean(np.log(r))
    return (float(h) + offset) / LOG2


def wkl_weights(k: int, d: int) -> np.ndarray:
    """Berrett-Samworth-Yuan weights: min-norm w on {floor(jk/d)} with sum 1 and bias terms 0.

    Constraints: sum_j w_j Gamma(j + 2l/d) / Gamma(j) = 0 for l = 1..floor(d/4).
    """
    support = np.unique(np.floor(np.arange(1, d + 1) * k / d).astype(int))
    support = support[support >= 1]
    n_bias = d // 4
    if len(support) < n_bias + 1:
        raise ValueError(f"weighted KL in {d} dimensions needs k >= {d * (n_bias + 1) // max(n_bias, 1)}"
                         f" or so; got k={k}")
    rows = [np.ones(len(support))]
    for l in range(1, n_bias + 1):
        rows.append(np.exp(gammaln(support + 2 * l / d) - gammaln(support)))
    constraints = np.vstack(rows)
    target = np.zeros(len(rows))
    target[0] = 1.0
    w_support = np.linalg.lstsq(constraints, target, rcond=None)[0]  # minimum-norm solution
    w = np.zeros(k)
    w[support - 1] = w_support
    return w


def weighted_kl_entropy(a: np.ndarray, k: int | None = None, whiten: bool = True,
                        device: str = "cpu") -> float:
    """Weighted Kozachenko-Leonenko entropy (Berrett, Samworth & Yuan 2019) in bits.

    H = (1/N) sum_i sum_j w_j log[exp(-psi(j)) V_d (N - 1) r_{i,j}^d]; `k` defaults to max(5, 2d).
    """
    points = as_samples(a, "a")
    offset = 0.0
    if whiten:
        points, offset = _whiten(points)
    n, d = points.shape
    k = max(5, 2 * d) if k is None else k
    if k >= n:
        raise ValueError(f"weighted KL needs more than k={k} samples, got {n}")
    w = wkl_weights(k, d)
    ks = np.flatnonzero(w) + 1
    r = _neighbour_distances(points, ks, device)
    log_xi = -digamma(ks)[None, :] + log_unit_ball_volume(d) + math.log(n - 1) + d * np.log(r)
    return (float((log_xi * w[ks - 1][None, :]).sum(axis=1).mean()) + offset) / LOG2
