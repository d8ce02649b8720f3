"""Estimators against closed forms and known ground truth (SCIENCE.md sections 3-7)."""

import math
import warnings

import numpy as np
import pytest
import torch

from pipeline.estimators import METHODS, EstimateWarning, information_plane, mutual_information, parameters
from pipeline.estimators.binning import discretise
from pipeline.estimators.kde import kde_entropy
from pipeline.estimators.knn import kl_entropy, weighted_kl_entropy, wkl_weights
from pipeline.estimators.renyi import (
    label_gram,
    matrix_entropy,
    matrix_mutual_information,
    normalise,
    rbf_gram,
)
from pipeline.groundtruth import apply_map, bump_images, gaussian_pair

RNG = np.random.default_rng(0)


def distinct_inputs(n, d=12, seed=0):
    return np.random.default_rng(seed).permutation(2**d)[:n, None] >> np.arange(d)[::-1] & 1


# ---------------------------------------------------------------- binning
def test_torch_tensors_give_what_their_numpy_arrays_give():
    """Tensors (a bfloat16 one too, which numpy has no type for) are read as their values."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    t = np.tanh(x @ rng.normal(size=(4, 3))).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    for method in ("binning", "kde", "ksg", "gaussian"):
        expected = information_plane(x, t, y, method)
        got = information_plane(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y), method)
        assert got == expected, method
    t16 = torch.from_numpy(t).to(torch.bfloat16)
    assert information_plane(x, t16, y, "binning") == information_plane(x, t16.float().numpy(), y, "binning")
    assert mutual_information(torch.from_numpy(t), torch.from_numpy(y), "ksg") == \
        mutual_information(t, y, "ksg")
    with pytest.raises(ValueError, match=r"got shape \(200,\) dtype float32; its values are whole numbers: "
                                         r"pass y.astype\(int\)"):
        information_plane(x, t, torch.from_numpy(y).float(), "binning")
    with pytest.raises(ValueError, match=r"dtype float64$"):  # fractions: no cast to suggest
        information_plane(x, t, y + 0.5, "binning")


def test_views_of_arrays_give_what_their_copies_give():
    """A reversed or strided view (negative strides, which torch cannot wrap) reads as its copy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    t = np.tanh(x[:, :3] + 0.3 * rng.normal(size=(300, 3)))
    y = (x[:, 0] > 0).astype(np.int64)
    x_view, t_view, y_view = x[::-1, ::-2], t[::-1, ::-1], y[::-1]
    for method in ("binning", "kde", "renyi", "ksg", "gaussian"):
        expected = information_plane(x_view.copy(), t_view.copy(), y_view.copy(), method)
        assert information_plane(x_view, t_view, y_view, method) == expected, method
        assert mutual_information(t_view, x_view, method) == mutual_information(t_view.copy(), x_view.copy(),
                                                                                 method), method


def test_binning_hand_computed():
    x = distinct_inputs(4)
    t = np.array([[-0.9], [-0.8], [0.5], [0.9]])
    out = information_plane(x, t, np.array([0, 0, 1, 1]), "binning", n_bins=2)
    assert out == {"I_XT": pytest.approx(1.0), "I_TY": pytest.approx(1.0), "I_XT_clipped": 0.0,
                   "I_TY_clipped": 0.0}
    out = information_plane(x, t, np.array([0, 1, 0, 1]), "binning", n_bins=2)
    assert out["I_TY"] == pytest.approx(0.0, abs=1e-12)
    # three bins of sizes 1, 1, 2: H = 1.5 bits; labels split the pair
    t3 = np.array([[-0.9], [0.0], [0.9], [0.95]])
    out = information_plane(x, t3, np.array([0, 0, 1, 1]), "binning", n_bins=3)
    assert out["I_XT"] == pytest.approx(1.5) and out["I_TY"] == pytest.approx(1.0)


def test_binning_flags_values_its_fixed_range_clips():
    """ReLU-like values binned over tanh's [-1, 1] in 2 bins: 0.5, 1.5 and 3.0 share the top bin,
    so H(T) = H(1/4) and I(T;Y) = 1 - 3/4 H(1/3); the flag marks both. Over their own span in 4
    bins the four values are distinct: 2 bits and 1 bit, unflagged."""
    x, y = distinct_inputs(4), np.array([0, 0, 1, 1])
    t = np.array([[-0.5], [0.5], [1.5], [3.0]])
    h = lambda p: -p * math.log2(p) - (1 - p) * math.log2(1 - p)  # noqa: E731
    assert information_plane(x, t, y, "binning", n_bins=2) == {
        "I_XT": pytest.approx(h(0.25)), "I_TY": pytest.approx(1 - 0.75 * h(1 / 3)),
        "I_XT_clipped": 1.0, "I_TY_clipped": 1.0}
    assert information_plane(x, t, y, "binning", n_bins=4, range="layer") == {
        "I_XT": pytest.approx(2.0), "I_TY": pytest.approx(1.0), "I_XT_clipped": 0.0, "I_TY_clipped": 0.0}
    assert information_plane(x, t, y, "binning", bin_size=0.5)["I_XT_clipped"] == 0.0
    assert information_plane(x, t, y, "binning", high=3.0)["I_XT_clipped"] == 0.0
    with pytest.warns(EstimateWarning, match=r"binning clipped a's values \(they span \[-0.5, 3\]\) into the "
                                             r"end bins of its fixed range \[-1.0, 1.0\]"):
        mutual_information(t, y, "binning", n_bins=2)


def test_binning_injective_layer_gives_log_n():
    n = 1000
    x = distinct_inputs(n)
    t = np.tanh(np.random.default_rng(1).normal(size=(n, 5)))
    out = information_plane(x, t, np.arange(n) % 2, "binning", n_bins=10**6)
    assert out["I_XT"] == pytest.approx(math.log2(n))
    assert out["I_TY"] <= 1.0 + 1e-12  # <= H(Y)


@pytest.mark.parametrize("n_bins", [2, 10, 30])
def test_binning_i_ty_bounded_by_label_entropy(n_bins):
    x = distinct_inputs(500, seed=2)
    y = np.random.default_rng(3).integers(0, 3, 500)
    t = np.tanh(np.random.default_rng(4).normal(size=(500, 4)))
    out = information_plane(x, t, y, "binning", n_bins=n_bins)
    p = np.bincount(y) / 500
    assert 0 <= out["I_TY"] <= -(p * np.log2(p)).sum() + 1e-12 and out["I_TY"] <= out["I_XT"]


def test_binning_matches_original_digitize():
    t = np.random.default_rng(5).uniform(-0.999, 0.999, size=(2000, 3))
    original = np.digitize(t, np.linspace(-1, 1, 30))
    ours = discretise(t, n_bins=29)
    # the same partition: a bijection between bin labels
    assert len({(a, b) for a, b in zip(original.ravel(), ours.ravel(), strict=True)}) == len(np.unique(ours))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int16])
@pytest.mark.parametrize("options", [{}, {"n_bins": 1000, "range": "layer"}, {"bin_size": 1e-3},
                                     {"low": 0.0, "high": 0.5, "n_bins": 7}])
def test_binning_in_blocks_of_rows_gives_the_whole_layers_float64_indices(monkeypatch, dtype, options):
    """A wide layer is binned a block of rows at a time, never copied whole to float64: the
    indices are those of the formula on the whole float64 layer, in the smallest integer type."""
    import pipeline.estimators.binning as binning

    monkeypatch.setattr(binning, "BLOCK_VALUES", 50)  # blocks of 4 rows of 12 values, and a last part
    t = (np.random.default_rng(3).standard_normal((30, 3, 4)) * 1.7).astype(dtype)
    whole = t.reshape(30, -1).astype(np.float64)
    if "bin_size" in options:
        expected = np.floor(whole / options["bin_size"])
    else:
        n_bins = options.get("n_bins", 30)
        low, high = ((whole.min(), whole.max()) if options.get("range") == "layer"
                     else (options.get("low", -1.0), options.get("high", 1.0)))
        expected = np.clip(np.floor((whole - low) / (high - low) * n_bins), 0, n_bins - 1)
    got = discretise(t, **options)
    np.testing.assert_array_equal(got, expected)
    lo, hi = expected.min(), expected.max()
    assert got.dtype == next(d for d in (np.int8, np.int16, np.int32, np.int64)
                             if np.iinfo(d).min <= lo and hi <= np.iinfo(d).max)


def test_binning_layer_range_and_bin_size_do_not_clip_relu():
    t = np.array([[0.0], [2.0], [4.0], [6.0]])
    x = distinct_inputs(4)
    y = np.array([0, 0, 1, 1])
    assert information_plane(x, t, y, "binning", n_bins=4, range="layer")["I_XT"] == pytest.approx(2.0)
    # a fixed [-1, 1] range lumps 2, 4 and 6 into the end bin: H(1/4, 3/4)
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert information_plane(x, t, y, "binning", n_bins=4)["I_XT"] == pytest.approx(h)
    assert information_plane(x, t, y, "binning", bin_size=3.0)["I_XT"] == pytest.approx(1.5)


# ---------------------------------------------------------------- kde
def test_kde_identical_points_carry_no_information():
    t = np.ones((50, 3))
    for bound in ("upper", "lower"):
        out = information_plane(distinct_inputs(50), t, np.arange(50) % 2, "kde", bound=bound)
        assert out["I_XT"] == pytest.approx(0.0, abs=1e-12)
        assert out["I_TY"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("bound", ["upper", "lower"])
def test_kde_information_is_the_difference_of_entropy_bounds(bound):
    # I(X;T) = H(T) - H(T|X) and I(T;Y) = H(T) - sum_y p(y) H(T|Y=y), each H the same bound of its
    # mixture: the class sums of information_plane must equal per-class kde_entropy calls.
    rng = np.random.default_rng(8)
    t, y = rng.normal(size=(90, 4)), np.repeat([0, 1, 2], [15, 30, 45])
    out = information_plane(distinct_inputs(90), t, y, "kde", noise_variance=0.3, bound=bound)
    h_t = kde_entropy(t, 0.3, bound)
    per_component = 2 * math.log2(2 * math.pi * math.e * 0.3)  # (d/2) log2(2 pi e s2), d = 4
    assert out["I_XT"] == pytest.approx(h_t - per_component, rel=1e-12)
    h_t_given_y = sum((y == c).mean() * kde_entropy(t[y == c], 0.3, bound) for c in range(3))
    assert out["I_TY"] == pytest.approx(h_t - h_t_given_y, rel=1e-10)


@pytest.mark.parametrize("bound", ["upper", "lower"])
@pytest.mark.parametrize("n, d, decimals", [(700, 3, None), (600, 4, 0), (500, 40, 1)])
def test_kde_equals_the_plain_formula(bound, n, d, decimals):
    """Tiles, the symmetric half, threads and the merged identical rows (rounded layers: many)
    change no value: the plain full-matrix logsumexp agrees to 1e-9 relative, and so does the
    torch path that `device="cuda"` takes."""
    from benchmarks.reference import kde_reference
    from pipeline.estimators.kde import TileSums, class_kernel_sums, mixture_components

    rng = np.random.default_rng(n)
    t = np.tanh(0.4 * rng.normal(size=(n, d)))
    if decimals is not None:
        t = np.round(t, decimals)
    y = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    expected = kde_reference(t, y, 0.05, bound)
    out = information_plane(distinct_inputs(n), t, y, "kde", noise_variance=0.05, bound=bound)
    for name in ("I_XT", "I_TY"):
        assert out[name] == pytest.approx(expected[name], rel=1e-9)
    rows, classes, weights = mixture_components(t, y)
    [sums] = TileSums(rows, classes, weights, 0.05, tile=37).sums()
    np.testing.assert_allclose(sums, TileSums(rows, classes, weights, 0.05, tile=len(rows)).sums()[0],
                               rtol=1e-12)
    counts = np.zeros((len(rows), 3))
    counts[np.arange(len(rows)), classes] = weights
    torch_path = class_kernel_sums(torch.as_tensor(rows), torch.as_tensor(counts), 0.05, tile=37)
    np.testing.assert_allclose(sums, torch_path.numpy(), rtol=1e-12)


def test_kde_planes_of_several_settings_and_subsets_equal_single_cells():
    """The batched form (one pass over pairs for every kernel variance, nested subsets inside the
    pass of the largest holding them) gives each (setting, subset) the single call's values, on a
    layer with repeated rows (merged components that straddle the subsets) and 4 classes."""
    from pipeline.estimators.kde import kde_information_plane, kde_information_planes, shared_passes

    rng = np.random.default_rng(5)
    n = 700
    t = np.round(np.tanh(rng.normal(size=(n, 3))), 1)
    y = rng.choice(4, n, p=[0.4, 0.3, 0.2, 0.1])
    x = distinct_inputs(n)
    part = rng.integers(0, 3, n)
    subsets = [np.arange(n), np.flatnonzero(part == 0), np.flatnonzero(part != 0), np.flatnonzero(part == 2)]
    settings = [{"noise_variance": s2, "bound": bound} for s2 in (1e-3, 0.05) for bound in ("upper", "lower")]
    out = kde_information_planes(x, t, y, settings, subsets)
    for i, setting in enumerate(settings):
        for j, rows in enumerate(subsets):
            single = kde_information_plane(x[rows], t[rows], y[rows], **setting)
            for name in ("I_XT", "I_TY"):
                assert out[i][j][name] == pytest.approx(single[name], rel=1e-12, abs=1e-13)
    assert shared_passes(subsets) == [[0, 2, 1, 3]]
    assert shared_passes(subsets[1:3]) == [[1], [0]]  # disjoint: each its own pass
    # one subset of every row is the single call itself, to the bit
    assert kde_information_planes(x, t, y, settings[:1])[0][0] == kde_information_plane(x, t, y, 1e-3)
    with pytest.raises(ValueError, match="without repeats"):
        kde_information_planes(x, t, y, settings, [np.array([0, 1, 1])])
    with pytest.raises(ValueError, match="unknown KDE setting"):
        kde_information_planes(x, t, y, [{"noise": 0.1}])


@pytest.mark.parametrize("bound", ["upper", "lower"])
def test_kde_raising_underflowing_exponents_changes_no_value(bound):
    """A small noise variance on a spread layer puts most exponents below EXP_FLOOR (the tiles
    where the norms allow it are raised to the floor before exp): the values equal the plain
    logsumexp's to 1e-12 relative and the kernel sums equal the torch path's, which raises
    nothing."""
    from benchmarks.reference import kde_reference
    from pipeline.estimators.kde import TileSums, class_kernel_sums, kernel_variance, mixture_components

    rng = np.random.default_rng(11)
    t = np.tanh(rng.normal(size=(400, 6)))
    y = rng.choice(2, 400)
    variance = kernel_variance(1e-3, bound)
    rows, classes, weights = mixture_components(t, y)
    rows -= rows.mean(0)
    tiles = TileSums(rows, classes, weights, variance, tile=50)
    exponents = -0.5 * ((rows[:50, None] - rows[None, 50:100]) ** 2).sum(-1) / variance
    assert exponents.min() < -745  # this tile is raised to the floor
    out = information_plane(distinct_inputs(400), t, y, "kde", noise_variance=1e-3, bound=bound)
    expected = kde_reference(t, y, 1e-3, bound)
    for name in ("I_XT", "I_TY"):
        assert out[name] == pytest.approx(expected[name], rel=1e-12)
    counts = np.zeros((len(rows), 2))
    counts[np.arange(len(rows)), classes] = weights
    torch_path = class_kernel_sums(torch.as_tensor(rows), torch.as_tensor(counts), variance, tile=50)
    own = tiles.sums()[0][np.arange(len(rows)), classes]
    np.testing.assert_allclose(own, torch_path.numpy()[np.arange(len(rows)), classes], rtol=1e-13)


def test_kde_kernels_taken_as_powers_equal_their_exponentials(monkeypatch):
    """Kernels whose scales are integer multiples of another's are its powers (the six settings
    of the SZT comparison: scales 1.25 x 1, 4, 10, 40, 100, 400) where no exponent of the tile
    falls below the floor; on a layer with merged repeated rows (weights above 1) every
    kernel's sums equal a single-kernel call's, which exponentiates, to 1e-10: a term's relative
    rounding is that of its exponent, whose parts (s |h|^2, thousands here) cancel to about
    2e-13 absolute, computed in another order by each path (the issue's bound: 1e-9)."""
    from pipeline.estimators import kde
    from pipeline.estimators.kde import TileSums, kernel_variance, mixture_components, power_plan

    scales = [1.25, 5.0, 12.5, 50.0, 125.0, 500.0]
    assert power_plan(scales) == [None, (0, 4), (0, 10), (2, 4), (2, 10), (4, 4)]
    assert power_plan([1.0, 1.5, 1.0 + 1e-9, 17.0]) == [None, None, None, None]
    base = np.random.default_rng(0).uniform(0.5, 1.0, 1000)
    for m in range(2, 17):
        out = np.empty_like(base)
        kde._power(base, m, out)
        np.testing.assert_allclose(out, base ** m, rtol=1e-14)
    powers = []
    monkeypatch.setattr(kde, "_power", lambda b, m, out: (powers.append(m), np.power(b, m, out=out)))
    rng = np.random.default_rng(8)
    t = np.tanh(rng.normal(size=(600, 4)) * 1.5)
    t[:300] = np.round(t[:300])  # saturated rows: 81 patterns, merged within a class
    y = rng.choice(3, 600)
    rows, classes, weights = mixture_components(t, y)
    rows -= rows.mean(0)
    assert weights.max() > 1
    variances = [kernel_variance(s2, bound) for s2 in (1e-3, 1e-2, 0.1) for bound in ("upper", "lower")]
    together = TileSums(rows, classes, weights, variances, tile=37).sums()
    n_tiles = math.comb(-(-len(rows) // 37) + 1, 2)
    assert sorted(set(powers)) == [4, 10] and len(powers) < 5 * n_tiles  # some tiles floored instead
    for variance, sums in zip(variances, together, strict=True):
        [alone] = TileSums(rows, classes, weights, variance, tile=37).sums()
        np.testing.assert_allclose(sums, alone, rtol=1e-10)


def test_kde_skips_only_tiles_whose_terms_are_negligible():
    """Two classes 10 apart in 64 dimensions, far from the origin (1e3 on every axis): their
    cross tiles are skipped (every term below e^-30 of its row's sum), tiles within a class are
    not, and the values equal the plain formula's to 1e-9 with 1 and 2 threads (the estimator
    centres the rows; uncentred, the float32 screen's rounding bound would keep every tile)."""
    from benchmarks.reference import kde_reference
    from pipeline.estimators.kde import SCREEN_MIN_DIMS, TileSums, mixture_components

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 150)
    t = 1e3 + 0.2 * rng.normal(size=(300, SCREEN_MIN_DIMS)) + 10.0 * y[:, None] / 8.0
    rows, classes, weights = mixture_components(t, y)
    sums = TileSums(rows - rows.mean(0), classes, weights, 0.1, tile=50)
    assert sums.nearest(slice(0, 50), slice(250, 300)) > sums.cuts[0]  # class 0 against class 1
    assert not sums.nearest(slice(0, 50), slice(100, 150)) > sums.cuts[0]  # within class 0
    expected = kde_reference(t, y, 0.1)
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            out = information_plane(distinct_inputs(300), t, y, "kde", noise_variance=0.1)
            for name in ("I_XT", "I_TY"):
                assert out[name] == pytest.approx(expected[name], rel=1e-9)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("s2", [0.01, 0.1, 1.0])
def test_kde_bounds_sandwich_monte_carlo(s2):
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(40, 3))
    # Monte Carlo I(X;T) = H(T) - H(T|X) for X uniform over the centres, T = h(X) + N(0, s2 I)
    samples = centres[rng.integers(0, 40, 20000)] + math.sqrt(s2) * rng.standard_normal((20000, 3))
    d2 = ((samples[:, None, :] - centres[None]) ** 2).sum(-1)
    log_p = (torch.logsumexp(torch.as_tensor(-d2 / (2 * s2)), 1).numpy() - math.log(40)
             - 1.5 * math.log(2 * math.pi * s2))
    true_bits = (-log_p.mean() - 1.5 * (math.log(2 * math.pi * s2) + 1)) / math.log(2)
    x, y = distinct_inputs(40), np.arange(40) % 2
    upper = information_plane(x, centres, y, "kde", noise_variance=s2, bound="upper")["I_XT"]
    lower = information_plane(x, centres, y, "kde", noise_variance=s2, bound="lower")["I_XT"]
    mc_error = 0.02
    assert lower - mc_error <= true_bits <= upper + mc_error
    assert lower < upper and upper <= math.log2(40) + 1e-9
    assert kde_entropy(centres, s2, "lower") < kde_entropy(centres, s2, "upper")
    with pytest.raises(ValueError, match="bound must be one of"):
        kde_entropy(centres, s2, "middle")


# ---------------------------------------------------------------- renyi
@pytest.mark.parametrize("alpha", [1.01, 2.0, 1.0, 3.0])
def test_renyi_entropy_extremes(alpha):
    n = 64
    assert float(matrix_entropy(torch.eye(n, dtype=torch.float64) / n, alpha)) == pytest.approx(math.log2(n))
    ones = torch.ones(n, n, dtype=torch.float64)
    assert float(matrix_entropy(normalise(ones), alpha)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("kind", ["labels", "narrow_rbf"])
def test_renyi_mutual_information_with_itself_is_entropy(kind):
    # I(A;A) = 2 S(A) - S(A o A) equals S(A) when A o A is proportional to A: 0/1 kernels
    # (labels) and the identity-like Gram of well separated points.
    if kind == "labels":
        k = label_gram(torch.as_tensor(RNG.integers(0, 5, 80)))
    else:
        h = torch.as_tensor(RNG.normal(size=(80, 5)))
        k = rbf_gram(torch.cdist(h, h) ** 2, 0.01)
    s = float(matrix_entropy(normalise(k)))
    assert float(matrix_mutual_information(k, k)) == pytest.approx(s, rel=1e-6)


def test_renyi_alpha2_closed_form_equals_eigenvalues():
    h = torch.as_tensor(RNG.normal(size=(60, 4)))
    a = normalise(rbf_gram(torch.cdist(h, h) ** 2, 1.5))
    lam = np.linalg.eigvalsh(a.numpy())
    assert float(matrix_entropy(a, 2.0)) == pytest.approx(-math.log2((lam**2).sum()), rel=1e-10)


def test_renyi_invariant_to_sample_order():
    x, t = RNG.uniform(size=(100, 12)), RNG.normal(size=(100, 6))
    y = RNG.integers(0, 3, 100)
    perm = RNG.permutation(100)
    kwargs = {"sigma_t": 1.3, "batch_size": 100, "n_batches": 1}
    a = information_plane(x, t, y, "renyi", **kwargs)
    b = information_plane(x[perm], t[perm], y[perm], "renyi", **kwargs, seed=7)
    assert a["I_XT"] == pytest.approx(b["I_XT"], rel=1e-9) and a["I_TY"] == pytest.approx(b["I_TY"], rel=1e-9)


def test_tensor_kernel_is_product_of_channel_kernels():
    t = torch.as_tensor(RNG.normal(size=(30, 4, 5, 5)))
    flat = t.reshape(30, -1)
    k_flat = rbf_gram(torch.cdist(flat, flat) ** 2, 3.0)
    k_prod = torch.ones(30, 30, dtype=torch.float64)
    for c in range(4):
        channel = t[:, c].reshape(30, -1)
        k_prod = k_prod * rbf_gram(torch.cdist(channel, channel) ** 2, 3.0)
    torch.testing.assert_close(k_flat, k_prod)
    # and information_plane accepts conv outputs as they are
    out = information_plane(RNG.uniform(size=(30, 8)), t.numpy(), RNG.integers(0, 2, 30), "renyi",
                            sigma_t=3.0, batch_size=30, n_batches=1)
    assert np.isfinite(out["I_XT"])


@pytest.mark.parametrize("alpha", [1.01, 2.0])
def test_label_kernel_entropy_is_class_entropy(alpha):
    labels = np.repeat(np.arange(10), 10)  # 100 samples, balanced
    assert float(matrix_entropy(normalise(label_gram(torch.as_tensor(labels))), alpha)) == pytest.approx(
        math.log2(10))
    labels = RNG.integers(0, 4, 100)
    p = np.bincount(labels) / 100
    renyi = math.log2((p**alpha).sum()) / (1 - alpha)
    assert float(matrix_entropy(normalise(label_gram(torch.as_tensor(labels))), alpha)) == pytest.approx(
        renyi, rel=1e-8)


def test_renyi_data_processing_inequality_on_markov_chain():
    x = RNG.uniform(size=(100, 10))
    t1 = np.tanh(x @ RNG.normal(size=(10, 8)))
    t2 = np.tanh(t1 @ RNG.normal(size=(8, 2)) * 0.5)  # T2 = g(T1), squeezed through 2 units
    y = RNG.integers(0, 2, 100)
    kwargs = {"sigma_x": 1.0, "sigma_t": 1.0, "batch_size": 100, "n_batches": 1}
    i1 = information_plane(x, t1, y, "renyi", **kwargs)["I_XT"]
    i2 = information_plane(x, t2, y, "renyi", **kwargs)["I_XT"]
    assert i1 > i2 > 0


def test_renyi_alignment_width_is_smoothed_and_returned():
    x, t, y = RNG.uniform(size=(300, 12)), RNG.normal(size=(300, 4)), RNG.integers(0, 2, 300)
    first = information_plane(x, t, y, "renyi", n_batches=3)
    assert first["sigma_t"] == first["sigma_t_raw"] > 0 and first["I_XT_std"] >= 0
    second = information_plane(x, t, y, "renyi", n_batches=3, sigma_prev=10.0)
    assert second["sigma_t"] == pytest.approx(0.9 * 10.0 + 0.1 * first["sigma_t_raw"])


def test_renyi_alignment_width_scales_with_a_diverged_layers_values():
    """Activations of 2^64 x their size (a diverged layer, still finite in float32): the width
    search's float32 distances overflowed and the eigensolver failed on NaN Gram matrices. The
    search now scales the distances by a power of two, exactly; the width is proportional to the
    layer's scale once the first candidate's 0.3 is negligible beside it, so 2^64 to 2^126 read
    what 2^40 (no scaling) reads."""
    x, y = RNG.integers(0, 2, (300, 12)).astype(np.float32), RNG.integers(0, 2, 300)
    t = np.tanh(x[:, :4] @ RNG.normal(size=(4, 4)) + 0.3 * RNG.normal(size=(300, 4)))
    reference = information_plane(x, (t * 2.0**40).astype(np.float32), y, "renyi", n_batches=3)
    for power in (64, 100, 126):
        out = information_plane(x, (t * 2.0**power).astype(np.float32), y, "renyi", n_batches=3)
        assert out["I_XT"] == pytest.approx(reference["I_XT"], rel=1e-12)
        assert out["I_TY"] == pytest.approx(reference["I_TY"], rel=1e-12)
        assert out["sigma_t"] / 2.0**power == pytest.approx(reference["sigma_t"] / 2.0**40, rel=1e-12)
    with pytest.raises(ValueError, match="t's squared distances overflow float64"):  # no float32 holds it
        information_plane(x, t * 1e200, y, "renyi", n_batches=3)


# ---------------------------------------------------------------- ksg and KL
@pytest.mark.parametrize("dim, mi", [(1, 0.5), (2, 1.0), (2, 2.5), (3, 1.5)])
@pytest.mark.parametrize("map_name", ["identity", "half_cube", "rotation"])
def test_ksg_gaussian_pairs(dim, mi, map_name):
    a, b = gaussian_pair(3000, mi, dim, seed=dim)
    est = mutual_information(apply_map(map_name, a, 1), apply_map(map_name, b, 2), "ksg")
    assert abs(est - mi) <= max(0.1, 0.15 * mi)


def test_ksg_independent_is_near_zero_and_discrete_labels():
    a, b = RNG.normal(size=(4000, 2)), RNG.normal(size=(4000, 2))
    assert mutual_information(a, b, "ksg") < 0.03
    y = RNG.integers(0, 2, 4000)
    t = y[:, None] * 10.0 + RNG.normal(size=(4000, 1))  # the label is recoverable: I = H(Y)
    p = y.mean()
    h_y = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert mutual_information(t, y, "ksg") == pytest.approx(h_y, abs=0.03)
    assert mutual_information(RNG.normal(size=(4000, 1)), y, "ksg") < 0.03


@pytest.mark.parametrize("dim", [1, 3, 6])
def test_kl_entropies_of_gaussians(dim):
    cov = np.diag(np.linspace(0.5, 2.0, dim))
    a = RNG.multivariate_normal(np.zeros(dim), cov, size=4000)
    true = 0.5 * math.log2((2 * math.pi * math.e) ** dim * np.linalg.det(cov))
    assert kl_entropy(a) == pytest.approx(true, abs=0.05 * dim + 0.05)
    assert weighted_kl_entropy(a) == pytest.approx(true, abs=0.05 * dim + 0.05)


def test_wkl_weights_cancel_bias_terms():
    w = wkl_weights(k=12, d=8)
    j = np.arange(1, 13)
    assert w.sum() == pytest.approx(1.0)
    from scipy.special import gammaln
    for l in (1, 2):
        assert (w * np.exp(gammaln(j + 2 * l / 8) - gammaln(j))).sum() == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- compression
@pytest.mark.parametrize("mi", [0.5, 2.0])
@pytest.mark.filterwarnings("ignore::pipeline.estimators.compression.CompressionWarning")
def test_compression_on_bump_images(mi):
    a, b = gaussian_pair(3000, mi, 2, seed=11, rotate=False)
    est = mutual_information(bump_images(a), bump_images(b), "compression", compressor="pca")
    assert abs(est - mi) <= max(0.15, 0.2 * mi)


@pytest.mark.filterwarnings("ignore::pipeline.estimators.compression.CompressionWarning")
def test_images_get_the_autoencoder_which_keeps_what_pca_folds():
    from pipeline.estimators.compression import resolve_compressor

    assert resolve_compressor("auto", (1, 16, 16)) == "conv_autoencoder"
    assert resolve_compressor("auto", (28, 28)) == "conv_autoencoder"
    assert resolve_compressor("auto", (512, 2, 2)) == "autoencoder"  # too small for three strides
    assert resolve_compressor("auto", (2, 3, 8, 8)) == "autoencoder"
    assert resolve_compressor("auto", (20,)) == "pca"
    with pytest.raises(ValueError, match="compressor must be one of"):
        resolve_compressor("tsne", (20,))
    # 3 latents (centre, width) at 1.5 bits: 4 principal components fold the image manifold
    a, b = gaussian_pair(5000, 1.5, 3, seed=45, rotate=False)
    images_a, images_b = bump_images(a), bump_images(b)
    assert mutual_information(images_a, images_b, "compression", compressor="pca") < 1.5 - 0.3
    # one network a side (1.311 bits): the candidates have their own test, and three of them
    # would add 100 s to a suite that must stay under 15 minutes on 2 cores
    assert mutual_information(images_a, images_b, "compression", entropy="ksg",
                              ae_candidates=1) == pytest.approx(1.5, abs=0.3)


@pytest.mark.filterwarnings("ignore::pipeline.estimators.compression.CompressionWarning")
def test_auto_entropy_is_the_flow_for_autoencoder_codes_and_ksg_otherwise(monkeypatch):
    from pipeline.estimators import compression

    assert compression.resolve_entropy("auto", ("autoencoder", "autoencoder")) == "flow"
    assert compression.resolve_entropy("auto", ("conv_autoencoder", "autoencoder")) == "flow"
    assert compression.resolve_entropy("auto", ("autoencoder", "pca")) == "ksg"
    assert compression.resolve_entropy("auto", ("autoencoder",)) == "ksg"  # labels
    assert compression.resolve_entropy("kl", ("autoencoder", "autoencoder")) == "kl"
    with pytest.raises(ValueError, match="entropy must be one of"):
        compression.resolve_entropy("shannon", ("pca", "pca"))
    calls = []
    monkeypatch.setattr(compression, "flow_mutual_information",
                        lambda a, b, **kw: calls.append(a.shape) or 5.0)  # above any KSG reading here
    a, b = gaussian_pair(300, 1.0, 2, seed=3, rotate=False)
    images_a, images_b = bump_images(a), bump_images(b)
    assert mutual_information(images_a, images_b, "compression", ae_steps=20) == 5.0
    assert calls == [(300, 2)]  # the flow saw the two codes, as wide as the images' 2 latents
    mutual_information(images_a, images_b, "compression", ae_steps=20, dim=4)
    assert calls[-1] == (300, 4)
    mutual_information(images_a.reshape(300, -1), images_b.reshape(300, -1), "compression")
    mutual_information(images_a, RNG.integers(0, 2, 300), "compression", ae_steps=20)
    assert len(calls) == 2  # flat vectors (PCA) and labels stay with KSG
    y = RNG.integers(0, 2, 300)
    information_plane(images_a, images_b, y, "compression", ae_steps=20)  # PCA for both by default
    assert len(calls) == 2
    both = {"compressor": "autoencoder", "input_compressor": "autoencoder", "ae_steps": 20}
    assert information_plane(images_a, images_b, y, "compression", **both)["I_XT"] == 5.0
    assert len(calls) == 3  # I(X;T) by the flow, I(T;Y) by KSG


def test_autoencoder_codes_keep_the_information_and_are_seeded():
    from pipeline.estimators.compression import autoencoder_compress
    from pipeline.estimators.knn import ksg_mutual_information

    a, b = gaussian_pair(2000, 1.5, 2, seed=5, rotate=False)
    images_a, images_b = bump_images(a).reshape(2000, -1), bump_images(b).reshape(2000, -1)
    codes_a = autoencoder_compress(images_a, 3, seed=0, steps=600)
    codes_b = autoencoder_compress(images_b, 3, seed=1, steps=600)
    assert codes_a.shape == (2000, 3)
    few = [autoencoder_compress(images_a[:500], 3, seed=0, steps=40) for _ in range(2)]
    np.testing.assert_array_equal(*few)  # seeded: the same steps give the same codes
    # 2-latent images coded in 3 dimensions: the code is injective, so the MI survives
    assert ksg_mutual_information(codes_a, codes_b) == pytest.approx(1.5, abs=0.15)


def test_conv_autoencoder_codes_keep_the_information_and_are_seeded():
    from pipeline.estimators.compression import conv_autoencoder_compress
    from pipeline.estimators.knn import ksg_mutual_information

    a, b = gaussian_pair(2000, 1.5, 2, seed=5, rotate=False)
    images_a, images_b = bump_images(a).reshape(2000, -1), bump_images(b).reshape(2000, -1)
    codes_a = conv_autoencoder_compress(images_a, 3, (1, 16, 16), seed=0, steps=400)
    codes_b = conv_autoencoder_compress(images_b, 3, (16, 16), seed=1, steps=400)
    assert codes_a.shape == (2000, 3)
    few = [conv_autoencoder_compress(images_a[:500], 3, shape, seed=0, steps=40)
           for shape in ((1, 16, 16), (16, 16))]
    np.testing.assert_array_equal(*few)  # seeded (candidates included), either shape spelling
    assert ksg_mutual_information(codes_a, codes_b) == pytest.approx(1.5, abs=0.15)


def test_autoencoders_train_on_one_thread_and_two_sides_at_once_give_their_own_codes():
    from pipeline.estimators.compression import compress, compress_sides, conv_autoencoder_compress

    a, b = gaussian_pair(500, 1.0, 2, seed=2, rotate=False)
    images_a, images_b = bump_images(a).reshape(500, -1), bump_images(b).reshape(500, -1)
    before = torch.get_num_threads()
    codes = {}
    try:
        for threads in (1, 2):  # the caller's thread count neither changes the codes nor is lost
            torch.set_num_threads(threads)
            codes[threads] = conv_autoencoder_compress(images_a, 2, (16, 16), steps=30, candidates=2)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(codes[1], codes[2])
    jobs = [{"a": side, "dim": 2, "compressor": "conv_autoencoder", "seed": seed, "device": "cpu",
             "ae_steps": 30, "sample_shape": (16, 16), "ae_candidates": 2}
            for seed, side in enumerate((images_a, images_b))]
    together = compress_sides(jobs)
    for job, codes_together in zip(jobs, together, strict=True):
        np.testing.assert_array_equal(codes_together.values, compress(**job).values)
        assert codes_together.kept == compress(**job).kept
    assert torch.get_num_threads() == before


def test_autoencoder_candidates_finish_the_one_with_the_lowest_loss_halfway():
    import torch
    from torch import nn

    from pipeline.estimators.compression import _fit_autoencoder

    # Three linear autoencoders of 2-d data with 1-d codes; a fixed offset on each decoder's
    # output (a buffer, not trained) leaves only the middle one able to reconstruct well.
    points = RNG.normal(size=(400, 2)) @ np.array([[1.0, 0.5], [0.0, 0.1]])
    data = torch.as_tensor(points, dtype=torch.float32)
    offsets = iter([3.0, 0.0, 5.0])
    built, calls = [], []

    class Shifted(nn.Linear):
        def __init__(self, offset: float):
            super().__init__(1, 2)
            self.register_buffer("offset", torch.tensor(offset))

        def forward(self, code):
            return super().forward(code) + self.offset

    def build():
        built.append((nn.Linear(2, 1), Shifted(next(offsets))))
        return built[-1]

    def loss_of(encoder, decoder, xb):
        calls.append(torch.is_grad_enabled())
        return ((decoder(encoder(xb)) - xb) ** 2).mean()

    encoder, _ = _fit_autoencoder(build, data, loss_of, steps=40, batch=50, lr=1e-2,
                               generator=torch.Generator().manual_seed(0), candidates=3)
    assert encoder is built[1][0]
    assert sum(calls) == 3 * 20 + 20  # three candidates for half the steps, one to the end
    assert len(calls) - sum(calls) == 3  # the full-data loss of each candidate, once
    with pytest.raises(ValueError, match="ae_candidates"):
        _fit_autoencoder(build, data, loss_of, 40, 50, 1e-2, torch.Generator(), candidates=0)


def test_ae_candidates_reach_the_autoencoder():
    from pipeline.estimators.compression import compression_mutual_information

    a = RNG.normal(size=(100, 16, 16))  # the function itself, past the registry's domain check
    with pytest.raises(ValueError, match="at least one candidate \\(ae_candidates\\), got 0"):
        compression_mutual_information(a, a, ae_candidates=0, ae_steps=4)
    with pytest.raises(ValueError, match="ae_candidates"):
        compression_mutual_information(a, a, compressor="autoencoder", ae_candidates=0, ae_steps=4)
    with pytest.raises(ValueError, match="ae_candidates must be an integer >= 1 \\(or absent\\), got 0"):
        mutual_information(a, a, "compression", ae_candidates=0, ae_steps=4)


@pytest.mark.parametrize("sample_shape", [(3, 12, 10), (28, 28), (2, 8, 9)])
def test_conv_autoencoder_takes_any_image_size_of_at_least_8(sample_shape):
    from pipeline.estimators.compression import conv_autoencoder_compress

    images = RNG.normal(size=(64, int(np.prod(sample_shape))))
    assert conv_autoencoder_compress(images, 4, sample_shape, steps=2).shape == (64, 4)


def test_conv_autoencoder_rejects_flat_or_small_samples():
    a = RNG.normal(size=(100, 6, 6))
    with pytest.raises(ValueError, match="H, W >= 8.*compressor='autoencoder'"):
        mutual_information(a, a, "compression", compressor="conv_autoencoder", ae_steps=2)
    with pytest.raises(ValueError, match="got samples of shape \\(36,\\)"):
        mutual_information(a.reshape(100, -1), a, "compression", compressor="conv_autoencoder", ae_steps=2)


def test_input_autoencoder_is_trained_once_per_input_array(monkeypatch):
    from pipeline.estimators import compression

    x = bump_images(gaussian_pair(600, 1.0, 2, seed=9)[0])
    t = RNG.normal(size=(600, 6))
    y = RNG.integers(0, 2, 600)
    compression._INPUT_CODES.clear()
    widths = []  # intrinsic-dimension calls: dim="auto" on remembered inputs needs one, not one a cell
    monkeypatch.setattr(compression, "intrinsic_dimension",
                        lambda a, seed=0, _f=compression.intrinsic_dimension: widths.append(1) or _f(a, seed))
    opts = {"input_compressor": "auto", "input_dim": "auto", "ae_steps": 50}
    first = information_plane(x, t, y, "compression", **opts)
    assert len(compression._INPUT_CODES) == 1 and len(widths) == 1
    assert information_plane(x, t * 2, y, "compression", **opts)["I_XT"] >= 0
    assert len(compression._INPUT_CODES) == 1 and len(widths) == 1  # same inputs: codes reused
    information_plane(x[::-1].copy(), t, y, "compression", **opts)
    assert len(compression._INPUT_CODES) == 2  # new content, new codes
    compression._INPUT_CODES.clear()  # retraining gives the same codes: the cache changes nothing
    assert information_plane(x, t, y, "compression", **opts) == first


def test_compression_is_seeded_and_uses_labels():
    a, b = gaussian_pair(1500, 1.0, 2, seed=3)
    first = mutual_information(a, b, "compression", noise=0.05, seed=1)
    assert first == mutual_information(a, b, "compression", noise=0.05, seed=1)
    assert first != mutual_information(a, b, "compression", noise=0.05, seed=2)
    y = RNG.integers(0, 2, 1500)
    t = np.hstack([y[:, None] * 5.0, RNG.normal(size=(1500, 6))]) + RNG.normal(size=(1500, 7)) * 0.1
    out = information_plane(RNG.normal(size=(1500, 20)), t, y, "compression")
    assert out["I_TY"] == pytest.approx(1.0, abs=0.05)


def test_multi_tensor_adam_trains_the_same_networks(monkeypatch):
    """The estimators' Adam (multi-tensor update) against torch's per-tensor loop: same results."""
    import pipeline.estimators.compression as compression
    import pipeline.estimators.flow as flow
    import pipeline.estimators.variational as variational

    a, b = gaussian_pair(600, 1.0, 2, seed=3)
    images = bump_images(np.random.default_rng(1).normal(size=(300, 2))).reshape(300, -1)
    calls = {
        "flow": lambda: flow.flow_mutual_information(a, b, steps=60, layers=2, hidden=16),
        "conv autoencoder": lambda: compression.conv_autoencoder_compress(images, 2, (16, 16), steps=20,
                                                                          candidates=2),
        "variational": lambda: variational.variational_mutual_information(a, b, steps=60, check_every=20,
                                                                          hidden=16, embedding=8),
    }
    multi = {name: np.asarray(call()) for name, call in calls.items()}
    for module in (compression, flow, variational):
        monkeypatch.setattr(module, "adam", lambda params, lr: torch.optim.Adam(params, lr=lr, foreach=False))
    for name, call in calls.items():
        assert np.array_equal(np.asarray(call()), multi[name]), name


# ---------------------------------------------------------------- flow model
FLOW = {"steps": 400, "layers": 4, "hidden": 32}  # small, for speed; defaults are larger


@pytest.mark.parametrize("dim, map_name", [(1, "identity"), (2, "identity"), (2, "half_cube")])
def test_flow_recovers_gaussian_pairs_and_their_warps(dim, map_name):
    from pipeline.estimators.flow import flow_mutual_information

    a, b = gaussian_pair(1500, 1.0, dim, seed=7)
    warp = (lambda v, s: apply_map("rotation", apply_map(map_name, v, s), s + 2)) if dim > 1 else \
        (lambda v, s: v)
    est = flow_mutual_information(warp(a, 1), warp(b, 2), **FLOW)
    assert est == pytest.approx(1.0, abs=0.1)


def test_flow_takes_sides_of_different_dimensions():
    from pipeline.estimators.flow import flow_mutual_information

    # coordinate pairs are independent (rotate=False), so b's first coordinate carries half;
    # the tolerance is that of the Gaussian-pair test above (small flow, 400 steps)
    a, b = gaussian_pair(1500, 1.0, 2, seed=7, rotate=False)
    est = flow_mutual_information(apply_map("half_cube", a, 1), b[:, :1], **FLOW)
    assert est == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("mi", [0.5, 1.5])
def test_flow_noise_recovers_the_mi_of_latents_on_a_sheet(mi):
    from pipeline.estimators.flow import flow_mutual_information

    # 2 latents a side mapped smoothly into 4 coordinates fill a 2-d sheet, as autoencoder codes
    # of 2-latent images do; MI is that of the latents (the maps are injective)
    a, b = gaussian_pair(1500, mi, 2, seed=3)
    sheet_a, sheet_b = (np.tanh(z @ np.random.default_rng(s).normal(size=(2, 4)))
                        for z, s in ((a, 1), (b, 2)))
    assert flow_mutual_information(sheet_a, sheet_b, **FLOW) == pytest.approx(mi, abs=0.1)
    # without noise the degenerate density misleads the fit (measured 1.156 and 2.336 bits)
    assert flow_mutual_information(sheet_a, sheet_b, noise=0.0, **FLOW) > mi + 0.3


def test_flow_is_seeded_and_finds_independence():
    from pipeline.estimators.flow import flow_mutual_information

    a, b = RNG.normal(size=(1500, 2)), RNG.normal(size=(1500, 2))
    first = flow_mutual_information(a, b, seed=3, **FLOW)
    assert first < 0.03
    assert first == flow_mutual_information(a, b, seed=3, **FLOW)
    with pytest.raises(ValueError, match="steps >= 1"):
        flow_mutual_information(a, b, steps=0)
    with pytest.raises(ValueError, match="noise >= 0"):
        flow_mutual_information(a, b, noise=-0.1)


# ---------------------------------------------------------------- the API and bad input
def test_unknown_method_and_parameter_list_the_valid_ones():
    x, t, y = RNG.normal(size=(20, 3)), RNG.normal(size=(20, 2)), RNG.integers(0, 2, 20)
    with pytest.raises(ValueError, match="unknown method 'mine'; valid methods: .*binning.*ksg") as err:
        information_plane(x, t, y, "mine")
    assert all(method in str(err.value) for method in METHODS)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['bins'\].*n_bins=30"):
        information_plane(x, t, y, "binning", bins=10)
    with pytest.raises(ValueError, match="bound must be one of"):
        information_plane(x, t, y, "kde", bound="middle")


def test_plane_defaults_are_what_a_call_runs_with():
    """The stage stores these with each entry: a function's own defaults, or for one taking
    **params (variational) the defaults of the function it hands them to."""
    from pipeline.estimators import plane_defaults
    assert plane_defaults("binning") == parameters("binning") and plane_defaults("binning")["n_bins"] == 30
    assert plane_defaults("variational") == parameters("variational", "mutual_information")
    assert plane_defaults("variational")["bound"] == "smile"


def test_a_builtin_name_cannot_be_registered_over_and_an_own_name_can_be_again():
    from pipeline.estimators import ESTIMATORS, get_estimator, register_estimator

    def plane(x, t, y):
        return {"I_XT": 1.0, "I_TY": 2.0}

    for name in METHODS:
        with pytest.raises(ValueError, match=f"estimator name '{name}' is a built-in one"):
            register_estimator(name)(plane)
    assert get_estimator("gaussian").mutual_information is not None  # still the built-in
    try:
        register_estimator("test_own_twice")(plane)
        register_estimator("test_own_twice", outputs={"extra": ("an extra value", "1")})(plane)
        assert get_estimator("test_own_twice").outputs == {"extra": ("an extra value", "1")}
    finally:
        ESTIMATORS.pop("test_own_twice", None)


@pytest.mark.parametrize("method", ["binning", "kde", "renyi", "ksg", "compression"])
def test_bad_arrays_are_rejected(method):
    x, t, y = RNG.normal(size=(50, 3)), RNG.normal(size=(50, 2)), RNG.integers(0, 2, 50)
    bad = t.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 of 50 samples"):
        information_plane(x, bad, y, method)
    with pytest.raises(ValueError, match="sample counts differ"):
        information_plane(x, t[:40], y, method)
    with pytest.raises(ValueError, match="y must be a 1-D integer"):
        information_plane(x, t, y.astype(float), method)


def test_defaults_are_the_papers():
    assert parameters("binning")["n_bins"] == 30 and parameters("kde")["noise_variance"] == 0.1
    renyi = parameters("renyi")
    assert renyi["alpha"] == 1.01 and renyi["sigma_x"] == 8.0 and renyi["batch_size"] == 100
    assert parameters("ksg")["k"] == 5
    comp = parameters("compression")
    assert comp["noise"] == 1e-3 and comp["noise_mode"] == "relative" and comp["dim"] == 4


def test_alignment_search_equals_full_matrix_computation():
    from pipeline.estimators._common import squared_distances
    from pipeline.estimators.renyi import alignment_sigma

    h = torch.as_tensor(RNG.normal(size=(3, 50, 4)))
    labels = torch.as_tensor(RNG.integers(0, 3, (3, 50)))
    d2, ky = squared_distances(h), label_gram(labels)
    fast = alignment_sigma(d2, ky, n_candidates=80)
    for b in range(3):
        mean_distance = torch.sqrt(d2[b][~torch.eye(50, dtype=torch.bool)]).mean()
        candidates = torch.linspace(0.3, float(10 * mean_distance), 80, dtype=torch.float64)
        scores = [float((rbf_gram(d2[b], s) * ky[b]).sum() / (torch.linalg.norm(rbf_gram(d2[b], s))
                                                              * torch.linalg.norm(ky[b])))
                  for s in candidates]
        assert float(fast[b]) == pytest.approx(float(candidates[int(np.argmax(scores))]), rel=1e-5)


@pytest.mark.parametrize("labels", [False, True])
def test_brute_force_neighbours_equal_the_tree(labels, monkeypatch):
    # the brute-force path is what device="cuda" and wide inputs run; blocks of 40 rows here
    from pipeline.estimators import knn

    monkeypatch.setattr(knn, "BLOCK_BYTES", 40 * 8 * 800)
    a, b = gaussian_pair(800, 1.0, 3, seed=4)
    other = RNG.integers(0, 3, 800) if labels else b
    tree = mutual_information(a, other, "ksg", algorithm="tree")
    brute = mutual_information(a, other, "ksg", algorithm="brute")
    assert brute == pytest.approx(tree, abs=1e-9)
    assert kl_entropy(a, algorithm="brute") == pytest.approx(kl_entropy(a), abs=1e-9)


def test_brute_force_counts_equal_the_tree_neighbour_for_neighbour(monkeypatch):
    """Same eps, same marginal counts, point by point, in 12 + 10 dimensions."""
    from pipeline.estimators import knn

    monkeypatch.setattr(knn, "BLOCK_BYTES", 64 * 8 * 600)
    xa, xb = (knn.normal_scores(v) for v in gaussian_pair(600, 2.0, 11, seed=9))
    xa = np.hstack([xa, RNG.normal(size=(600, 1))])
    eps, n_a, n_b = knn._ksg_counts_brute(xa, xb, 5, "cpu")
    tree_eps = knn._kth_distance(np.hstack([xa, xb]), 5, np.inf, "cpu", "tree")
    np.testing.assert_array_equal(eps, tree_eps)
    np.testing.assert_array_equal(n_a, knn._count_within(xa, tree_eps, np.inf, "cpu", "tree"))
    np.testing.assert_array_equal(n_b, knn._count_within(xb, tree_eps, np.inf, "cpu", "tree"))


def test_label_counts_in_two_parts_equal_one_ball_count():
    """KSG with labels counts a point's own class from its k-th neighbour query and the other
    classes by a ball count on their tree: point by point the counts of one ball count over all
    points (and of brute force), on continuous points, rounded ones (ties at the radius, copies
    outnumbering k: radius 0) and classes of one point."""
    from pipeline.estimators import knn

    rng = np.random.default_rng(2)
    for trial in range(40):
        n, d, k = int(rng.integers(2, 300)), int(rng.integers(1, 5)), int(rng.integers(1, 8))
        xa = rng.standard_normal((n, d))
        if trial % 3 == 0:
            xa = np.round(xa)
        if trial % 4 == 0:
            xa[: n // 2] = xa[0]
        labels = np.unique(rng.integers(0, int(rng.integers(1, 6)), n), return_inverse=True)[1].ravel()
        k = min(k, n - 1)
        k_used, m = knn._ross_counts(xa, labels, k, "cpu", "tree")
        radius = np.zeros(n)
        for label in np.unique(labels):
            idx = np.flatnonzero(labels == label)
            if len(idx) > 1:
                radius[idx] = knn._kth_distance(xa[idx], min(k, len(idx) - 1), np.inf, "cpu", "tree")
        np.testing.assert_array_equal(m, knn._count_within(xa, radius, np.inf, "cpu", "tree"))
        np.testing.assert_array_equal(m, knn._ross_counts(xa, labels, k, "cpu", "brute")[1])


def test_trees_query_on_torchs_threads(monkeypatch):
    """A caller that limits torch (the stage's workers: one thread each) limits the kNN trees."""
    from pipeline.estimators import knn

    used = []

    class Recording(knn.cKDTree):
        def query(self, *args, **kwargs):
            used.append(kwargs["workers"])
            return super().query(*args, **kwargs)

        def query_ball_point(self, *args, **kwargs):
            used.append(kwargs["workers"])
            return super().query_ball_point(*args, **kwargs)

    monkeypatch.setattr(knn, "cKDTree", Recording)
    a, b = gaussian_pair(300, 1.0, 2, seed=1)
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            used.clear()
            mutual_information(a, b, "ksg", algorithm="tree")
            kl_entropy(a)
            assert used and set(used) == {n_threads}
    finally:
        torch.set_num_threads(threads)


def test_grouped_counts_equal_the_tree_point_by_point(monkeypatch):
    """Counting group by group gives the tree's counts for tight groups (16 codes with a 1e-10
    jitter, radii at the jitter's scale and at the gaps between codes, so that boxes straddle
    the radius, and radii exactly at a point's distance) and for any partition of continuous
    points; small blocks of rows. KSG with a
    side of few codes (the grouped path) equals KSG with every count from the tree."""
    from pipeline.estimators import knn

    monkeypatch.setattr(knn, "GROUP_BLOCK_ELEMENTS", 50 * 16 * 4)
    rng = np.random.default_rng(8)
    codes = rng.integers(0, 2, size=(16, 4)).astype(float) + rng.normal(size=(16, 4))
    groups = rng.integers(0, 16, 900)
    tight = codes[groups] + 1e-10 * rng.normal(size=(900, 4))
    gaps = np.abs(codes[:, None] - codes[None]).max(-1)
    radius = np.r_[rng.uniform(0, 3e-10, 300), rng.choice(gaps[gaps > 0], 300), rng.uniform(0.1, 3, 300)]
    loose = rng.normal(size=(900, 3))
    for points, partition in [(tight, groups), (loose, rng.integers(0, 7, 900))]:
        tree = knn._count_within(points, radius, np.inf, "cpu", "tree")
        np.testing.assert_array_equal(knn._count_within_groups(points, partition, radius), tree)
        # radii exactly at a point's distance, and one float above: that point is out, then in
        to = np.abs(points - points[rng.permutation(900)]).max(1)
        radius = np.where(np.arange(900) % 2, to, np.nextafter(to, np.inf))
        tree = knn._count_within(points, radius, np.inf, "cpu", "tree")
        np.testing.assert_array_equal(knn._count_within_groups(points, partition, radius), tree)
    t = codes[groups, :2] @ rng.normal(size=(2, 3)) + 0.3 * rng.normal(size=(900, 3))
    grouped = mutual_information(codes[groups], t, "ksg")
    monkeypatch.setattr(knn, "MAX_COUNT_GROUPS", 0)
    assert mutual_information(codes[groups], t, "ksg") == grouped


@pytest.mark.parametrize("spread", [1.0, 0.05, 1e-9])
def test_grouped_joint_neighbours_equal_the_joint_tree(spread, monkeypatch):
    """The k-th joint neighbour found group by group equals the joint tree's, point by point:
    16 tight codes (1e-10 jitter) spread far apart (the groups decide), close together (the
    nearest other box often wins and rows go to the joint tree) or within the jitter's scale
    (groups wider than the neighbours on the other side), two groups of at most k points, and a
    partition of continuous points into loose groups; small blocks of rows."""
    from pipeline.estimators import knn

    monkeypatch.setattr(knn, "GROUP_BLOCK_ELEMENTS", 50 * 16 * 4)
    rng = np.random.default_rng(9)
    codes = spread * rng.normal(size=(16, 4))
    groups = np.r_[rng.integers(0, 14, 1200), [14] * 3, [15] * 5]
    tight = codes[groups] + 1e-10 * rng.normal(size=(len(groups), 4))
    other = rng.normal(size=(len(groups), 3))
    loose = rng.normal(size=(len(groups), 2))
    for grouped, partition in [(tight, groups), (loose, rng.integers(0, 7, len(groups)))]:
        for k in (1, 5):
            tree = knn._kth_distance(np.hstack([grouped, other]), k, np.inf, "cpu", "tree")
            np.testing.assert_array_equal(knn._joint_kth_distance_groups(grouped, partition, other, k), tree)


def test_the_float32_screen_gives_the_float64_neighbours_on_ties_and_wide_ranges(monkeypatch):
    """Values tied at float32's resolution (a grid with a 1e-10 jitter) go to float64 rows; wide
    coordinates (Cauchy x 1000) widen the screen's band; sides beyond float32's range skip the
    screen; all equal the float64 pass exactly."""
    from pipeline.estimators import knn

    monkeypatch.setattr(knn, "BLOCK_BYTES", 4 * 100 * 700)  # blocks of 100 rows
    rng = np.random.default_rng(3)
    grid = rng.integers(0, 3, size=(700, 3)) + 1e-10 * rng.normal(size=(700, 3))
    wide = rng.standard_cauchy(size=(700, 4)) * 1e3
    exact, redone = knn._ksg_counts_exact, []
    monkeypatch.setattr(knn, "_ksg_counts_exact",
                        lambda a, b, rows, k: redone.append(len(rows)) or exact(a, b, rows, k))
    for xa, xb in [(grid, rng.normal(size=(700, 2))), (wide, rng.normal(size=(700, 5)))]:
        screened = knn._ksg_counts_brute(xa, xb, 5, "cpu")
        everything = exact(torch.as_tensor(xa), torch.as_tensor(xb), torch.arange(700), 5)
        for got, want in zip(screened, everything, strict=True):
            np.testing.assert_array_equal(got, want.numpy())
    assert 0 < sum(redone) < 700
    redone.clear()  # beyond float32's range (1e-35 underflows, 1e35 x 2 overflows): float64 whole
    for scale in (1e-35, 1e35):
        xa, xb = rng.normal(size=(300, 3)) * scale, rng.normal(size=(300, 2))
        screened = knn._ksg_counts_brute(xa, xb, 5, "cpu")
        everything = exact(torch.as_tensor(xa), torch.as_tensor(xb), torch.arange(300), 5)
        for got, want in zip(screened, everything, strict=True):
            np.testing.assert_array_equal(got, want.numpy())
    assert sum(redone) == 600


@pytest.mark.parametrize("shape", [(300, 20), (50, 400)])
def test_pca_scores_equal_the_svd(shape):
    from pipeline.estimators.compression import pca_compress

    x = RNG.normal(size=shape) * np.linspace(3, 0.5, shape[1])  # distinct variances
    centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(pca_compress(x, 4)), np.abs(u[:, :4] * s[:4]), atol=1e-8)


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="no GPU here: run where one is lent (CI has none)")


@needs_gpu
def test_cuda_tensors_give_what_their_numpy_arrays_give():
    x = distinct_inputs(300)
    t = np.tanh(x @ RNG.normal(size=(12, 5)))
    y = RNG.integers(0, 2, 300)
    on_gpu = [torch.from_numpy(a).cuda() for a in (x, t, y)]
    assert information_plane(*on_gpu, "binning") == information_plane(x, t, y, "binning")


@needs_gpu
@pytest.mark.parametrize("method, params", [
    ("renyi", {"n_batches": 3}), ("kde", {}), ("kde", {"bound": "lower"}), ("ksg", {}),
    ("compression", {}),
])
def test_cuda_path_equals_the_cpu_path(method, params):
    # float64 on both devices: only summation order differs, so the values agree to ~1e-9;
    # ksg compares brute-force GPU neighbours with the CPU's tree, which count the same points.
    x = distinct_inputs(600)
    t = np.tanh(x @ RNG.normal(size=(12, 40)))
    y = RNG.integers(0, 4, 600)
    cpu = information_plane(x, t, y, method, **params)
    gpu = information_plane(x, t, y, method, device="cuda", **params)
    for key, value in cpu.items():
        assert gpu[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@needs_gpu
def test_autoencoder_codes_on_cuda_keep_the_information():
    # GPU kernels are not bit-identical to the CPU's: the codes differ, the MI they keep must not
    a, b = gaussian_pair(2000, 1.5, 2, seed=3, rotate=False)
    est = mutual_information(bump_images(a, 16), bump_images(b, 16), "compression", entropy="ksg",
                             device="cuda")
    assert est == pytest.approx(1.5, abs=0.15)


@needs_gpu
@pytest.mark.parametrize("bound", ["smile", "infonce", "nwj"])
def test_variational_bounds_and_the_flow_on_cuda(bound):
    """The neural estimators on the GPU: the same band around 1 bit as on the CPU (GPU kernels
    round differently, so the values are not the CPU's), seeded, and the CPU's and GPU's random
    states left as they were."""
    from pipeline.estimators.flow import flow_mutual_information
    a, b = gaussian_pair(2000, 1.0, 2, seed=3)
    states = torch.random.get_rng_state(), torch.cuda.get_rng_state()
    value = mutual_information(a, b, "variational", bound=bound, steps=400, device="cuda")
    flow = flow_mutual_information(a, b, steps=600, device="cuda")
    assert torch.equal(states[0], torch.random.get_rng_state())
    assert torch.equal(states[1], torch.cuda.get_rng_state())
    assert 0.7 < value < 1.15
    assert flow == pytest.approx(1.0, abs=0.1)
    assert mutual_information(a, b, "variational", bound=bound, steps=400, device="cuda") == pytest.approx(
        value, abs=1e-3)  # seeded; cuDNN/cuBLAS may reorder sums between runs


def test_estimators_equal_the_plain_references():
    """The fast paths compute the same formulas as the plain code `make bench` times them against."""
    from benchmarks.reference import binning_reference, ksg_reference, renyi_reference
    from pipeline.estimators.renyi import make_batches

    rng = np.random.default_rng(12)
    a, b = gaussian_pair(500, 1.0, 3, seed=12)
    assert mutual_information(a, b, "ksg") == pytest.approx(ksg_reference(a, b), abs=1e-12)
    x = rng.uniform(size=(600, 12))
    t = np.tanh(rng.normal(size=(600, 6)))
    y = rng.integers(0, 4, 600)
    fast = information_plane(x, t, y, "binning", n_bins=8)
    plain = binning_reference(t, y, n_bins=8)
    assert fast == pytest.approx({**plain, "I_XT_clipped": 0.0, "I_TY_clipped": 0.0}, abs=1e-12)
    fast = information_plane(x, t, y, "renyi", sigma_x=2.5, n_candidates=60, batch_size=50, n_batches=4)
    plain = renyi_reference(x, t, y, make_batches(600, 50, 4, 0), 2.5, 60)
    # widths: the candidates are scored in float32 (the arg max needs no more), hence 1e-6
    assert fast["sigma_t"] == pytest.approx(plain["sigma_t"], rel=1e-6)
    assert fast["I_XT"] == pytest.approx(plain["I_XT"], rel=1e-6)
    assert fast["I_TY"] == pytest.approx(plain["I_TY"], rel=1e-6)


# ---------------------------------------------------------------- variational
@pytest.mark.parametrize("bound", ["smile", "infonce", "nwj"])
def test_variational_bounds_on_a_known_pair(bound):
    """1 bit between 2-d Gaussians: each bound lands near it from below on held-out samples; the
    same seed gives the same value; torch's global random state is left as it was."""
    a, b = gaussian_pair(2000, 1.0, 2, seed=3)
    state = torch.random.get_rng_state()
    value = mutual_information(a, b, "variational", bound=bound, steps=400)
    assert torch.equal(state, torch.random.get_rng_state())
    assert 0.7 < value < 1.15
    assert mutual_information(a, b, "variational", bound=bound, steps=400) == value


def test_variational_labels_and_independence():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 1500)
    t = rng.normal(size=(1500, 3)) + 6.0 * y[:, None]  # separable classes: I(T;Y) = H(Y) = 1 bit
    assert mutual_information(t, y, "variational", steps=300) == pytest.approx(1.0, abs=0.1)
    noise = rng.normal(size=(1500, 3))  # independent: the held-out bound sits near 0
    assert mutual_information(t, noise, "variational", steps=300) < 0.05
    with pytest.raises(ValueError, match="bound"):
        mutual_information(t, noise, "variational", bound="mine")


def test_gaussian_estimator_is_exact_on_gaussian_pairs_and_their_monotone_maps():
    from pipeline.estimators.gaussian import gaussian_mutual_information
    for dim, bits in ((1, 0.0), (5, 0.5), (20, 2.5)):
        values = [gaussian_mutual_information(*gaussian_pair(2000, bits, dim, seed=s)) for s in range(8)]
        assert abs(np.mean(values) - bits) < 3 * np.std(values) / np.sqrt(8) + 0.005
    a, b = gaussian_pair(2000, 1.0, 3, seed=0)
    copula = gaussian_mutual_information(a, b)
    mapped = gaussian_mutual_information(apply_map("normal_cdf", a), np.arcsinh(b) ** 3)
    assert mapped == pytest.approx(copula, abs=1e-12)
    assert gaussian_mutual_information(a, b, copula=False) == pytest.approx(1.0, abs=0.06)


def test_gaussian_log_det_correction_is_unbiased():
    from pipeline.estimators.gaussian import corrected_log_det
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])
    draws = [corrected_log_det(rng.multivariate_normal(np.zeros(3), cov, size=12)) for _ in range(4000)]
    # n = 12, d = 3: the plain log det is 0.7 low on average; corrected, within Monte Carlo error
    assert np.mean(draws) == pytest.approx(np.linalg.slogdet(cov)[1], abs=4 * np.std(draws) / np.sqrt(4000))


def test_gaussian_labels_dead_units_and_singular_covariances():
    from pipeline.estimators.gaussian import gaussian_information_plane, gaussian_mutual_information
    rng = np.random.default_rng(1)
    t, y = rng.standard_normal((3000, 4)), rng.integers(3, size=3000)
    assert abs(gaussian_mutual_information(t, y)) < 0.01
    # classes of spread 1, 2, 3 along one axis, every class mean 0: the Gaussian fit of the whole
    # has variance 14/3, so I = (ln(14/3) - (ln 1 + ln 4 + ln 9) / 3) / 2 nats
    t[:, 0] *= 1 + y
    closed_form = (np.log(14 / 3) - np.log(36) / 3) / 2 / np.log(2)
    assert gaussian_mutual_information(t, y, copula=False) == pytest.approx(closed_form, abs=0.03)
    assert gaussian_mutual_information(t, y) > 0.1
    with_dead = np.hstack([t, np.zeros((3000, 1))])  # a dead unit changes nothing
    assert gaussian_mutual_information(with_dead, y) == gaussian_mutual_information(t, y)
    out = gaussian_information_plane(t[:, :2] + 0.01 * rng.standard_normal((3000, 2)), t, y)
    assert set(out) == {"I_XT", "I_TY"} and out["I_XT"] > 5
    with pytest.raises(ValueError, match="singular"):
        gaussian_mutual_information(np.hstack([t, t[:, :1] + t[:, 1:2]]), y, copula=False)
    with pytest.raises(ValueError, match="more than 5 samples"):
        gaussian_mutual_information(t[:4], t[:4, ::-1])


def test_student_t_pairs_carry_the_closed_form_information():
    from scipy.stats import multivariate_t

    from pipeline.groundtruth import student_t_excess, student_t_pair
    a, b, bits = student_t_pair(50_000, 0.5, 2, dof=3, seed=0, rotate=False)
    rho = np.sqrt(1 - np.exp(-2 * 0.5 * np.log(2) / 2))
    scale = np.eye(4)
    scale[[0, 1, 2, 3], [2, 3, 0, 1]] = rho
    joint, side = multivariate_t(np.zeros(4), scale, df=3), multivariate_t(np.zeros(2), np.eye(2), df=3)
    log_ratio = joint.logpdf(np.hstack([a, b])) - side.logpdf(a) - side.logpdf(b)
    assert np.mean(log_ratio) / np.log(2) == pytest.approx(bits, abs=4 * np.std(log_ratio) / np.sqrt(50_000))
    assert bits == pytest.approx(0.5 + student_t_excess(3, 2, 2)) and student_t_excess(3, 2, 2) > 0.1
    assert student_t_excess(1e6, 2, 2) == pytest.approx(0, abs=1e-6)  # the Gaussian limit


def test_sparse_gaussian_pairs_hold_the_information_in_the_active_coordinates():
    from pipeline.estimators.gaussian import gaussian_mutual_information
    a, b = gaussian_pair(4000, 2.0, 10, seed=3, rotate=False, active=2)
    assert gaussian_mutual_information(a[:, :2], b[:, :2], copula=False) == pytest.approx(2.0, abs=0.08)
    assert abs(gaussian_mutual_information(a[:, 2:], b[:, 2:], copula=False)) < 0.03
    with pytest.raises(ValueError, match="active"):
        gaussian_pair(10, 1.0, 3, active=4)


def test_image_families_are_seeded_images_of_every_latent_count():
    from pipeline.groundtruth import IMAGE_FAMILIES, held_out_families, render_images
    latent = np.random.default_rng(0).standard_normal((20, 6))
    assert {name for name, f in IMAGE_FAMILIES.items() if f.tuned} == {"bumps", "rectangles"}
    reserved = {"crosses", "bars", "triangles"}
    assert set(held_out_families()) == set(IMAGE_FAMILIES) - {"bumps", "rectangles"} - reserved
    assert set(held_out_families(reserved=True)) - set(held_out_families()) == reserved
    for name, family in IMAGE_FAMILIES.items():
        for m in range(2, family.max_latents + 1):
            images = render_images(name, latent[:, :m])
            assert images.shape[0] == 20 and images.shape[-2:] == (family.size, family.size)
            assert np.isfinite(images).all() and images.std(axis=0).max() > 0.05
            # every latent moves the pixels: none is ignored by the renderer
            moved = latent[:, :m].copy()
            moved[:, m - 1] += 0.5
            assert np.abs(render_images(name, moved) - images).max() > 1e-3
        with pytest.raises(ValueError, match="latent dimensions"):
            render_images(name, latent[:, :1])
    assert render_images("colour_bumps", latent).shape == (20, 3, 16, 16)
    assert render_images("gratings", latent, size=64).shape == (20, 1, 64, 64)
    assert render_images("dots", latent).shape == (20, 3, 32, 32)
    assert render_images("ellipses", latent).shape == (20, 1, 64, 64)
    assert render_images("crosses", latent).shape == (20, 1, 48, 48)
    assert render_images("bars", latent).shape == (20, 1, 40, 40)
    assert render_images("triangles", latent).shape == (20, 3, 24, 24)


def test_compression_reports_what_its_code_kept_and_flags_a_code_too_small():
    from pipeline.estimators.compression import CompressionWarning, compression_mutual_information
    a, b = gaussian_pair(1500, 1.5, 3, seed=2, rotate=False)
    images_a, images_b = bump_images(a).reshape(1500, -1), bump_images(b).reshape(1500, -1)
    with pytest.warns(CompressionWarning, match="code of a reconstructs only 0"):
        small, report = compression_mutual_information(images_a, images_b, compressor="pca", dim=1,
                                                       diagnostics=True)
    # one PCA axis of a 3-latent image loses most of it
    assert max(report["kept_a"], report["kept_b"]) < 0.5 and small < 0.6 and report["lossy"] == 1.0
    # samples on a 3-d linear subspace: a 3-d PCA code keeps everything but the noise, and no warning
    mix = np.random.default_rng(0).standard_normal((3, 50))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompressionWarning)
        value, report = compression_mutual_information(a @ mix, b @ mix, compressor="pca", dim=3,
                                                       diagnostics=True)
    assert report == {"kept_a": pytest.approx(1.0), "kept_b": pytest.approx(1.0), "dim_a": 3, "dim_b": 3,
                      "lossy": 0.0}
    assert value == pytest.approx(1.5, abs=0.2)
    plane = information_plane(a @ mix, images_a, (a[:, 0] > 0).astype(int), "compression", dim=1)
    assert plane["X_kept"] < 0.99 and plane["T_kept"] < 0.5
    assert plane["I_XT_lossy"] == 1.0 and plane["I_TY_lossy"] == 1.0


def test_autoencoder_kept_share_is_one_minus_the_relative_reconstruction_error():
    from pipeline.estimators.compression import autoencoder_compress, conv_autoencoder_compress
    a, _ = gaussian_pair(600, 1.0, 2, seed=4, rotate=False)
    images = bump_images(a)
    codes, kept = autoencoder_compress(images.reshape(600, -1), 2, steps=300, return_kept=True)
    np.testing.assert_array_equal(codes, autoencoder_compress(images.reshape(600, -1), 2, steps=300))
    assert 0.5 < kept < 1.0
    short = conv_autoencoder_compress(images.reshape(600, -1), 2, (16, 16), steps=2, candidates=1,
                                      return_kept=True).kept
    longer = conv_autoencoder_compress(images.reshape(600, -1), 2, (16, 16), steps=200, candidates=1,
                                       return_kept=True).kept
    assert short < longer <= 1.0


def test_ksg_flags_the_cells_beyond_its_measured_rule():
    from pipeline.estimators.knn import KSG_RELIABLE_DIMS, ksg_biased
    assert KSG_RELIABLE_DIMS[5000] == (4, 10)
    assert not ksg_biased(5000, 4, 4) and ksg_biased(5000, 5, 1) and ksg_biased(4999, 4, 4)
    assert not ksg_biased(60000, 10) and ksg_biased(60000, 11) and ksg_biased(499, 1, 1)
    a, b = gaussian_pair(600, 1.0, 3, seed=0)
    out = information_plane(a, b, (a[:, 0] > 0).astype(int), "ksg")
    assert out["I_XT_biased"] == 1.0 and out["I_TY_biased"] == 0.0


def test_a_single_call_warns_where_ksg_or_binning_is_known_to_read_wrong():
    """The judgements the stage stores as flags, said by `mutual_information` itself."""
    from pipeline.estimators import EstimateWarning

    a, b = gaussian_pair(600, 1.0, 3, seed=0)
    labels = (a[:, 0] > 0).astype(int)
    with pytest.warns(EstimateWarning, match="KSG on 600 samples of 3 \\+ 3 dimensions lies beyond its "
                                             "measured rule: it reads low"):
        mutual_information(a, b, "ksg")
    wide_a, wide_b = gaussian_pair(600, 1.0, 8, seed=0)  # every binned pattern distinct
    with pytest.warns(EstimateWarning, match="binning read 9.229 bits, within 1% of log2\\(n\\) = "
                                             "9.229, the most 600 samples can show"):
        mutual_information(wide_a, wide_b, "binning", range="layer")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the rule, labels
        mutual_information(a[:, :2], b[:, :2], "ksg")
        mutual_information(a, labels, "ksg")


def test_a_binning_call_warns_where_shuffled_pairs_read_half_its_value():
    """Binning that reads on pairs without information at least half of what it reads on the
    true pairs is mostly bias: 3 + 3 dimensions at 600 samples, binned over their own span, read
    8.96 bits for 1 (below the saturation rule's 9.14), and labels a function of the layer are
    read as well from shuffled ones when every binned pattern is distinct. One dimension at 5000
    samples (within the fixed range) is silent."""
    from pipeline.estimators import EstimateWarning
    from pipeline.estimators.binning import binning_shuffled_mutual_information

    a, b = gaussian_pair(600, 1.0, 3, seed=0)
    shuffled = binning_shuffled_mutual_information(a, b, range="layer")  # named in the warning
    with pytest.warns(EstimateWarning, match=rf"and {shuffled:.3f} on the same samples with their pairing "
                                             r"shuffled, which carry no information: at least 50% of"):
        assert 8.5 < mutual_information(a, b, "binning", range="layer") < 0.99 * np.log2(600)
    with pytest.warns(EstimateWarning, match="at least 50% of the value is the plug-in's bias"):
        mutual_information(a, (a[:, 0] > 0).astype(int), "binning", range="layer")
    state = np.random.get_state()[1].copy()
    one_a, one_b = (side / 5 for side in gaussian_pair(5000, 1.0, 1, seed=0))  # |values| < 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mutual_information(one_a, one_b, "binning") < 1.0
        mutual_information(one_a, (one_a[:, 0] > 0).astype(int), "binning")
        mutual_information(np.zeros((100, 2)), np.ones((100, 2)), "binning")  # 0 bits, shuffled or not
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_a_flow_far_below_ksg_on_the_same_codes_is_flagged(monkeypatch):
    from pipeline.estimators import compression
    assert compression.flow_disagrees(0.18, 1.2) and not compression.flow_disagrees(1.0, 1.2)
    assert compression.flow_disagrees(0.3, 0.5) and not compression.flow_disagrees(0.4, 0.5)  # 0.15 bit floor
    a, b = gaussian_pair(800, 1.0, 2, seed=5)
    monkeypatch.setattr(compression, "flow_mutual_information", lambda ca, cb, **kw: 0.05)
    with pytest.warns(compression.CompressionWarning, match="flow read 0.050 bits where KSG"):
        value, report = compression.compression_mutual_information(a, b, compressor="none", entropy="flow",
                                                                   diagnostics=True)
    # the estimate is the larger reading, KSG's, and stays flagged
    assert report["flow"] == 0.05 and value == report["ksg_on_codes"] == pytest.approx(1.0, abs=0.2)
    assert report["lossy"] == 1.0
    plane = compression.compression_information_plane(a, b, (a[:, 0] > 0).astype(int), compressor="none",
                                                      input_compressor="none", entropy="flow")
    assert plane["I_XT"] == pytest.approx(1.0, abs=0.2) and plane["I_XT_lossy"] == 1.0
    assert plane["I_TY_lossy"] == 0.0
    # a flow above KSG is the estimate, unflagged
    monkeypatch.setattr(compression, "flow_mutual_information", lambda ca, cb, **kw: 1.25)
    value, report = compression.compression_mutual_information(a, b, compressor="none", entropy="flow",
                                                               diagnostics=True)
    assert value == 1.25 and report["ksg_on_codes"] < 1.25 and report["lossy"] == 0.0


def test_intrinsic_dimension_sizes_autoencoder_codes():
    from pipeline.estimators.compression import MAX_AUTO_DIM, code_dimension, intrinsic_dimension
    rng = np.random.default_rng(0)
    flat = rng.standard_normal((3000, 3)) @ rng.standard_normal((3, 40))  # a 3-d plane in 40 dims
    assert intrinsic_dimension(flat) == pytest.approx(3.0, abs=0.3)
    latent = rng.standard_normal((3000, 2))
    images = bump_images(latent).reshape(3000, -1)  # a curved 2-d sheet in 256 pixels
    assert intrinsic_dimension(images) == pytest.approx(2.0, abs=0.3)
    assert code_dimension("auto", images, "conv_autoencoder") == 2
    assert code_dimension("auto", images, "pca") == 4 and code_dimension(5, images, "autoencoder") == 5
    assert code_dimension("auto", rng.standard_normal((3000, 30)), "autoencoder") == MAX_AUTO_DIM
    with pytest.raises(ValueError, match="dim must be"):
        code_dimension(0, images, "pca")


def test_pooling_loss_is_exact_and_counts_against_the_kept_share():
    import torch

    from pipeline.estimators.compression import conv_autoencoder_compress, pooled_images
    from pipeline.groundtruth import render_images
    rng = np.random.default_rng(1)
    blocks = torch.as_tensor(rng.standard_normal((4, 1, 8, 8)))
    blocky = blocks.repeat_interleave(8, -1).repeat_interleave(8, -2)
    pooled, factor, lost = pooled_images(blocky, 32)
    assert factor == 2 and pooled.shape == (4, 1, 32, 32) and lost == pytest.approx(0.0, abs=1e-9)
    noisy = blocky + torch.as_tensor(rng.standard_normal(blocky.shape))
    _, _, lost = pooled_images(noisy, 32)
    # white noise keeps 1/4 of its energy in 2x2 block means
    assert lost == pytest.approx(0.75 * float((noisy - blocky).pow(2).sum()), rel=0.05)
    assert pooled_images(noisy[..., :30, :30], 32)[1] == 1
    latent = rng.standard_normal((300, 2))
    images = render_images("ellipses", latent).reshape(300, -1)
    codes = conv_autoencoder_compress(images, 2, (64, 64), steps=20, candidates=1, return_kept=True)
    assert codes.values.shape == (300, 2) and codes.kept < 1.0


def test_autoencoders_and_the_flow_leave_torch_random_state_alone():
    from pipeline.estimators.compression import autoencoder_compress, conv_autoencoder_compress
    from pipeline.estimators.flow import flow_mutual_information
    a, b = gaussian_pair(300, 1.0, 2, seed=6, rotate=False)
    images = bump_images(a).reshape(300, -1)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = conv_autoencoder_compress(images, 2, (16, 16), steps=5, candidates=1)
    autoencoder_compress(images, 2, steps=5)
    value = flow_mutual_information(a, b, steps=5)
    assert torch.equal(state, torch.random.get_rng_state())
    torch.manual_seed(7)  # another caller state: the same results
    again = conv_autoencoder_compress(images, 2, (16, 16), steps=5, candidates=1)
    np.testing.assert_array_equal(first, again)
    assert flow_mutual_information(a, b, steps=5) == value


@pytest.mark.parametrize("dims, informative", [(1, False), (3, True), (10, False), (10, True)])
def test_alignment_bounds_hold_and_pruning_keeps_the_width(dims, informative):
    """Every candidate's exact score lies within its run bounds, and the pruned search picks
    the width that scoring every candidate in float32 picks (flat and peaked score curves)."""
    from pipeline.estimators._common import squared_distances
    from pipeline.estimators.renyi import alignment_bounds, alignment_sigma

    rng = np.random.default_rng(dims)
    h = torch.as_tensor(np.tanh(rng.normal(size=(4, 100, dims))))
    labels = (h[..., 0] > 0).long() if informative else torch.as_tensor(rng.integers(0, 10, (4, 100)))
    d2, ky = squared_distances(h), label_gram(labels)
    rows, cols = torch.triu_indices(100, 100, offset=1)
    pair_d2, pair_y = d2[:, rows, cols].float(), ky[:, rows, cols].float()
    candidates = 0.3 + torch.linspace(0, 1, 120)[None, :] * (10 * torch.sqrt(pair_d2).mean(-1)[:, None] - 0.3)
    norm_y = torch.sqrt(2.0 * pair_y.sum(-1) + 100)
    low, high = alignment_bounds(pair_d2, pair_y, candidates, 2.0, norm_y, 100, groups=16)
    k = torch.exp(-pair_d2.double()[:, None, :] / (2.0 * candidates.double()[..., None] ** 2))
    exact = (2 * (k * pair_y.double()[:, None]).sum(-1) + 100) / (
        torch.sqrt(2 * (k * k).sum(-1) + 100) * norm_y.double()[:, None])
    assert bool((low <= exact * (1 + 1e-12)).all() and (exact <= high * (1 + 1e-12)).all())
    k32 = torch.exp(-pair_d2[:, None, :] / (2.0 * candidates[..., None] ** 2))
    every = (2 * (k32 * pair_y[:, None]).sum(-1) + 100) / (torch.sqrt(2 * (k32 * k32).sum(-1) + 100)
                                                          * norm_y[:, None])
    expected = candidates.gather(1, every.argmax(1, keepdim=True)).squeeze(1)
    assert torch.equal(alignment_sigma(d2, ky, n_candidates=120).float(), expected)


def test_bottleneck_oracle_recovers_latents_from_an_injective_code_and_not_from_noise():
    from benchmarks.code_bottleneck import regressed_latents

    rng = np.random.default_rng(0)
    latent = rng.standard_normal((2000, 2))
    warped = np.column_stack([np.tanh(latent[:, 0] + 0.5 * latent[:, 1]), latent[:, 1] ** 3 + latent[:, 0],
                              np.sin(latent[:, 0])])  # injective through its first two columns
    train, test = slice(0, 1000), slice(1000, 2000)
    predicted, r2 = regressed_latents(warped, latent, train, test, steps=1500)
    assert predicted.shape == (1000, 2)
    assert r2.min() > 0.95
    _, r2_noise = regressed_latents(rng.standard_normal((2000, 3)), latent, train, test, steps=1500)
    assert r2_noise.max() < 0.1


def test_mixing_diffeomorphism_is_a_seeded_bijection_that_mixes_coordinates():
    from pipeline.groundtruth import mixing_diffeomorphism

    rng = np.random.default_rng(0)
    line = rng.standard_normal((500, 1))
    order = np.argsort(mixing_diffeomorphism(line, seed=3)[:, 0])  # one dimension: monotone, ranks kept
    assert np.array_equal(order, np.argsort(line[:, 0])) or np.array_equal(order, np.argsort(-line[:, 0]))
    points, step = rng.standard_normal((200, 3)), 1e-6
    columns = [(mixing_diffeomorphism(points + step * np.eye(3)[i], seed=1)
                - mixing_diffeomorphism(points - step * np.eye(3)[i], seed=1)) / (2 * step) for i in range(3)]
    jacobian = np.stack(columns, axis=1)  # (points, input, output)
    determinants = np.linalg.det(jacobian)  # rotations (+-1) times slopes of at least 0.1 per coordinate
    assert np.abs(determinants).min() > 0.1 ** 9 and len(np.unique(np.sign(determinants))) == 1
    off_diagonal = jacobian * (1 - np.eye(3))
    assert np.abs(off_diagonal).max() > 0.3  # not a per-coordinate map: normal scores do not undo it
    assert np.array_equal(mixing_diffeomorphism(points, seed=1), mixing_diffeomorphism(points, seed=1))
    assert not np.allclose(mixing_diffeomorphism(points, seed=1), mixing_diffeomorphism(points, seed=2))


# Cheap parameters that still run each method's torch code (networks, flows, batched kernels).
# (The flow has its own test of this: test_autoencoders_and_the_flow_leave_torch_random_state_alone.)
_CHEAP = {"compression": {"compressor": "autoencoder", "dim": 2, "ae_steps": 5, "ae_candidates": 1,
                          "entropy": "ksg"},
          "variational": {"steps": 5}, "renyi": {"n_batches": 2}}


def _global_state() -> dict[str, object]:
    import random
    return {"torch rng": torch.random.get_rng_state(), "numpy rng": np.random.get_state()[1].copy(),
            "python rng": random.getstate(), "threads": torch.get_num_threads(),
            "grad": torch.is_grad_enabled(), "dtype": torch.get_default_dtype(),
            "deterministic": torch.are_deterministic_algorithms_enabled()}


@pytest.mark.parametrize("method", METHODS)
def test_every_builtin_estimator_leaves_global_state_as_it_found_it(method):
    """The random generators of torch, numpy and Python, torch's threads, grad mode, default
    dtype and determinism flag are the caller's after each built-in estimator, on both its
    functions; the same call twice gives the same values (the estimators seed their own)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(240, 6))
    t = np.tanh(x[:, :3] @ rng.normal(size=(3, 4)))
    y = (x[:, 0] > 0).astype(np.int64)
    torch.manual_seed(5)
    np.random.seed(5)
    before = _global_state()
    cheap = _CHEAP.get(method, {})
    plane = {**cheap, **({"n_candidates": 20} if method == "renyi" else {})}  # the plane's alignment
    with warnings.catch_warnings():  # 5 training steps: the compressor's low-kept warning
        warnings.simplefilter("ignore")
        first = information_plane(x, t, y, method, **plane)
        pair = mutual_information(t, x[:, :3], method, **cheap)
    after = _global_state()
    for key, value in before.items():
        same = torch.equal(value, after[key]) if isinstance(value, torch.Tensor) else (
            np.array_equal(value, after[key]) if isinstance(value, np.ndarray) else value == after[key])
        assert same, f"{method} changed the {key}"
    np.random.seed(99)  # another caller state: the same values
    torch.manual_seed(99)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert information_plane(x, t, y, method, **plane) == first
        assert mutual_information(t, x[:, :3], method, **cheap) == pair
