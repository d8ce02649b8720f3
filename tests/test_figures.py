"""Figures from tiny synthetic results (no training), the report, and the IB curve."""

import json
import re

import numpy as np
import pytest
import xarray as xr

from pipeline import figures as F
from pipeline.figure_files import FigureFiles, save
from pipeline.ib import ib_curve, ib_point
from pipeline.results import template

LAYERS = ["dense1", "dense2", "softmax"]
EPOCHS = np.array([0, 1, 3, 10, 30])


@pytest.fixture(autouse=True)
def close_figures():
    """Each test's figures closed after it: pyplot keeps every open figure in memory."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def synthetic_results(nan_estimator: bool = False):
    entries = {"binning_30": {"method": "binning", "n_bins": 30},
               "renyi": {"method": "renyi", "sigma_t": "alignment"}}
    if nan_estimator:
        entries["broken"] = {"method": "ksg"}
    ds = template(entries, [0, 1], ["train", "test"], EPOCHS, LAYERS, [10, 5, 2], {"config_name": "toy"})
    rng = np.random.default_rng(0)
    shape = ds.I_XT.shape
    # deeper layers carry less: DPI holds except where noise flips it
    depth = np.array([3.0, 2.0, 1.0])
    ds["I_XT"][:] = depth + rng.normal(0, 0.1, shape)
    ds["I_TY"][:] = 0.3 * depth + rng.normal(0, 0.05, shape)
    ds["done"][:] = True
    ds["fisher_trace"][:] = rng.uniform(1, 2, ds.fisher_trace.shape)
    if nan_estimator:
        ds["I_XT"].loc[{"estimator": "broken"}] = np.nan
        ds["I_TY"].loc[{"estimator": "broken"}] = np.nan
    return ds


@pytest.mark.parametrize("intervals", [False, True])
def test_information_plane_figure(tmp_path, intervals):
    ds = synthetic_results()
    fig = F.information_plane_figure(ds, "binning_30", "train", limits=(3.0, 1.0), intervals=intervals,
                                     mark_epoch=3, ib=np.array([[0, 0], [1, 1], [3, 1]]))
    save(fig, tmp_path, "plane")
    assert (tmp_path / "plane.png").stat().st_size > 5000 and (tmp_path / "plane.pdf").stat().st_size > 1000
    pdf = (tmp_path / "plane.pdf").read_bytes()  # fonts embedded as TrueType (Type 42), no Type 3
    assert b"/Subtype /CIDFontType2" in pdf and b"/Type3" not in pdf
    ax = fig.axes[0]
    assert ax.get_xlabel() == "I(X;T) (bits)" and ax.get_ylabel() == "I(T;Y) (bits)"
    # titles in words with the main parameter; one epoch convention on the colour bar
    assert ax.get_title().split("\n")[0] == "binning, 30 bins; training samples; mean of 2 seeds"
    assert fig.axes[1].get_ylabel() == F.EPOCH_LABEL
    assert [t.get_text() for t in ax.get_legend().get_texts()][:3] == ["IB bound of p(x, y)", *LAYERS[:2]]


def test_saturated_points_are_hollow_and_noted():
    ds = synthetic_results()
    fig = F.information_plane_figure(ds, "binning_30", "train", limits=(2.5, 10.0))
    ax = fig.axes[0]
    assert "hollow: saturated" in ax.get_title()
    hollow = [c for c in ax.collections if len(c.get_facecolors()) == 0]
    assert hollow and len(hollow[0].get_offsets()) == (ds.I_XT.sel(estimator="binning_30", split="train")
                                                      .mean("seed").values >= 2.5).sum()


def test_plane_titles_fit_the_figure():
    """A title longer than the plane (entry label, interval and saturation notes) is wrapped
    line by line and drawn within the figure's width."""
    ds = synthetic_results()
    fig = F.information_plane_figure(ds, "renyi", "train", limits=(2.5, 10.0))
    title = fig.axes[0].title
    lines = title.get_text().splitlines()
    assert len(lines) > 2 and max(map(len, lines)) <= F.PLANE_TITLE_CHARS
    fig.canvas.draw()
    extent = title.get_window_extent()
    assert extent.x0 >= 0 and extent.x1 <= fig.bbox.x1


def test_mi_vs_epoch_says_which_band_it_draws():
    """Two seeds: the t interval of their mean; one seed: the cells' own intervals."""
    ds = synthetic_results()
    two = F.mi_vs_epoch_figure(ds, "binning_30")._suptitle.get_text().replace("\n", " ")
    one = F.mi_vs_epoch_figure(ds.isel(seed=[0]), "binning_30")._suptitle.get_text().replace("\n", " ")
    assert two.endswith("mean of 2 seeds, band: its 90% interval (t over seeds)")
    assert one.endswith("1 seed, band: the cells' own 90% intervals (where stored)")


def test_each_split_has_its_own_line_style_named_in_the_title():
    three = xr.concat([synthetic_results().sel(split=["train"]).assign_coords(split=["all"]),
                       synthetic_results()], dim="split", data_vars="all")
    fig = F.mi_vs_epoch_figure(three, "binning_30")
    assert fig._suptitle.get_text().split("\n")[1].startswith(
        "dotted: all samples, solid: training samples, dashed: test samples;")
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert [styles[f"dense1 ({split})"] for split in ("all", "train", "test")] == [":", "-", "--"]
    legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]  # each layer and split once
    assert legend == [*LAYERS, "all samples", "training samples", "test samples"]
    assert F.split_styles(["all"]) == {"all": ("-", "solid")}
    assert F.split_styles(["train", "val", "test"])["val"] == (":", "dotted")


def test_a_deep_networks_legend_goes_below_the_curves_whole():
    layers = [f"block{i}" for i in range(30)]
    ds = template({"renyi": {"method": "renyi"}}, [0], ["train", "test"], EPOCHS, layers, [10] * 30, {})
    ds["I_XT"][:] = np.random.default_rng(0).uniform(0, 3, ds.I_XT.shape)
    ds["I_TY"][:] = 0.5
    fig = F.mi_vs_epoch_figure(ds, "renyi")
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [*layers, "training samples", "test samples"]
    fig.canvas.draw()
    legend_top = fig.legends[0].get_window_extent().y1
    assert all(ax.get_tightbbox().y0 > legend_top for ax in fig.axes)  # not over the axes' labels
    empty = F.mi_vs_epoch_figure(synthetic_results(nan_estimator=True), "broken")  # no values: no entries
    assert empty.axes[-1].get_legend().get_texts() == []


def test_titles_say_where_a_point_holds_fewer_seeds():
    """A seed recorded for fewer epochs: the titles say which points are means of fewer seeds."""
    ds = synthetic_results()
    for name in ("I_XT", "I_TY"):
        ds[name].loc[{"seed": 1, "epoch": [10, 30]}] = np.nan
    plane = F.information_plane_figure(ds, "binning_30", "train").axes[0].get_title()
    assert "; mean of 2 seeds (1 at epochs 10, 30)" in plane.replace("\n", " ")
    title = F.mi_vs_epoch_figure(ds, "renyi")._suptitle.get_text().replace("\n", " ")
    assert "mean of 2 seeds (1 at epochs 10, 30), band" in title
    ds["I_XT"].loc[{"seed": 1, "epoch": 3}] = np.nan
    assert F.fewer_seeds(ds, "renyi", "test") == " (1 at epochs 3-30)"
    assert F.fewer_seeds(synthetic_results(), "renyi", "test") == ""


def test_every_splits_curves_lie_within_the_axis():
    """The axis is set once from every split's means: one set from the first split alone cut
    the curves of the others, drawn after it."""
    ds = synthetic_results()
    ds["I_XT"].loc[{"split": "test"}] = ds.I_XT.sel(split="train").values + 5.0
    ax = F.mi_vs_epoch_figure(ds, "binning_30").axes[0]
    low, high = ax.get_ylim()
    for line in ax.get_lines():
        assert low <= line.get_ydata().min() and line.get_ydata().max() <= high, line.get_label()


def test_a_layer_without_values_has_no_legend_entry():
    ds = synthetic_results()  # as after `make estimate ARGS="--only binning_30 --layers 'dense*'"`
    for name in ("I_XT", "I_TY"):
        ds[name].loc[{"estimator": "binning_30", "layer": "softmax"}] = np.nan
    ax = F.information_plane_figure(ds, "binning_30", "train").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dense1", "dense2"]
    comparison = F.comparison_figure(ds)  # softmax is left out of the first entry only
    assert [t.get_text() for t in comparison.legends[0].get_texts()] == LAYERS


def test_saturation_limits():
    assert F.saturation_limits(4096, np.array([0, 1] * 8)) == (12.0, 1.0)


def test_dpi_violation_rate():
    i_xt = np.array([[3.0, 2.0, 1.0], [3.0, 3.5, 1.0]])
    violations = F.dpi_violations(i_xt)
    assert violations.tolist() == [[False, False], [True, False]] and violations.mean() == 0.25


def test_every_figure_and_the_report(tmp_path):
    ds = synthetic_results()
    files = FigureFiles(tmp_path, workers=2)  # written by two worker processes
    files.save(F.comparison_figure(ds), "comparison")
    files.save(F.mi_vs_epoch_figure(ds, "renyi"), "mi_vs_epoch_renyi")
    files.save(F.dpi_figure(ds, "renyi", "test"), "dpi_renyi_test")
    files.save(F.fisher_figure(ds), "fisher")
    history = {"loss_train": np.linspace(1, 0.1, 40), "loss_test": np.r_[np.linspace(1, 0.3, 20),
                                                                         np.linspace(0.31, 0.6, 20)],
               "accuracy_train": np.linspace(0.5, 1, 40), "accuracy_test": np.linspace(0.5, 0.9, 40)}
    fig, stop = F.training_figure([history, history])
    assert stop == 19
    files.save(fig, "training")
    epochs = np.arange(0, 50, 5)
    g_mean = np.c_[np.r_[np.nan, np.full(4, 2.0), np.full(5, 0.1)], np.full(10, 1.0)]
    g_std = np.ones((10, 2))
    assert F.diffusion_onset(g_mean[1:, 0], g_std[1:, 0], epochs[1:]) == 25
    files.save(F.gradients_figure(epochs, g_mean, g_std, ["dense1", "dense2"]), "gradients")
    files.close()
    saved = files.names
    from pipeline.findings import run_summary
    from pipeline.report_html import write_report

    report = write_report(tmp_path, "toy", saved, {"name": "toy"}, dict(ds.attrs),
                          {"renyi": json.dumps({"method": "renyi"})}, ["a note"], run_summary(ds),
                          {"test": 0.9})
    text = report.read_text()
    for name in saved:
        assert (tmp_path / f"{name}.png").stat().st_size > 3000
        assert f"src='{name}.png'" in text and f"href='{name}.pdf'" in text
    assert "a note" in text and "config_name" in text


def test_figures_written_by_workers_are_the_bytes_the_caller_would_write(tmp_path):
    ds = synthetic_results()
    (tmp_path / "here").mkdir()
    (tmp_path / "workers").mkdir()
    with FigureFiles(tmp_path / "workers", workers=1) as files:
        files.save(F.comparison_figure(ds), "comparison")
        files.save(F.information_plane_figure(ds, "renyi", "test", intervals=True), "plane")
    save(F.comparison_figure(ds), tmp_path / "here", "comparison")
    save(F.information_plane_figure(ds, "renyi", "test", intervals=True), tmp_path / "here", "plane")
    for name in ("comparison.png", "comparison.pdf", "plane.png", "plane.pdf"):
        assert (tmp_path / "workers" / name).read_bytes() == (tmp_path / "here" / name).read_bytes(), name


def test_formats_asked_for_are_written_and_no_older_vector_file_is_left_beside_them(tmp_path):
    from pipeline.config import ConfigError
    from pipeline.figure_files import checked_formats
    from pipeline.report import report_archive

    ds = synthetic_results()
    save(F.fisher_figure(ds), tmp_path, "fisher")  # the default: PNG and PDF
    with FigureFiles(tmp_path, workers=1, formats="svg, PNG") as files:
        files.save(F.fisher_figure(ds), "fisher")
    assert files.formats == ("png", "svg") and not (tmp_path / "fisher.pdf").exists()
    svg = (tmp_path / "fisher.svg").read_text()
    assert "<text" in svg and "Fisher" in svg and "<dc:date>" not in svg  # text kept as text, no date
    (tmp_path / "again").mkdir()
    save(F.fisher_figure(ds), tmp_path / "again", "fisher", ("png", "svg"))
    assert (tmp_path / "again" / "fisher.svg").read_text() == svg  # the same figure, the same bytes
    for bad, problem in (("png,jpg", "unknown format(s) 'jpg'"), ("pdf", "png is missing")):
        with pytest.raises(ValueError, match=re.escape(problem)):
            checked_formats(bad)
        with pytest.raises(ConfigError, match=re.escape(problem)):  # before the archive is opened
            report_archive(tmp_path / "no_archive.zarr", tmp_path / "figures", formats=bad)
    assert not (tmp_path / "figures").exists()
    from pipeline.report_html import write_report

    text = write_report(tmp_path, "toy", ["fisher"], {}, {}, {}, [], formats=("png", "svg")).read_text()
    assert "href='fisher.svg'" in text and ".pdf" not in text


def test_a_figure_pickle_cannot_carry_is_written_in_the_drawing_process(tmp_path):
    from matplotlib.ticker import FuncFormatter

    fig = F.fisher_figure(synthetic_results())
    fig.axes[0].xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0f}"))
    with FigureFiles(tmp_path, workers=1) as files:
        files.save(fig, "fisher")
    assert (tmp_path / "fisher.png").stat().st_size > 3000 and (tmp_path / "fisher.pdf").exists()


def test_the_progress_bar_counts_figures_when_their_files_are_written(tmp_path, capsys):
    from matplotlib.ticker import FuncFormatter

    unpicklable = F.fisher_figure(synthetic_results())  # written in this process
    unpicklable.axes[0].xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0f}"))
    with FigureFiles(tmp_path, workers=1, progress="figures toy") as files:
        files.save(F.fisher_figure(synthetic_results()), "by_worker")
        files.save(unpicklable, "here")
        files.save(F.fisher_figure(synthetic_results()), "by_worker_too")
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("figures toy: 100%") and "| 3/3 [" in last


def test_the_callers_error_cancels_the_files_not_started_without_a_word_from_the_bar(tmp_path, capsys,
                                                                                     caplog):
    with pytest.raises(RuntimeError, match="drawing failed"):
        with FigureFiles(tmp_path, workers=1, progress="figures toy") as files:
            for name in ("a", "b", "c", "d"):  # one worker: the later ones wait, and are cancelled
                files.save(F.fisher_figure(synthetic_results()), name)
            raise RuntimeError("drawing failed")
    err = capsys.readouterr().err  # a callback's error is logged (by concurrent.futures), not raised
    assert "Traceback" not in err and not [r for r in caplog.records if "callback" in r.getMessage()]
    assert not (tmp_path / "d.png").exists()


def test_a_figure_a_worker_cannot_write_is_the_callers_error(tmp_path):
    files = FigureFiles(tmp_path / "missing", workers=1)
    files.save(F.fisher_figure(synthetic_results()), "fisher")
    with pytest.raises(FileNotFoundError, match="missing/fisher.png"):
        files.close()


def test_the_methods_paragraph_names_every_entry_its_parameters_and_references():
    from pipeline.methods_text import REFERENCES, methods_section

    ds = synthetic_results()
    resolved = {"binning_30": {"method": "binning", "n_bins": 30, "bin_size": None, "null": True,
                               "uncertainty": "bootstrap", "n_resamples": 20, "confidence": 0.9},
                "renyi": {"method": "renyi", "sigma_t": "alignment", "uncertainty": "batches",
                          "confidence": 0.8, "null": False}}
    ds = ds.assign_coords(resolved_parameters=("estimator", [json.dumps(resolved[e])
                                                             for e in ds.estimator.values]))
    ds.attrs["versions"] = json.dumps({"infoplane": "0.1.0", "python": "3.11.7", "torch": "2.5"})
    ds.attrs["git_revision"] = "0123456789abcdef"
    text, bib = methods_section(ds, {"train": 3000, "test": 1096}, 2)
    assert text.startswith("Mutual information was estimated for each of 3 recorded layers (dense1, dense2, "
                           "softmax) at 5 snapshot epochs (epochs 0 to 30) of 2 training seed(s), on the "
                           "recorded samples of each split: train (3000 samples), test (1096 samples).")
    assert ("'binning_30': binning, 30 bins [shwartzziv2017] (n_bins = 30); 90% intervals per cell by "
            "bootstrap with 20 resamples; a shuffle baseline per cell") in text  # bin_size None: left out
    assert ("[giraldo2015, wickstrom2019] (sigma_t = \"alignment\"); 80% intervals per cell over the "
            "estimator's batches.") in text
    assert "Fisher information of each layer's parameters [achille2019]" in text
    assert "means over the 2 seeds with 90% t intervals" in text and text.endswith(
        "(commit 0123456789ab; Python 3.11.7, torch 2.5).")
    ds.attrs["history"] = ("2026-01-01T00:00:00+00:00 estimate: 4 tasks, ... (git 0123456789abcdef)\n"
                           "2026-01-02T00:00:00+00:00 estimate: 2 tasks, ... (git fedcba9876543210+dirty; "
                           "versions changed since the previous run: torch 2.4 -> 2.5)")
    assert methods_section(ds, {}, 2)[0].endswith(
        "(commits 0123456789ab, fedcba987654 with uncommitted changes, whose runs the store's history "
        "lists; Python 3.11.7, "
        "torch 2.5). Package versions changed between the store's runs (torch 2.4 -> 2.5).")
    ds.attrs.update(history="", git_revision="0123456789abcdef+dirty")
    assert "(commit 0123456789ab with uncommitted changes; Python" in methods_section(ds, {}, 2)[0]
    plain = methods_section(ds, {}, 2, intervals=False)[0]  # the figures of `--no-intervals`
    assert "means over the 2 seeds (drawn without intervals)." in plain
    keys = ["shwartzziv2017", "giraldo2015", "wickstrom2019", "achille2019"]
    assert [line.split("{")[1].rstrip(",") for line in bib.splitlines() if line.startswith("@")] == keys
    assert bib.count("@") == 4 and all(REFERENCES[key][1]["year"] in bib for key in keys)


def test_the_methods_paragraph_names_a_sweep_once():
    """A sweep's entries share one sentence with the swept values in order; an entry of a second
    sweep along another parameter (a grid) and the other entries keep their own."""
    from pipeline.methods_text import methods_section

    kde = {f"kde_{v}": {"method": "kde", "bound": "upper", "noise_variance": v} for v in (0.1, 0.001, 0.01)}
    grid = {f"bins_{b}_{-low}": {"method": "binning", "n_bins": b, "low": low}
            for b, low in ((10, -1), (30, -1), (100, -1), (30, -2), (30, -3))}
    ds = template({**kde, "kde_lower": {"method": "kde", "bound": "lower", "noise_variance": 0.1}, **grid},
                  [0], ["all"], EPOCHS, LAYERS, [10, 5, 2], {})
    ds["I_XT"][:] = 1.0
    ds["done"][:] = True
    text = methods_section(ds, {"all": 100}, 2)[0]
    assert ("Estimator entries: 'kde_0.001', 'kde_0.01' and 'kde_0.1': KDE at noise_variance = 0.001, "
            "0.01 and 0.1 [kolchinsky2017, saxe2018] (bound = \"upper\"). 'kde_lower': KDE lower bound, "
            "noise variance 0.1 [kolchinsky2017, saxe2018] (bound = \"lower\", noise_variance = 0.1). "
            "'bins_10_1': binning, 10 bins [shwartzziv2017] (low = -1, n_bins = 10). 'bins_30_3', "
            "'bins_30_2' and 'bins_30_1': binning at low = -3, -2 and -1 [shwartzziv2017] (n_bins = 30). "
            "'bins_100_1': binning, 100 bins [shwartzziv2017] (low = -1, n_bins = 100). Points") in text


def test_variational_entries_cite_their_bound_and_own_methods_cite_nothing():
    from pipeline.methods_text import entry_references, entry_sentence

    assert entry_references("variational", {"bound": "smile"}) == ["song2020"]
    assert entry_references("variational", {"bound": "nwj"}) == ["nguyen2010", "belghazi2018"]
    sentence = entry_sentence("mine", "pkg.mod:fn", {"method": "pkg.mod:fn", "width": 3}, "pkg.mod:fn (mine)")
    assert sentence == "'mine': pkg.mod:fn (mine) (width = 3)."


def test_ib_picks_the_minimal_sufficient_statistic():
    # X uniform over 4 values, Y = X mod 2: at large beta the optimal T keeps the label only:
    # I(X;T) = H(Y) = 1 bit, I(T;Y) = 1 bit (not I(X;T) = 2 bits).
    p_x = np.full(4, 0.25)
    p_y_given_x = np.eye(2)[np.arange(4) % 2]
    i_xt, i_ty, _ = ib_point(p_x, p_y_given_x, 50.0, np.random.default_rng(0).dirichlet(np.ones(4), 4))
    assert i_xt == pytest.approx(1.0, abs=1e-6) and i_ty == pytest.approx(1.0, abs=1e-6)
    curve = ib_curve(p_x, p_y_given_x, np.logspace(-2, 2, 20))
    assert curve[0, 0] == pytest.approx(0.0, abs=1e-3)  # beta -> 0: everything compressed
    assert (curve[:, 1] <= curve[:, 0] + 1e-9).all()      # I(T;Y) <= I(X;T) on the whole curve


def test_partial_entries_are_drawn_from_their_cells():
    ds = synthetic_results()
    ds["done"].loc[{"estimator": "renyi", "seed": 1}] = False  # renyi on seed 0 only ...
    ds["done"].loc[{"estimator": "renyi", "epoch": [1, 10]}] = False  # ... every other epoch
    from pipeline.results import masked
    partial = masked(ds)
    i_xt, _, _, epochs, n_seeds = F.plane_arrays(partial, "renyi", "train")
    assert epochs.tolist() == [0, 3, 30] and n_seeds == 1
    np.testing.assert_array_equal(i_xt, ds.I_XT.sel(estimator="renyi", split="train", seed=0,
                                                    epoch=[0, 3, 30]).values)
    fig = F.comparison_figure(partial)
    assert ("matrix Renyi, widths 8.0 (input),\nalignment (layer)\ntraining samples, 1 seed(s), 3 epochs"
            in [ax.get_title() for ax in fig.axes])  # wrapped at 40 characters
    ds["done"].loc[{"split": "test"}] = False  # a split estimated by no entry gets no column
    titles = [ax.get_title() for ax in F.comparison_figure(masked(ds)).axes]
    assert titles and not any("test samples" in t for t in titles)


def test_stored_saturation_flags_decide_the_hollow_points():
    from matplotlib.collections import PathCollection

    from pipeline.uncertainty import OUTPUTS

    ds = synthetic_results()
    for name in ("I_XT_saturated", "I_TY_saturated"):
        long_name, units = OUTPUTS[name]
        ds[name] = xr.zeros_like(ds.I_XT).assign_attrs(long_name=long_name, units=units)
    ds["I_XT_saturated"].loc[{"layer": "dense1"}] = 1.0  # flagged in every seed: 5 epochs
    ds["I_TY_saturated"].loc[{"layer": "softmax", "seed": 0}] = 1.0  # one seed of two: not hollow
    fig = F.information_plane_figure(ds, "binning_30", "train", limits=(0.0, 0.0))  # limits ignored
    hollow = [c for c in fig.axes[0].collections if len(c.get_facecolors()) == 0]
    assert len(hollow[0].get_offsets()) == len(EPOCHS)
    comparison = F.comparison_figure(ds)  # the same flags in every panel, named in the title
    for ax in comparison.axes[:4]:  # markers only: the interval bars have no face either
        hollow = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_facecolors()) == 0]
        assert [len(c.get_offsets()) for c in hollow] == [len(EPOCHS)]
    assert comparison._suptitle.get_text().endswith("\nhollow: saturated (near H(X) or H(Y))")


def test_points_carry_the_seed_interval_and_the_null_floor():
    from matplotlib.collections import LineCollection
    from scipy import stats

    from pipeline.uncertainty import OUTPUTS

    ds = synthetic_results()
    ds["I_TY_null"] = xr.full_like(ds.I_TY, 0.04).assign_attrs(long_name=OUTPUTS["I_TY_null"][0])
    ds["I_TY_null"].loc[{"seed": 1, "layer": "dense1"}] = 0.08  # mean over seeds 0.06: the floor
    fig = F.information_plane_figure(ds, "binning_30", "train")
    ax = fig.axes[0]
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    vertical = [seg for seg in lines[1].get_segments()]
    values = ds.I_TY.sel(estimator="binning_30", split="train")
    # the first point (epoch 0, dense1): mean of the two seeds +- t(0.95, 1) s / sqrt(2)
    two = values.isel(epoch=0, layer=0).values
    half = stats.t.ppf(0.95, 1) * two.std(ddof=1) / np.sqrt(2)
    np.testing.assert_allclose(vertical[0][:, 1], [two.mean() - half, two.mean() + half])
    assert len(vertical) == len(EPOCHS) * len(LAYERS)
    floor = [p for p in ax.patches if p.get_label().startswith("I(T;Y) shuffle baseline")]
    assert len(floor) == 1 and floor[0].get_label().endswith("0.060 bits")
    assert "90% intervals (t over seeds)" in ax.get_title()
    band_fig = F.mi_vs_epoch_figure(ds, "binning_30")
    labels = [c.get_label() for c in band_fig.axes[1].collections]
    assert "shuffle baseline (train)" in labels


def test_an_interval_reaching_below_zero_is_cut_by_the_axis_not_drawn_shorter():
    from matplotlib.collections import LineCollection

    ds = synthetic_results()
    ty = ds["I_TY"].loc[{"estimator": "binning_30", "split": "train"}]
    ty[0] = 0.05  # seed 0
    ty[1] = 1.0  # seed 1: the 2-seed t interval of the mean 0.525 reaches 0.525 - 3.0 bits
    plane = F.information_plane_figure(ds, "binning_30", "train", limits=(3.5, 1.2))
    ax = plane.axes[0]
    low, high = ax.get_ylim()  # from just below zero bits to just above the ceiling H(Y)
    assert (low, high) == pytest.approx((-0.04 * 1.2, 1.04 * 1.2))
    vertical = [c for c in ax.collections if isinstance(c, LineCollection)][1].get_segments()
    assert min(seg[:, 1].min() for seg in vertical) == pytest.approx(0.525 - 2.9990, abs=1e-3)
    band = F.mi_vs_epoch_figure(ds, "binning_30").axes[1]
    low, high = band.get_ylim()
    assert -0.04 * high - 1e-9 <= low < 0
    ds["I_TY"][:] = -0.5  # means below zero (a bias-corrected estimator): the axis shows them
    assert F.mi_vs_epoch_figure(ds, "binning_30").axes[1].get_ylim()[0] < -0.5
    ds["I_XT"][:] = 4.0  # means past the ceiling log2(n) = 3.5 (KSG can pass it): shown too
    wide = F.information_plane_figure(ds, "binning_30", "train", limits=(3.5, 1.2))
    assert wide.axes[0].get_xlim()[1] > 4.0
    ds = synthetic_results()  # points far below their ceiling (log2 n = 12 bits): the margin
    xt = ds["I_XT"].loc[{"estimator": "binning_30", "split": "train"}]  # below zero is one of
    xt[0], xt[1] = 0.05, 1.0  # the span shown, not of the ceiling
    low, high = F.information_plane_figure(ds, "binning_30", "train", limits=(12.0, 1.2)).axes[0].get_xlim()
    assert 0.525 + 2.999 < high < 12 and low == pytest.approx(-0.04 * high)


def test_one_epoch_convention_and_titles_in_words():
    """Every time axis is in epochs trained (0 = before training); no raw JSON in any title."""
    ds = synthetic_results()
    figures = {"mi": F.mi_vs_epoch_figure(ds, "binning_30"), "fisher": F.fisher_figure(ds),
               "comparison": F.comparison_figure(ds), "dpi": F.dpi_figure(ds, "renyi", "test")}
    history = {"loss_train": np.linspace(1, 0.1, 40), "loss_test": np.linspace(1, 0.2, 40),
               "accuracy_train": np.linspace(0.5, 1, 40), "accuracy_test": np.linspace(0.5, 0.9, 40)}
    figures["training"] = F.training_figure([history])[0]
    for name in ("mi", "fisher", "training"):
        axes = [ax for ax in figures[name].axes if ax.get_xlabel()]
        assert axes and all(ax.get_xlabel() == F.EPOCH_LABEL for ax in axes), name
        assert all(ax.get_xscale() == "symlog" and ax.get_xlim()[0] == 0 for ax in axes), name
        last = 39 if name == "training" else 30
        assert all([t.get_text() for t in ax.get_xticklabels()] == list(map(str, F.epoch_ticks(last)))
                   for ax in axes), name  # plain epochs, not 10^0
    assert figures["dpi"].axes[0].get_xlabel().startswith(F.EPOCH_LABEL)
    titles = [ax.get_title() for fig in figures.values() for ax in fig.axes]
    titles += [fig._suptitle.get_text() for fig in figures.values() if fig._suptitle is not None]
    assert not any("{" in t or "epoch + 1" in t for t in titles)
    assert figures["mi"]._suptitle.get_text().startswith(
        "binning, 30 bins\nsolid: training samples, dashed: test samples")
    comparison = figures["comparison"]
    assert comparison.get_size_inches()[0] == 7.0  # two-column page width
    assert [t.get_text() for t in comparison.legends[0].get_texts()] == LAYERS


def test_entry_labels_take_the_defaults_the_store_was_computed_with():
    """A store's own resolved parameters name its entries, whatever this installation's defaults
    are; a store without them (schema < 1.4) is named with this installation's defaults."""
    tables = {"binning": {"method": "binning"}, "kde": {"method": "kde"}}
    resolved = {"binning": {"method": "binning", "n_bins": 17, "range": "layer"},
                "kde": {"method": "kde", "noise_variance": 0.25}}
    stored = template(tables, [0], ["all"], EPOCHS, LAYERS, [10, 5, 2], {}, resolved=resolved)
    assert F.entry_label(stored, "binning") == "binning, 17 bins over each layer's range"
    assert "0.25" in F.entry_label(stored, "kde")
    older = template(tables, [0], ["all"], EPOCHS, LAYERS, [10, 5, 2], {})
    assert F.entry_label(older, "binning") == "binning, 30 bins"


def test_epoch_ticks_label_short_runs_at_1_2_5_and_long_ones_at_decades():
    assert F.epoch_ticks(1) == [0, 1] and F.epoch_ticks(3) == [0, 1, 2]
    assert F.epoch_ticks(12) == [0, 1, 2, 5, 10] and F.epoch_ticks(99) == [0, 1, 2, 5, 10, 20, 50]
    assert F.epoch_ticks(100) == [0, 1, 10, 100] and F.epoch_ticks(8000) == [0, 1, 10, 100, 1000]
    fig = F.information_plane_figure(synthetic_results(), "renyi", "train")
    bar = fig.axes[-1]  # the colour bar, labelled as the time axes are
    assert [t.get_text() for t in bar.get_yticklabels()] == ["0", "1", "2", "5", "10", "20"]


def test_results_without_labels_draw_i_xt_alone_and_no_plane(tmp_path):
    """An archive without labels stores I(T;Y) as NaN: no plane can be drawn, I(X;T) still can."""
    from types import SimpleNamespace

    from pipeline.interactive import interactive_sections
    from pipeline.report import _results_figures

    ds = synthetic_results()
    ds["I_TY"][:] = np.nan
    ds["I_TY_null"] = xr.full_like(ds.I_TY, np.nan)
    assert F.plane_views(ds) == [] and len(F.views_with(ds, "I_XT")) == 4
    fig = F.mi_vs_epoch_figure(ds, "renyi")
    assert [ax.get_ylabel() for ax in fig.axes] == ["I(X;T) (bits)"]
    lines = fig.axes[0].get_lines()
    means = ds.I_XT.sel(estimator="renyi", split="train", layer="dense1").mean("seed").values
    np.testing.assert_allclose(lines[0].get_ydata(), means)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert not any("baseline" in label for label in labels)  # no floor where every baseline is NaN
    assert sorted(interactive_sections(ds)) == ["curves"]
    files, messages = FigureFiles(tmp_path, workers=0), []
    _results_figures(ds, SimpleNamespace(config=None), files, messages, False, None)
    assert files.names == ["mi_vs_epoch_binning_30", "mi_vs_epoch_renyi", "fisher"]
    assert "estimator renyi (test): no I(T;Y) values (an archive without labels); no plane, I(X;T) " \
        "against epochs only" in messages


def test_one_snapshot_is_drawn_as_points_on_an_axis_from_zero_to_one():
    ds = synthetic_results().isel(epoch=[0])
    fig = F.mi_vs_epoch_figure(ds, "binning_30")
    for ax in fig.axes:
        assert ax.get_xlim() == (0.0, 1.0)
        assert all(line.get_marker() == "o" and len(line.get_xdata()) == 1 for line in ax.get_lines())
    assert F.fisher_figure(ds).axes[0].get_lines()[0].get_marker() == "o"


def test_report_opens_with_the_findings_summary(tmp_path):
    from pipeline.findings import run_summary
    from pipeline.report_html import write_report

    ds = synthetic_results()
    ds["I_XT"].loc[{"estimator": "binning_30", "layer": "dense1"}] = np.linspace(4, 2, 5)[None, None, :]
    ds["I_XT_saturated"], ds["I_TY_saturated"] = xr.zeros_like(ds.I_XT), xr.zeros_like(ds.I_TY)
    ds["I_XT_saturated"].loc[{"estimator": "binning_30", "split": "test", "layer": "dense2"}] = 1.0
    summary = run_summary(ds)
    rows = {(r["entry"], r["split"], r["layer"]): r for r in summary["layers"]}
    assert rows["binning_30", "train", "dense1"]["beyond_noise"] == 1.0  # 4 -> 2 bits, both seeds
    saturated = rows["binning_30", "test", "dense2"]
    assert saturated["saturated"] and np.isnan(saturated["beyond_noise"])
    assert not rows["binning_30", "train", "dense2"]["saturated"]
    assert rows["binning_30", "train", "dense1"]["drop_mean"] == pytest.approx(2.0)
    assert {"split": "train", "layer": "dense1", "compress": ["binning_30"], "do_not": ["renyi"],
            "distrusted": []} in summary["disagreements"]
    report = write_report(tmp_path, "toy", ["plane_binning_30_train"], {"train": {"lr": 0.1}}, {},
                          {"binning_30": json.dumps({"method": "binning", "n_bins": 30})}, [], summary,
                          {"test": 0.875})
    text = report.read_text()
    assert text.index("Findings summary") < text.index("Contents") < text.index("<figure")
    assert "test 0.875" in text and "renyi do not" in text
    assert text.count("undetermined (saturated at the peak and the end)") == 1
    assert "not above their shuffle baseline" in text and "no baseline / no baseline" in text
    assert "<td>n_bins</td><td>30</td>" in text and "<td>train.lr</td><td>0.1</td>" in text
    assert "The information plane" in text and "\\\"" not in text  # captions; no escaped JSON


def test_an_entry_flagged_in_every_cell_of_a_layer_casts_no_vote_there():
    """KSG beyond its rule or a code that lost the layer: its verdict is on values known to be
    wrong, so the disagreement is counted without it and says it was left out."""
    from pipeline.findings import distrusted_layers, run_summary
    from pipeline.report_html import summary_html

    ds = synthetic_results()
    ds["I_XT"].loc[{"estimator": "binning_30", "layer": "dense1"}] = np.linspace(4, 2, 5)[None, None, :]
    third = ds.sel(estimator=["renyi"]).assign_coords(estimator=["ksg"])
    ds = xr.concat([ds, third], "estimator", data_vars="all")
    ds["I_XT_biased"] = xr.zeros_like(ds.I_XT).where(ds.estimator == "ksg")  # NaN: no diagnostic
    ds["I_XT_biased"].loc[{"estimator": "ksg", "layer": "dense1"}] = 1.0
    ds["I_XT_biased"].loc[{"estimator": "ksg", "layer": "dense2", "epoch": EPOCHS[0]}] = 1.0
    assert distrusted_layers(ds, "ksg", "train") == {"dense1"}  # dense2: one cell of 10 flagged
    assert distrusted_layers(ds, "renyi", "train") == set()
    summary = run_summary(ds)
    assert {"split": "train", "layer": "dense1", "compress": ["binning_30"], "do_not": ["renyi"],
            "distrusted": ["ksg"]} in summary["disagreements"]
    assert "renyi do not (ksg: every cell flagged by its diagnostic, left out)" in summary_html(summary, {})
    assert summary["abstained"] == ["ksg"]
    # where the entries that vote agree, the sentence says who did not vote
    agreeing = run_summary(ds.sel(estimator=["renyi", "ksg"]))
    assert agreeing["disagreements"] == [] and agreeing["abstained"] == ["ksg"]
    assert ("agree on every hidden layer (each by its verdict beyond the noise, by the 5% rule where that "
            "is undetermined); ksg cast no vote on the layers whose every cell its diagnostic flags."
            ) in summary_html(agreeing, {})


def test_interactive_planes_hover_toggle_and_switch(tmp_path):
    from pipeline.interactive import interactive_sections, planes_figure, write_plotly_js
    from pipeline.report_html import write_report

    ds = synthetic_results()
    fig = planes_figure(ds)
    views = 4  # 2 entries x 2 splits
    assert len(fig.data) == views * len(LAYERS) and [t.visible for t in fig.data[:4]] == [True] * 3 + [False]
    first = fig.data[0]  # binning_30, train, dense1: the seed mean at every epoch, epochs in the hover data
    means = ds.I_XT.sel(estimator="binning_30", split="train", layer="dense1").mean("seed").values
    np.testing.assert_allclose(first.x, means)
    assert first.customdata[:, 0].tolist() == EPOCHS.tolist()
    assert "epoch %{customdata[0]}" in first.hovertemplate
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert labels[0] == "binning, 30 bins; training samples" and len(labels) == views
    sections = interactive_sections(ds)
    write_plotly_js(tmp_path)
    report = write_report(tmp_path, "toy", [], {}, {}, {}, [], None, None, sections)
    text = report.read_text()
    assert "<script src='plotly.min.js'></script>" in text and "interactive-planes" in text
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000  # the library itself: offline


def test_report_in_a_headless_browser(tmp_path):
    """The report as a reader's browser shows it: summary, captions and rendered Plotly planes."""
    import shutil
    import subprocess

    from pipeline.findings import run_summary
    from pipeline.interactive import interactive_sections, write_plotly_js
    from pipeline.report_html import write_report

    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")
                    if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium or Chrome installed (apt install chromium) to render the report")
    ds = synthetic_results()
    save(F.information_plane_figure(ds, "binning_30", "train"), tmp_path, "plane_binning_30_train")
    write_plotly_js(tmp_path)
    report = write_report(tmp_path, "toy", ["plane_binning_30_train"], {}, {},
                          {"binning_30": json.dumps({"method": "binning"})}, [], run_summary(ds),
                          {"test": 0.9}, interactive_sections(ds))
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
               "--dump-dom", report.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert "Findings summary" in dom and "The information plane" in dom
    assert dom.count('class="plot-container plotly"') == 3  # planes, I(X;T) and I(T;Y) curves drawn
    assert "binning, 30 bins; training samples" in dom  # the menu, rendered by plotly.js


def test_every_layer_of_a_deep_network_has_its_own_marker():
    """VGG-16 records 16 layers and matplotlib has 15 filled shapes: from the 16th on, a layer's
    marker is its number, so no two layers share a legend entry's look."""
    layers = [f"conv{i}" for i in range(1, 18)]
    ds = template({"renyi": {"method": "renyi"}}, [0], ["train"], EPOCHS, layers, [10] * 17, {})
    ds["I_XT"][:] = np.random.default_rng(0).uniform(0, 3, ds.I_XT.shape)
    ds["I_TY"][:] = 0.5
    for fig in (F.information_plane_figure(ds, "renyi", "train"), F.comparison_figure(ds)):
        legend = fig.legends[0] if fig.legends else fig.axes[0].get_legend()
        handles = legend.legend_handles
        assert [t.get_text() for t in legend.get_texts()] == layers
        paths = [h.get_paths()[0] for h in handles]
        shapes = {(p.vertices.round(3).tobytes(), p.codes.tobytes() if p.codes is not None else b"")
                  for p in paths}
        assert len(shapes) == len(layers)
    assert F.layer_marker(15) == ("$16$", 44.0) and F.layer_marker(0) == ("o", 14.0)


def test_a_parameter_sweep_is_found_and_drawn_against_its_values():
    """Three binning entries differing in n_bins alone are a sweep (the others are not); its
    figure puts each layer's last-snapshot seed means and the drop from the peak at 10, 30, 100."""
    from pipeline.sweeps import Sweep, parameter_sweeps, sweep_figure, sweep_views

    entries = {f"binning_{b}": {"method": "binning", "n_bins": b} for b in (100, 10, 30)}
    entries["binning_layer"] = {"method": "binning", "n_bins": 30, "range": "layer"}
    entries["kde"] = {"method": "kde", "noise_variance": 0.1}
    entries["binning_30_again"] = {"method": "binning", "n_bins": 30}  # the same estimator: counted once
    ds = template(entries, [0, 1], ["train", "test"], EPOCHS, LAYERS, [10, 5, 2], {})
    rng = np.random.default_rng(0)
    ds["I_XT"][:] = rng.uniform(0, 3, ds.I_XT.shape)
    ds["I_TY"][:] = rng.uniform(0, 1, ds.I_TY.shape)
    ds["done"][:] = True
    sweep = Sweep("binning", "n_bins", ("binning_10", "binning_30", "binning_100"), (10.0, 30.0, 100.0))
    assert parameter_sweeps(ds) == [sweep]
    fig = sweep_figure(ds, sweep, "test")
    xt, ty, drop = fig.axes
    assert xt.get_xscale() == "log" and [t.get_text() for t in xt.get_xticklabels()] == ["10", "30", "100"]
    means = ds.I_XT.sel(split="test", estimator=list(sweep.entries)).mean("seed")
    for l, layer in enumerate(LAYERS):
        last = means.sel(layer=layer, epoch=30).values
        np.testing.assert_allclose(xt.containers[l].lines[0].get_ydata(), last)
        np.testing.assert_allclose(ty.containers[l].lines[0].get_xdata(), sweep.values)
    hidden = drop.get_lines()[:2]  # dense1, dense2; softmax, the output layer, has no drop
    dropped = means.max("epoch") - means.sel(epoch=30)
    for line, layer in zip(hidden, LAYERS[:2], strict=True):
        np.testing.assert_allclose(line.get_ydata(), dropped.sel(layer=layer).values)
    assert [name for _, _, name in sweep_views(ds)] == ["sweep_n_bins_binning_10_train",
                                                         "sweep_n_bins_binning_10_test"]
    ds["I_XT"].loc[{"estimator": "binning_30"}] = np.nan  # its equal stands for it
    assert parameter_sweeps(ds)[0].entries == ("binning_10", "binning_30_again", "binning_100")
    ds["I_XT"].loc[{"estimator": "binning_10"}] = np.nan  # two values hold values: no sweep
    assert parameter_sweeps(ds) == []


def test_runs_side_by_side_share_axes_and_their_compression_verdicts(tmp_path):
    """Two runs of other lengths and ranges: each panel draws its own run's seed means, on axes
    that hold both runs' means and one epoch colour scale; an entry whose parameters differ
    between the runs is not compared; the stage writes the figures and their verdicts."""
    from pipeline.compare_runs import common_views, compare_runs, runs_plane_figure
    from pipeline.config import ConfigError
    from pipeline.results import write_store

    short = synthetic_results().isel(epoch=slice(0, 3))  # epochs 0-3
    long = synthetic_results()  # epochs 0-30, I(X;T) 3 bits higher
    long["I_XT"] = long.I_XT + 3.0
    long = long.assign_coords(parameters=("estimator", [json.dumps({"method": "binning", "n_bins": 100}),
                                                        *long.parameters.values[1:]]))
    runs = {"short": short, "long": long}
    assert common_views(runs) == [("renyi", "train"), ("renyi", "test")]  # binning_30 differs
    fig = runs_plane_figure(runs, "renyi", "test")
    left, right = fig.axes[:2]
    assert left.get_title() == "short (2 seeds)" and right.get_title() == "long (2 seeds)"
    assert left.get_xlim() == right.get_xlim()
    for ax, run in ((left, short), (right, long)):
        means = run.I_XT.sel(estimator="renyi", split="test").mean("seed").values
        np.testing.assert_allclose(np.concatenate([line.get_xdata() for line in ax.get_lines()]),
                                   means.ravel())
        assert ax.get_xlim()[0] <= means.min() and means.max() <= ax.get_xlim()[1]
    assert left.collections[0].norm.vmax == right.collections[0].norm.vmax == 30.0
    for name, ds in runs.items():
        (tmp_path / name).mkdir()
        write_store(ds, tmp_path / name / "estimates.zarr")
    archives = [tmp_path / name / "archive.zarr" for name in runs]  # only the stores beside them are read
    assert compare_runs(archives, tmp_path / "figures", formats="png") == 0
    page = (tmp_path / "figures" / "short_vs_long" / "index.html").read_text()
    assert "src='plane_renyi_test.png'" in page and "binning_30" not in page
    assert page.count("<tr><td>short</td><td>dense") == 4  # 2 hidden layers x 2 splits
    with pytest.raises(ConfigError, match="--compare: give two archives or more"):
        compare_runs(archives[:1], tmp_path / "figures")
    with pytest.raises(ConfigError, match=r"--compare: .*nope.*estimates.zarr does not exist"):
        compare_runs([archives[0], tmp_path / "nope" / "archive.zarr"], tmp_path / "figures")
    # a store written away from its archive (--results) is named after the archive it records
    away = tmp_path / "mine" / "long_estimates.zarr"
    write_store(long.assign_attrs(archive_path=str(tmp_path / "shared" / "long_run" / "archive.zarr"),
                                  archive_recording="0" * 32), away)
    assert compare_runs([archives[0], away], tmp_path / "figures", formats="png") == 0
    assert (tmp_path / "figures" / "short_vs_long_run" / "plane_renyi_test.png").exists()
