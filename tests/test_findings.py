"""The findings checks on synthetic results with known answers."""

import numpy as np
import pytest

from pipeline import findings as fd
from pipeline.results import holding_values, masked, seed_mean, template

EPOCHS = np.array([0, 1, 2, 5, 10, 20])
LAYERS = ["dense1", "dense2", "softmax"]


def results_with(i_xt_curve, i_ty_final=0.9):
    ds = template({"binning_30": {"method": "binning"}}, [0, 1], ["all"], EPOCHS, LAYERS, [4, 3, 2], {})
    curve = np.asarray(i_xt_curve, dtype=float)
    for l, scale in enumerate([3.0, 2.0, 1.0]):  # deeper layers carry less, DPI holds
        ds["I_XT"][0, :, 0, :, l] = scale * curve
    ds["I_TY"][:] = i_ty_final
    ds["done"][:] = True
    return ds


def test_compression_phase_finds_peak_and_drop():
    ds = results_with([1, 2, 4, 3.5, 3, 2.5])  # fits to epoch 2, then compresses
    phase = fd.compression_phase(ds, "binning_30")
    assert phase.peak_epoch_mean.sel(layer="dense1") == 2
    assert float(phase.drop_mean.sel(layer="dense1")) == pytest.approx(3 * 1.5)
    assert float(phase.drop_std.sel(layer="dense1")) == pytest.approx(0.0)
    assert fd.compresses(ds, "binning_30").values.tolist() == [True, True]
    assert fd.compression_table(ds) == {"binning_30": 1.0}
    assert fd.dpi_share(ds, "binning_30") == 1.0


def test_no_compression_and_unfinished_runs():
    ds = results_with([1, 2, 3, 3.5, 3.9, 4.0])
    assert fd.compression_table(ds) == {"binning_30": 0.0}
    # cells not done yet are ignored: the last done epoch counts as the end
    ds["done"][..., -2:, :] = False
    phase = fd.compression_phase(ds, "binning_30")
    assert float(phase.final_bits.sel(layer="dense1").mean()) == pytest.approx(3 * 3.5)


def test_output_information_against_label_entropy():
    ds = results_with([1, 2, 3, 3, 3, 3], i_ty_final=0.95)
    out = fd.output_information(ds, "binning_30", np.array([0, 1, 1, 0]))
    assert out == {"final_mean": pytest.approx(0.95), "final_std": pytest.approx(0.0), "H_Y": 1.0}


def test_dpi_share_counts_violations():
    ds = results_with([1, 1, 1, 1, 1, 1])
    ds["I_XT"][0, 0, 0, 0, 1] = 10.0  # dense2 above dense1 at one (seed, epoch)
    # 2 seeds x 6 epochs x 2 pairs = 24 cells, 1 violated
    assert fd.dpi_share(ds, "binning_30") == pytest.approx(23 / 24)


@pytest.mark.parametrize("curve, phases", [
    ([0, 1, 2, 3, 2, 1, 2, 3, 2], 4),      # fit, compress, fit, compress
    ([0, 1, 2, 3, 4], 1),
    ([0, 1, 1.001, 1, 2, 2.001, 3], 1),    # wiggles below 2% of the range are not phases
    ([3, 2, 1], 1),
])
def test_count_phases(curve, phases):
    assert fd.count_phases(np.array(curve)) == phases


def test_fisher_peak():
    ds = results_with([1, 1, 1, 1, 1, 1])
    ds["fisher_trace"][:] = np.array([1, 4, 8, 6, 3, 2.0])[None, :, None]
    ds["fisher_done"][:] = True
    peak = fd.fisher_peak(ds)
    assert peak.peak_epoch.values.tolist() == [2, 2, 2]
    assert float(peak.final_over_peak.sel(layer="dense1")) == pytest.approx(0.25)


def test_seeds_without_values_are_left_out():
    ds = results_with([1, 2, 4, 3.5, 3, 2.5])
    ds["I_XT"][0, 0, 0, 3:, :] = 99.0  # seed 0 differs: flat top from epoch 5
    ds["done"][0, 1] = False  # seed 1 not estimated (a partial run: --seeds 0)
    phase = fd.compression_phase(ds, "binning_30")
    assert phase.sizes["seed"] == 1 and float(phase.peak_epoch_mean.sel(layer="dense1")) == 5
    assert float(phase.drop_mean.sel(layer="dense1")) == pytest.approx(0.0)


def test_masking_once_is_enough_and_selections_stay_masked():
    ds = results_with([1, 2, 4, 3.5, 3, 2.5])
    ds["done"][0, 1, 0, 2:] = False  # seed 1 stopped after epoch 1
    once = masked(ds)
    assert np.isnan(once.I_XT[0, 1, 0, 2:]).all() and np.isfinite(once.I_XT[0, 0]).all()
    assert masked(once) is once  # figures and findings mask what they are handed
    part = once.sel(estimator=["binning_30"], layer=["dense1"])
    assert masked(part) is part and np.isnan(part.I_XT[0, 1, 0, 2:]).all()
    assert not np.isnan(ds.I_XT).any()  # the store's dataset itself is left as it was


def test_holding_values_marks_seeds_and_epochs_with_any_value():
    ds = masked(results_with([1, 2, 4, 3.5, 3, 2.5]))
    values = ds.I_XT.sel(estimator="binning_30", split="all").copy()
    values[1] = np.nan  # seed 1 not estimated
    values[0, 1::2] = np.nan  # seed 0 on every other epoch (--every 2)
    values[0, 2, :2] = np.nan  # one epoch with the output layer alone still counts
    assert holding_values(values, "seed").tolist() == [True, False]
    assert holding_values(values, "epoch").tolist() == [True, False, True, False, True, False]
    assert holding_values(values, "layer").tolist() == [True, True, True]


def test_phase_counts_per_seed_and_layer():
    ds = results_with([1, 3, 2, 4, 3.5, 5])  # up, down, up, down, up: five phases
    ds = ds.assign_coords(split=["test"])
    ds["I_XT"][0, 1, 0, :, :] = np.array([1, 2, 3, 4, 5, 6.0])[:, None]  # seed 1 only fits
    counts = fd.phase_counts(ds, "binning_30", "test", rule="fraction")
    assert counts.dims == ("seed", "layer") and counts.sel(seed=0).values.tolist() == [5, 5, 5]
    assert counts.sel(seed=1).values.tolist() == [1, 1, 1]
    # the interval rule needs the cells' own intervals: without them it decides nothing
    assert np.isnan(fd.phase_counts(ds, "binning_30", "test").values).all()


def with_cell_intervals(ds, half):
    ds = ds.copy(deep=True)
    ds["I_XT_lo"], ds["I_XT_hi"] = ds.I_XT - half, ds.I_XT + half
    return ds


def test_phase_counts_by_the_cells_intervals():
    ds = results_with([1, 3, 2, 4, 3.5, 5]).assign_coords(split=["test"])
    # dense1 (3x the curve: 3, 9, 6, 12, 10.5, 15) falls by 3 and by 1.5: half-widths 0.5 see
    # five phases; with half-widths 1 the 1.5 fall lies within the noise: three (up, down, up)
    one = {"seed": 0, "layer": "dense1"}
    assert fd.phase_counts(with_cell_intervals(ds, 0.5), "binning_30", "test", persist=1).sel(one) == 5
    assert fd.phase_counts(with_cell_intervals(ds, 1.0), "binning_30", "test", persist=1).sel(one) == 3
    # by default a move must hold on 3 snapshots: only the rise does (6 -> 12 -> 10.5 -> 15 all
    # above the first point's interval); a one-snapshot dip is not a phase
    counts = fd.phase_counts(with_cell_intervals(ds, 0.5), "binning_30", "test")
    assert counts.sel(one) == 1 and counts.attrs["persist"] == 3


def test_count_phases_with_intervals():
    curve = np.array([0, 1, 2, 1.5, 2.5])
    assert fd.count_phases(curve, lo=curve - 0.1, hi=curve + 0.1) == 3
    assert fd.count_phases(curve, lo=curve - 0.3, hi=curve + 0.3) == 1  # the 0.5 fall is noise


def test_a_phase_must_hold_on_persist_consecutive_points():
    rise_dip_rise = np.array([0, 2, 4, 4, 4, 1, 4, 4, 4, 4])  # one low point after the rise
    rise_fall = np.array([0, 2, 4, 4, 4, 1, 1, 1, 1, 1])  # the fall holds
    half = 0.5
    for persist, dip, fall in ((1, 3, 2), (2, 1, 2), (3, 1, 2)):
        assert fd.count_phases(rise_dip_rise, lo=rise_dip_rise - half, hi=rise_dip_rise + half,
                               persist=persist) == dip
        assert fd.count_phases(rise_fall, lo=rise_fall - half, hi=rise_fall + half, persist=persist) == fall
    # flat noise under calibrated 90% intervals: persistence keeps false phases rare
    rng = np.random.default_rng(3)
    flat = rng.standard_normal((200, 92))
    any_phase = [np.mean([fd.count_phases(v, lo=v - 1.645, hi=v + 1.645, persist=p) > 0 for v in flat])
                 for p in (1, 3)]
    assert any_phase[1] <= 0.05 < 0.3 < any_phase[0]
    with pytest.raises(ValueError, match="persist"):
        fd.count_phases(rise_fall, persist=0)


def test_seed_mean_t_interval_and_single_seed_cell_interval():
    ds = results_with([1, 1, 1, 1, 1, 1])
    ds = ds.reindex(seed=[0, 1, 2])
    ds["done"] = ds.done.fillna(True).astype(bool)
    ds["I_XT"][0, :, 0, 0, 0] = [1.0, 2.0, 3.0]
    band = seed_mean(ds.sel(estimator="binning_30", split="all"), "I_XT", confidence=0.9)
    first = band.isel(epoch=0, layer=0)
    half = 2.919986 / np.sqrt(3)  # t(0.95, 2 dof) from the table, times s = 1, over sqrt(3)
    assert float(first["mean"]) == 2.0 and int(first.n_seeds) == 3
    assert float(first.lo) == pytest.approx(2 - half, rel=1e-6)
    assert float(first.hi) == pytest.approx(2 + half, rel=1e-6)
    one = ds.isel(seed=[0])
    assert np.isnan(seed_mean(one, "I_XT").lo).all()  # one seed, no cell interval: none
    band = seed_mean(with_cell_intervals(one, 0.25), "I_XT").sel(estimator="binning_30", split="all")
    assert float(band.lo.isel(epoch=0, layer=0)) == 0.75 and float(band.hi.isel(epoch=0, layer=0)) == 1.25


def noisy_seeds(noise, n_seeds=4):
    """A compressing curve (peak 4 at epoch 2, 2.5 at the end) plus seed-to-seed noise."""
    ds = results_with([1, 2, 4, 3.5, 3, 2.5]).reindex(seed=list(range(n_seeds)))
    ds["done"] = ds.done.fillna(True).astype(bool)
    curve = np.array([1, 2, 4, 3.5, 3, 2.5])
    offsets = noise * np.linspace(-1, 1, n_seeds)  # each seed shifted, a different epoch each
    for s in range(n_seeds):
        ds["I_XT"][0, s, 0, :, :] = (curve + offsets[s] * (-1) ** np.arange(6))[:, None]
    return ds


def test_compresses_only_beyond_the_interval():
    quiet, noisy = noisy_seeds(0.1), noisy_seeds(3.0)
    assert fd.compresses(quiet, "binning_30").values.tolist() == [1.0, 1.0]
    assert fd.compresses(noisy, "binning_30").values.tolist() == [0.0, 0.0]
    # the 5% rule sees the same drop of the mean in both and calls it
    assert fd.compresses(noisy, "binning_30", rule="fraction").values.tolist() == [1.0, 1.0]
    one = noisy.isel(seed=[0])
    assert np.isnan(fd.compresses(one, "binning_30").values).all()
    assert np.isnan(fd.compression_table(one)["binning_30"])
    assert fd.compression_table(with_cell_intervals(one, 0.1))["binning_30"] == 1.0
    with pytest.raises(ValueError, match="rule"):
        fd.compresses(quiet, "binning_30", rule="5%")


def test_held_out_peak_is_read_on_the_snapshot_after_the_best_of_every_other_one():
    # candidates: snapshots 0, 2, 4 (every other before the last); the best is 4, read at 5
    assert fd.held_out_peak(np.array([0.0, 5.0, 1.0, 2.0, 3.0, 9.0, 1.0])) == 5
    # snapshots without a value are skipped: valid 0, 2, 3, 5, 6; candidates 0 and 3; read at 5
    assert fd.held_out_peak(np.array([1.0, np.nan, 4.0, 2.0, np.nan, 3.0, 0.0])) == 5
    assert fd.held_out_peak(np.array([1.0, np.nan, 2.0])) == -1  # fewer than 3 snapshots


def curves_as_layers(curves):
    """A store whose hidden layers are `curves` (seed, epoch, curve); one output layer after."""
    n_seeds, n_epochs, n = curves.shape
    layers = [f"h{i}" for i in range(n)] + ["out"]
    ds = template({"e": {"method": "binning"}}, list(range(n_seeds)), ["all"], np.arange(n_epochs),
                  layers, [2] * len(layers), {})
    ds["I_XT"][0, :, 0, :, :n] = curves
    ds["I_TY"][:] = 0.5
    ds["done"][:] = True
    return ds


def test_held_out_rule_keeps_false_calls_at_the_nominal_level_on_flat_noisy_curves():
    # 4 seeds, 92 snapshots: a plateau with noise fresh at every snapshot (sd 1 bit)
    rng = np.random.default_rng(7)
    flat = curves_as_layers(3.0 + rng.standard_normal((4, 92, 300)))
    held_out, at_peak = (float(fd.compresses(flat, "e", rule=r).mean()) for r in ("held_out", "interval"))
    assert held_out <= 0.05  # one-sided 5% at most
    assert at_peak > 2 * held_out + 0.05  # the highest snapshot's own noise, counted as a drop
    drop = np.linspace(0, 3, 92)[None, :, None]
    falling = curves_as_layers(3.0 - drop + 0.2 * rng.standard_normal((4, 92, 50)))
    assert float(fd.compresses(falling, "e").mean()) == 1.0  # a clear drop is still called


def test_a_drop_within_the_saturated_band_is_not_called():
    # the seed mean peaks at epoch 2 (index 2); the held-out rule locates it among indices 0, 2, 4
    # and reads the snapshot after it, epoch 5: each rule looks at the flags of its own two epochs
    quiet = noisy_seeds(0.1)
    assert fd.compresses(quiet, "binning_30").values.tolist() == [1.0, 1.0]  # a store without flags
    quiet["I_XT_saturated"] = quiet.I_XT * 0.0
    flags = quiet["I_XT_saturated"]
    flags.loc[{"layer": "dense1", "epoch": 2}] = 1.0  # the peak only: decided
    for rule in ("held_out", "interval"):
        assert fd.compresses(quiet, "binning_30", rule=rule).values.tolist() == [1.0, 1.0]
    flags.loc[{"layer": "dense1", "epoch": 20}] = 1.0  # the seed mean's peak and the end, every seed
    assert np.isnan(fd.compresses(quiet, "binning_30", rule="interval").sel(layer="dense1"))
    assert fd.compresses(quiet, "binning_30").sel(layer="dense1") == 1.0  # epoch 5 is not flagged
    flags.loc[{"layer": "dense1", "epoch": 5}] = 1.0  # now the held-out rule's epochs are flagged too
    assert np.isnan(fd.compresses(quiet, "binning_30").sel(layer="dense1"))
    assert fd.compresses(quiet, "binning_30").sel(layer="dense2") == 1.0
    assert fd.saturated_at_both_ends(quiet, "binning_30").values.tolist() == [True, False, False]
    flags[0, 0, 0, -1, 0] = 0.0  # one seed below the band at the end: decided
    for rule in ("held_out", "interval"):
        assert fd.compresses(quiet, "binning_30", rule=rule).sel(layer="dense1") == 1.0
    # the 5% rule is the papers' as it stands: it does not look at the flags
    quiet["I_XT_saturated"][:] = 1.0
    assert fd.compresses(quiet, "binning_30", rule="fraction").values.tolist() == [1.0, 1.0]


def test_distrusted_share_counts_the_flags_of_the_entries_that_have_them():
    import xarray as xr
    dims = ("estimator", "split", "epoch")
    lossy = np.array([[[1.0, 0.0, 0.0, 1.0]], [[np.nan] * 4]])  # compression: 2 of 4; ksg: not its flag
    biased = np.array([[[np.nan] * 4], [[1.0, 1.0, 1.0, 0.0]]])
    ds = xr.Dataset({"I_XT_lossy": (dims, lossy), "I_XT_biased": (dims, biased)},
                    coords={"estimator": ["compression", "ksg"], "split": ["test"], "epoch": range(4)})
    assert fd.distrusted_share(ds, "compression", "test") == 0.5
    assert fd.distrusted_share(ds, "ksg", "test") == 0.75
    assert np.isnan(fd.distrusted_share(ds.drop_vars(["I_XT_lossy", "I_XT_biased"]), "ksg", "test"))


def test_at_null_share_compares_each_cells_lower_end_with_its_shuffle_baseline():
    outputs = {name: ("", "bits") for name in ("I_TY_lo", "I_TY_hi", "I_TY_null")}
    ds = template({"binning_30": {"method": "binning"}, "renyi": {"method": "renyi"}}, [0, 1], ["all"],
                  EPOCHS, LAYERS, [4, 3, 2], {}, outputs)
    ds["done"][:] = True
    ds["I_TY"][:] = 0.9
    ds["I_TY_null"][:] = 0.5
    ds["I_TY_lo"][0] = 0.6  # binning: every interval clears the baseline ...
    ds["I_TY_lo"][0, 0, 0, :, 0] = 0.5  # ... but seed 0's first layer touches it: 6 of 36 cells
    ds["I_TY_null"][0, 1, 0, -1, 2] = np.nan  # a cell without a baseline is not counted
    assert fd.at_null_share(ds, "binning_30", "all") == pytest.approx(6 / 35)
    # renyi has no interval: its values (0.9) count, and clear 0.5 except where the baseline is higher
    ds["I_TY_null"][1, :, 0, :2, :] = 0.95
    assert fd.at_null_share(ds, "renyi", "all") == pytest.approx(12 / 36)
    ds["done"][1, 0] = False  # cells not done are left out
    assert fd.at_null_share(ds, "renyi", "all") == pytest.approx(6 / 18)
    assert np.isnan(fd.at_null_share(ds, "renyi", "all", "I_XT"))  # no I_XT_null stored
    summary = fd.run_summary(ds.assign(I_XT=ds.I_TY * 3))
    assert [round(e["at_null_ty"], 4) for e in summary["entries"]] == [round(6 / 35, 4), round(6 / 18, 4)]
    assert all(np.isnan(e["at_null_xt"]) for e in summary["entries"])
