"""The findings checks on synthetic results with known answers."""

import numpy as np
import pytest

from pipeline import findings as fd
from pipeline.results import holding_values, masked, template

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
    counts = fd.phase_counts(ds, "binning_30", "test")
    assert counts.dims == ("seed", "layer") and counts.sel(seed=0).values.tolist() == [5, 5, 5]
    assert counts.sel(seed=1).values.tolist() == [1, 1, 1]
