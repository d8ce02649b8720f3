"""The Recorder on a researcher's own network and loop, through every stage; archive schemas."""

import contextlib
import html as html_module
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from torch import nn

from pipeline.archive import ArchiveError, ArchiveReader
from pipeline.config import EstimatorsConfig
from pipeline.estimate import DEFAULT_ESTIMATORS, estimate_archive
from pipeline.estimators import information_plane
from pipeline.record import NonFiniteActivations, Recorder, RecordError, capture, layer_layout, match_layers
from pipeline.report import report_archive
from pipeline.runs import RunPaths
from pipeline.verify import verify
from pipeline.writer import SnapshotRows, WriterProcess
from tests.helpers import (
    ROOT,
    TINY,
    assert_same_arrays,
    group_arrays,
    import_examples,
    run_stage,
    tiny_config,
)
from tests.own_models import Tower, blobs, gaussian_information_plane

LAYERS = ["stem", "block.pair", "head"]


# ---------------------------------------------------------------- choosing and capturing layers
def test_layer_patterns_match_module_names_by_segment():
    model = Tower()
    assert match_layers(model, ["head"]) == ["head"]
    assert match_layers(model, ["stem.*"]) == ["stem.0", "stem.1"]  # direct children only
    assert match_layers(model, ["block.*.*"]) == ["block.pair.proj"]
    assert match_layers(model, ["**.proj"]) == ["block.pair.proj"]  # ** spans zero or more segments
    assert match_layers(model, ["block.**"]) == ["block", "block.flat", "block.pair", "block.pair.proj"]
    assert match_layers(model, ["head", "stem"]) == ["stem", "head"]  # model order, not pattern order
    with pytest.raises(RecordError, match="'nope' matches no module; modules are stem, stem.0"):
        match_layers(model, ["nope"])
    assert match_layers(model, "stem.*") == ["stem.0", "stem.1"]  # one string is one pattern
    with pytest.raises(RecordError, match=r"layers: name at least one module to record .*modules are stem"):
        match_layers(model, [])


def test_tuple_outputs_record_their_first_element_or_the_selected_one():
    model = Tower().eval()
    x = torch.from_numpy(blobs(8)[0])
    out = capture(model, x, ["block.pair"])["block.pair"]
    with torch.no_grad():
        h = model.block["flat"](model.stem(x))
        features, gate = model.block["pair"](h)
    np.testing.assert_array_equal(out, features.numpy())
    second = capture(model, x, ["block.pair"], select={"block.pair": 1})["block.pair"]
    np.testing.assert_array_equal(second, gate.numpy())


def test_dict_and_non_tensor_outputs_name_the_module():
    class DictOut(nn.Module):
        def forward(self, x):
            return {"a": x, "b": 2 * x}

    model = nn.Sequential(DictOut())
    with pytest.raises(RecordError, match="module '0' returns a dict with keys \\['a', 'b'\\]; set select"):
        capture(model, torch.ones(2, 3), ["0"])
    np.testing.assert_array_equal(capture(model, torch.ones(2, 3), ["0"], select={"0": "b"})["0"],
                                  np.full((2, 3), 2.0, dtype=np.float32))


def test_each_layer_owns_the_parameters_run_since_the_previous_layer():
    model = Tower()
    layout = {s.name: s for s in layer_layout(model, LAYERS, torch.from_numpy(blobs(2)[0]))}
    assert layout["stem"].shape == (3, 6, 6) and layout["block.pair"].shape == (108,)
    assert layout["stem"].parameters == ("stem.0.weight", "stem.0.bias")
    assert layout["block.pair"].parameters == ("block.pair.proj.weight", "block.pair.proj.bias")
    assert layout["head"].parameters == ("head.weight", "head.bias")


def test_a_layer_is_recorded_as_it_left_its_module_not_as_later_in_place_modules_left_it():
    """torchvision's networks apply ReLU(inplace=True) to a conv's or batch norm's output, and
    ResNet blocks add the shortcut in place: the hook must keep its own copy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    x = torch.randn(50, 4)
    with torch.no_grad():  # batch by batch as the probe pass runs: the same kernels, bit for bit
        before_relu = torch.cat([model[0](batch) for batch in x.split(16)]).numpy()
    assert (before_relu < 0).any()
    recorded = capture(model, x, ["0", "1"], batch_size=16)
    np.testing.assert_array_equal(recorded["0"], before_relu)
    np.testing.assert_array_equal(recorded["1"], np.maximum(before_relu, 0))


@pytest.mark.parametrize("wrap", ["compile", "data_parallel"])
def test_a_wrapped_model_is_recorded_under_the_names_of_the_model_it_wraps(tmp_path, wrap):
    model = Tower()
    wrapped = (torch.compile(model, backend="eager")  # the wrapper, without a compiler's minutes
               if wrap == "compile" else nn.DataParallel(torch.compile(model, backend="eager")))
    x = torch.from_numpy(blobs(40)[0])
    with Recorder(tmp_path / "archive.zarr", wrapped, ["stem", "head"], x, weights=True) as rec:
        rec.snapshot(0)
    archive = ArchiveReader(tmp_path / "archive.zarr")
    assert archive.layers == ["stem", "head"]
    assert sorted(archive.weights(0, 0)) == sorted(name for name, _ in model.named_parameters())
    np.testing.assert_array_equal(archive.activations(0, "head", 0), capture(model, x, ["head"])["head"])


@pytest.mark.slow
def test_a_distributed_data_parallel_network_is_recorded_by_one_rank(tmp_path):
    """examples/ddp_network.py: two CPU ranks (gloo) train a network with batch norm under DDP,
    whose forward broadcasts buffers; rank 0 records while the other waits at the all-reduce."""
    path = tmp_path / "archive.zarr"
    proc = subprocess.run([sys.executable, "examples/ddp_network.py", "--archive", str(path),
                           "--epochs", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    archive = ArchiveReader(path)
    assert archive.layers == ["2", "5", "6"] and list(archive.committed_epochs(0)) == [0, 1, 2]
    [ddp_network] = import_examples("ddp_network")
    model, (x, _) = ddp_network.network(), ddp_network.data()
    for epoch in (0, 1):  # every layer is the unwrapped network's output in the stored state
        state = {name: torch.from_numpy(value) for name, value in archive.weights(0, epoch).items()}
        assert sorted(state) == sorted(name for name, value in model.state_dict().items()
                                       if value.is_floating_point())  # "1.running_mean", not "module.1..."
        model.load_state_dict(state, strict=False)  # the batch count is not stored
        expected = capture(model, x, ["2", "5", "6"])
        for layer in archive.layers:
            np.testing.assert_allclose(archive.activations(0, layer, epoch), expected[layer],
                                       rtol=0, atol=1e-6)
    running = [archive.weights(0, epoch)["1.running_mean"] for epoch in (0, 1)]
    assert not np.array_equal(*running)  # trained between the snapshots
    loss = archive.history(0)["loss_train"]  # none before training (epoch 0), one per epoch trained
    assert np.isnan(loss[0]) and np.isfinite(loss[1:3]).all()
    assert verify(path) == []


def test_capture_restores_the_training_mode():
    model = Tower().train()
    capture(model, torch.from_numpy(blobs(4)[0]), ["head"])
    assert model.training


@pytest.mark.parametrize(("dtype", "batch"), [("float32", 16), ("float16", 4)])
def test_snapshots_spanning_many_chunks_are_streamed_whole(tmp_path, monkeypatch, dtype, batch):
    """Chunks of 3000 bytes of `stem` (7 samples in float32, 13 in float16), probe batches of 16
    or 4: batches end inside chunks, span several, or several fill one; each chunk is handed over
    as soon as it is full, and the stored snapshot is exact."""
    monkeypatch.setattr("pipeline.archive.CHUNK_BYTES", 3000)
    handed = []  # (snapshot, layer, first row, rows) of every block the trainer hands over
    submit = WriterProcess.submit

    def noting_submit(self, item):
        if isinstance(item, SnapshotRows):
            handed.append((item.index, item.layer, item.start, len(item.values)))
        submit(self, item)
    monkeypatch.setattr(WriterProcess, "submit", noting_submit)
    x = torch.from_numpy(blobs(240)[0])
    model, path = Tower(), tmp_path / "archive.zarr"
    expected = {}
    with Recorder(path, model, LAYERS, x, activation_dtype=dtype, batch_size=batch) as rec:
        for epoch in range(2):
            with torch.no_grad():
                model.head.weight.add_(1.0)  # another state per snapshot
            rec.snapshot(epoch)
            expected[epoch] = capture(model, x, LAYERS, batch_size=batch)  # the same kernels
    archive = ArchiveReader(path)
    stem = zarr.open_group(str(path), mode="r")["seed_0/activations/stem"]
    rows = 3000 // (108 * np.dtype(dtype).itemsize)
    assert stem.chunks[1] == rows
    blocks = [(first, min(rows, 240 - first)) for first in range(0, 240, rows)]
    assert [h[2:] for h in handed if h[:2] == (1, "stem")] == blocks
    for epoch, layers in expected.items():
        for layer, values in layers.items():
            np.testing.assert_array_equal(archive.activations(0, layer, epoch), values.astype(dtype))
    # the commit records every chunk file of the snapshot, so a damaged one is found
    files = zarr.open_group(str(path), mode="r")["seed_0"].attrs["integrity"]["snapshots"]["1"]
    assert len([f for f in files if f.startswith("activations/stem/")]) == -(-240 // stem.chunks[1])
    assert verify(path) == []


def test_a_stopped_snapshots_rows_are_never_read_and_the_next_one_replaces_them(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.archive.CHUNK_BYTES", 3000)
    x = torch.from_numpy(blobs(240)[0])
    model, path = Tower(), tmp_path / "archive.zarr"
    with Recorder(path, model, LAYERS, x, batch_size=16) as rec:
        rec.snapshot(0)
        saved = model.head.bias.detach().clone()
        with torch.no_grad():
            model.head.bias[0] = float("nan")
        with pytest.raises(NonFiniteActivations, match="epoch 1: layer head: 240 NaN/inf of 720 values"):
            rec.snapshot(1)  # every layer's rows were handed over before the count was known
        with torch.no_grad():
            model.head.bias.copy_(saved + 1)
        rec.snapshot(2)
        expected = capture(model, x, LAYERS)
    archive = ArchiveReader(path)
    assert archive.committed_epochs(0).tolist() == [0, 2]
    for layer in LAYERS:
        np.testing.assert_array_equal(archive.activations(0, layer, 2), expected[layer])
    assert verify(path) == []


# ---------------------------------------------------------------- a hand-written loop, every stage
def train_tower(path, epochs=3, seed=0, **options):
    """A plain training loop of the test's own network, recorded every epoch."""
    x, y = blobs(240)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(seed)
    model = Tower()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = {"labels": y, "splits": {"train": np.arange(180), "test": np.arange(180, 240)}, **options}
    with Recorder(path, model, LAYERS, x, seed=seed, name="tower", **kwargs) as rec:
        rec.snapshot(0)
        for epoch in range(1, epochs + 1):
            for batch in torch.arange(180).split(60):
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                if rec.gradients is not None:
                    rec.gradient_step()
                optimizer.step()
            rec.snapshot(epoch, loss=loss.item())
    return model


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:cells flagged by their estimator")  # tested in test_estimate
def test_own_network_through_every_stage(tmp_path):
    path = tmp_path / "tower" / "archive.zarr"
    model = train_tower(path, weights=True, gradients=True,
                        model_spec={"factory": "tests.own_models:build", "config": {}})
    archive = ArchiveReader(path)
    assert archive.layers == LAYERS and archive.output_layer == "head"
    assert archive.layer_shapes["stem"] == (3, 6, 6) and archive.split_names == ("train", "test")
    assert archive.committed_epochs(0).tolist() == [0, 1, 2, 3]
    assert archive.history(0)["loss_train"].shape == (4,) and np.isnan(archive.history(0)["loss_train"][0])
    np.testing.assert_array_equal(archive.activations(0, "head", 3),
                                  capture(model, torch.from_numpy(blobs(240)[0]), ["head"])["head"])
    g_mean, g_std = archive.gradient_stats(0)
    assert np.isnan(g_mean[0]).all() and (g_mean[1:] > 0).all() and (g_std[1:] > 0).all()
    state = archive.weights(0, 3)
    np.testing.assert_array_equal(state["head.weight"], model.head.weight.detach().numpy())

    entries = {**DEFAULT_ESTIMATORS, "own_gaussian": {"method": "own_gaussian"}}
    assert estimate_archive(path, EstimatorsConfig(estimators=entries), scheduler="synchronous") == 0
    ds = xr.open_zarr(tmp_path / "tower" / "estimates.zarr").load()
    assert bool(ds.done.all()) and np.isfinite(ds.I_XT).all() and np.isfinite(ds.I_TY).all()
    assert np.isfinite(ds.fisher_trace).all() and (ds.fisher_trace > 0).all()
    # the registered estimator's values are its function's, and its carried state chains epochs
    index = archive.split_index("test")
    direct = gaussian_information_plane(archive.inputs[index], archive.activations(0, "stem", 2)[index],
                                        archive.labels[index], calls_before=2)
    cell = ds.sel(estimator="own_gaussian", seed=0, split="test", epoch=2, layer="stem")
    assert float(cell.I_XT) == direct["I_XT"] and float(cell.I_TY) == direct["I_TY"]
    np.testing.assert_array_equal(ds.calls.sel(estimator="own_gaussian", seed=0, split="all", layer="head"),
                                  [1, 2, 3, 4])
    assert ds.attrs["output_layer"] == "head"

    proc = run_stage("figures", "--archive", str(path), "--figures", str(tmp_path / "figures"),
                     "--formats", "png")
    out = tmp_path / "figures" / "tower"
    for name in ("training", "gradients", "plane_own_gaussian_test", "plane_ksg_all", "comparison", "fisher"):
        assert (out / f"{name}.png").exists(), (name, proc.stdout)
    html = (out / "index.html").read_text()
    assert "tower" in html and "training_environments" in html and "thread(s), cpu on" in html
    methods = (out / "methods.txt").read_text()  # the report's methods paragraph, beside it
    assert "'ksg': KSG, k = 5 [kraskov2004] (algorithm" in methods and "(3 classes)" in methods
    assert "'own_gaussian': own_gaussian (own_gaussian) (" in methods
    assert html_module.escape(methods.strip()) in html
    assert "@article{kraskov2004," in (out / "references.bib").read_text()


@pytest.mark.slow
def test_archive_without_optional_parts_through_every_stage(tmp_path):
    """No labels, splits, history, weights or gradients: each stage says what it skipped."""
    x, _ = blobs(120)
    model = Tower()
    path = tmp_path / "bare" / "archive.zarr"
    with Recorder(path, model, ["stem", "head"], torch.from_numpy(x)) as rec:
        for epoch in range(3):
            with torch.no_grad():
                model.head.weight.mul_(0.5)
            rec.snapshot(epoch)
    archive = ArchiveReader(path)
    assert archive.labels is None and archive.splits == ["all"] and archive.gradient_stats(0) is None
    proc = run_stage("estimate", "--archive", str(path), "--scheduler", "synchronous")
    assert "splits" not in proc.stdout  # the default: "all" and every recorded split
    assert ("Fisher information skipped: the archive records no weights, no labels, no model "
            "factory") in proc.stdout
    ds = xr.open_zarr(tmp_path / "bare" / "estimates.zarr").load()
    assert list(ds.split.values) == ["all"] and bool(ds.done.all())
    assert np.isfinite(ds.I_XT.sel(estimator="binning_30")).all() and np.isnan(ds.I_TY).all()
    proc = run_stage("figures", "--archive", str(path), "--figures", str(tmp_path / "figures"),
                     "--formats", "png")
    assert "no training history" in proc.stdout and "no gradient statistics" in proc.stdout
    assert "estimator binning_30 (all): no I(T;Y) values (an archive without labels); no plane" in proc.stdout
    assert (tmp_path / "figures" / "bare" / "mi_vs_epoch_binning_30.png").exists()
    assert not list((tmp_path / "figures" / "bare").glob("plane_*")), "a plane with no I(T;Y) to draw"


def test_the_estimate_covers_a_recordings_own_splits_by_default_or_by_pattern(tmp_path, capsys):
    """Splits named as a study names them (not train and test): every one is estimated by
    default, and `estimate.splits` takes names and shell-style patterns of them."""
    from pipeline.config import EstimateConfig

    x, y = blobs(90)
    h = x.reshape(90, -1)[:, :3]
    path = tmp_path / "own" / "archive.zarr"
    splits = {"fit": np.arange(50), "val": np.arange(50, 70), "val_ood": np.arange(70, 90)}
    with Recorder(path, None, {"h": 3}, x, y, splits) as rec:
        for epoch in range(2):
            rec.snapshot(epoch, activations={"h": h * (epoch + 1)})
    entries = {"binning_10": {"method": "binning", "n_bins": 10}}
    assert estimate_archive(path, scheduler="synchronous", estimators=entries) == 0
    stored = xr.open_zarr(tmp_path / "own" / "estimates.zarr").load()
    assert list(stored.split.values) == ["all", "fit", "val", "val_ood"] and bool(stored.done.all())
    shutil.rmtree(tmp_path / "own" / "estimates.zarr")
    capsys.readouterr()
    settings = EstimatorsConfig(EstimateConfig(splits=("val*", "test", "fit")), entries)
    assert estimate_archive(path, settings, scheduler="synchronous") == 0
    assert "note: splits ['test'] are not in the archive" in capsys.readouterr().out
    stored = xr.open_zarr(tmp_path / "own" / "estimates.zarr").load()
    assert list(stored.split.values) == ["val", "val_ood", "fit"]
    # each split's cells are that split's samples alone
    alone = information_plane(x[70:90], h[70:90] * 2, y[70:90], "binning", n_bins=10)
    assert float(stored.I_XT.sel(split="val_ood", epoch=1, layer="h", seed=0, estimator="binning_10")) == \
        pytest.approx(alone["I_XT"])


def test_a_recorder_without_a_model_stores_the_arrays_it_is_given(tmp_path, monkeypatch):
    """Activations computed elsewhere (another framework, files) recorded with model=None: the
    archive holds what the model's own probe pass would have stored, chunk by chunk, and the
    estimate reads the same values from both archives."""
    monkeypatch.setattr("pipeline.archive.CHUNK_BYTES", 3000)  # several chunks per layer
    x, y = blobs(240)
    model, inputs = Tower(), torch.from_numpy(x)
    splits = {"train": np.arange(160), "test": np.arange(160, 240)}
    shapes = {layer: layer_layout(model, LAYERS, inputs[:2])[i].shape for i, layer in enumerate(LAYERS)}
    with (Recorder(tmp_path / "model" / "archive.zarr", model, LAYERS, inputs, y, splits,
                   name="run") as by_model,
          Recorder(tmp_path / "arrays" / "archive.zarr", None, shapes, x, y, splits, name="run",
                   batch_size=50) as by_arrays):
        for epoch in range(3):
            with torch.no_grad():
                model.head.weight.add_(1.0)
            by_model.snapshot(epoch, loss=1.0 / (epoch + 1))
            given = capture(model, inputs, LAYERS)
            by_arrays.snapshot(epoch, activations=given, loss=1.0 / (epoch + 1))
            given["stem"][:] = np.nan  # the caller's arrays are its own again once snapshot returns
    stored = {kind: group_arrays(tmp_path / kind / "archive.zarr", "seed_0") for kind in ("model", "arrays")}
    assert_same_arrays(*({k: v for k, v in arrays.items() if k.startswith(("activations/", "history/"))}
                         for arrays in stored.values()))
    assert list(ArchiveReader(tmp_path / "arrays" / "archive.zarr").committed_epochs(0)) == [0, 1, 2]
    assert verify(tmp_path / "arrays" / "archive.zarr") == []
    entries = {"binning_30": {"method": "binning", "n_bins": 30}}
    for kind in ("model", "arrays"):
        path = tmp_path / kind / "archive.zarr"
        assert estimate_archive(path, scheduler="synchronous", estimators=entries) == 0
    model_values, array_values = (xr.open_zarr(tmp_path / kind / "estimates.zarr").load()
                                  for kind in ("model", "arrays"))
    np.testing.assert_array_equal(model_values.I_XT.values, array_values.I_XT.values)
    np.testing.assert_array_equal(model_values.I_TY.values, array_values.I_TY.values)
    assert np.isfinite(array_values.I_XT.values).all()


@pytest.mark.parametrize(("options", "call", "message"), [
    ({"layers": ["h"]}, None, r"layers: without a model, name each layer with the shape"),
    ({"layers": {"h": (0, 2)}}, None, r"layers\['h'\]: \(0, 2\) is not a shape"),
    ({"layers": {"a/b": 4}}, None, r"layers: 'a/b' holds '/', which would nest folders; each layer is"),
    ({"layers": {"..": 4}}, None, r"layers: '..' is reserved by zarr"),
    ({"layers": {"zarr.json": 4}}, None, r"layers: 'zarr.json' is reserved by zarr"),
    ({"layers": {"__h": 4}}, None, r"layers: '__h' is reserved by zarr"),
    ({"splits": {"a/b": range(20)}}, None, r"splits: 'a/b' is not a valid name; use letters, digits"),
    ({"splits": {"v" * 101: range(20)}}, None, r"splits: 'v+' is not a valid name; .* at most 100 char"),
    ({"layers": {"h" * 201: 4}}, None, r"layers: 'h+' is 201 bytes long, more than the 200 a file name"),
    ({"weights": True, "optimizer": object()}, None, r"weights, optimizer: need a torch model"),
    ({}, {}, r"snapshot: pass activations=\{layer: array\} when the Recorder has no model"),
    ({}, {"activations": {"h": np.zeros((20, 4))}},
     r"activations: the layers are \['h', 'g'\]; missing \['g'\]"),
    ({}, {"activations": {"h": np.zeros((20, 4)), "g": np.zeros((19, 2, 1))}},
     r"activations\['g'\]: expected shape \(20, 2, 1\) \(one row per probe input"),
    ({}, {"activations": {"h": np.zeros((20, 4)), "g": np.full((20, 2, 1), "a")}},
     r"activations\['g'\]: dtype <U1; pass numbers"),
])
def test_a_recorder_without_a_model_refuses_what_it_cannot_store(tmp_path, options, call, message):
    """Each mistake in one line, before anything of the snapshot is written: the epoch before
    it stays the archive's last."""
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    kwargs = {"layers": {"h": 4, "g": (2, 1)}, **options}
    if call is None:
        with pytest.raises(RecordError, match=message):
            Recorder(tmp_path / "archive.zarr", None, inputs=x, **kwargs)
        return
    good = {"h": np.ones((20, 4)), "g": np.ones((20, 2, 1))}
    with Recorder(tmp_path / "archive.zarr", None, inputs=x, **kwargs) as rec:
        rec.snapshot(0, activations=good)
        with pytest.raises(RecordError, match=message):
            rec.snapshot(1, **call)
    assert list(ArchiveReader(tmp_path / "archive.zarr").committed_epochs(0)) == [0]


class ForeignArray:
    """An array of another framework (a JAX or TensorFlow array): numpy reads it via __array__."""

    def __init__(self, values):
        self.values = values

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)


def test_a_recorder_without_a_model_takes_arrays_of_other_frameworks(tmp_path):
    x, y = blobs(40)
    h = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    with Recorder(tmp_path / "archive.zarr", None, {"h": 5}, ForeignArray(x), ForeignArray(y)) as rec:
        rec.snapshot(0, activations={"h": ForeignArray(h)})
    archive = ArchiveReader(tmp_path / "archive.zarr")
    np.testing.assert_array_equal(archive.activations(0, "h", 0), h)
    np.testing.assert_array_equal(archive.inputs, x)
    np.testing.assert_array_equal(archive.labels, y)
    with pytest.raises(RecordError, match="inputs: DataLoader is not an array of numbers"):
        Recorder(tmp_path / "other.zarr", None, {"h": 5}, torch.utils.data.DataLoader(x))


def test_a_recorder_with_a_model_refuses_activations_and_one_without_stops_on_nan(tmp_path):
    x, _ = blobs(30)
    with Recorder(tmp_path / "model.zarr", Tower(), ["head"], torch.from_numpy(x)) as rec:
        with pytest.raises(RecordError, match="and only then; with a model the probe pass records them"):
            rec.snapshot(0, activations={"head": np.zeros((30, 3))})
    values = np.ones((30, 2))
    values[3, 1] = np.nan
    with Recorder(tmp_path / "arrays.zarr", None, {"h": 2}, x) as rec:
        with pytest.raises(NonFiniteActivations, match="epoch 0: layer h: 1 NaN/inf of 60 values"):
            rec.snapshot(0, activations={"h": values})


def test_snapshots_already_committed_are_skipped_and_a_changed_recording_is_refused(tmp_path):
    path = tmp_path / "run" / "archive.zarr"
    x = torch.from_numpy(blobs(40)[0])
    model = Tower()
    with Recorder(path, model, LAYERS, x) as rec:
        assert rec.snapshot(0) and rec.snapshot(1)
        assert not rec.snapshot(1)
        rec.close("training")  # as if stopped: resumable
    with Recorder(path, model, LAYERS, x) as rec:
        assert rec.committed_epochs == [0, 1] and rec.resume() == 1
        assert not rec.snapshot(0) and rec.snapshot(2)
    assert ArchiveReader(path).committed_epochs(0).tolist() == [0, 1, 2]
    with pytest.raises(ArchiveError, match="recorded with other inputs, layers or parameters"):
        Recorder(path, model, ["stem"], x)
    with pytest.raises(RecordError, match="samples are in no split"):
        Recorder(tmp_path / "other.zarr", model, LAYERS, x, splits={"train": np.arange(30)})
    with pytest.raises(RecordError, match="unknown metric 'acc'"):
        with Recorder(tmp_path / "third" / "archive.zarr", model, LAYERS, x) as rec:
            rec.snapshot(0, acc=1.0)


@pytest.mark.parametrize("labels, message", [
    (np.tile([0.5, 1.0], 20), "labels: 20 are not whole numbers \\(e.g. 0.5\\); .*a continuous target is "
                              "not a label: record without labels and read I\\(T;Y\\) with"),
    (np.tile([np.nan, 1.0], 20), "labels: 20 are NaN or infinite"),
    (np.tile([-1, 1], 20), "labels: 20 are negative \\(smallest -1\\); pass class codes 0..K-1"),
    (np.eye(2)[np.tile([0, 1], 20)], "labels: expected shape \\(40,\\), one per input, got \\(40, 2\\)"),
    (np.array(["cat", "dog"] * 20), "labels: dtype <U3; pass integer class codes"),
])
def test_labels_a_cast_would_change_are_refused_in_one_line(tmp_path, labels, message):
    x = torch.from_numpy(blobs(40)[0])
    with pytest.raises(RecordError, match=message):
        Recorder(tmp_path / "run" / "archive.zarr", Tower(), LAYERS, x, labels=labels)
    whole = Recorder(tmp_path / "ok" / "archive.zarr", Tower(), LAYERS, x, labels=np.tile([0.0, 2.0], 20))
    whole.close()  # whole-number floats are class codes
    assert ArchiveReader(tmp_path / "ok" / "archive.zarr").labels.tolist() == [0, 2] * 20


@pytest.mark.parametrize("options, message", [
    ({"splits": {"train": range(30), "test": range(30, 45)}}, "splits\\['test'\\]: positions must lie in 0"),
    ({"splits": {"train": range(39), "test": [-1]}}, "splits\\['test'\\]: positions must lie in 0..39"),
    ({"splits": {"train": np.arange(30) + 0.5, "test": range(30, 40)}}, "float64 with fractions"),
    ({"splits": {"train": np.ones(30, dtype=bool)}}, "a boolean mask must have one entry per input \\(40\\)"),
    ({"dataset_index": np.arange(10)}, "dataset_index: expected shape \\(40,\\)"),
])
def test_splits_and_indices_that_would_select_other_samples_are_refused(tmp_path, options, message):
    x = torch.from_numpy(blobs(40)[0])
    with pytest.raises(RecordError, match=message):
        Recorder(tmp_path / "run" / "archive.zarr", Tower(), LAYERS, x, **options)
    masks = {"train": np.arange(40) < 30, "test": np.arange(40) >= 30}  # boolean masks are splits
    Recorder(tmp_path / "ok" / "archive.zarr", Tower(), LAYERS, x, splits=masks).close()
    reader = ArchiveReader(tmp_path / "ok" / "archive.zarr")
    assert reader.split_index("test").tolist() == list(range(30, 40))


@pytest.mark.parametrize("make_inputs, message", [
    (lambda x: list(x), "inputs: pass the probe samples as one tensor or array .* got list"),
    (lambda x: torch.utils.data.DataLoader(x, batch_size=8), "got DataLoader; e.g. torch.cat"),
    (lambda x: torch.where(x > 0.9, torch.nan, x), "inputs: [0-9]+ values are NaN or infinite"),
    (lambda x: (x, x[:10]), "inputs: the parts hold \\[40, 10\\] samples"),
    (lambda x: {"x": x, "mask": x[:10]}, "inputs: the parts hold \\[40, 10\\] samples"),
    (lambda x: {}, "inputs: the tuple or dict is empty"),
    (lambda x: x.double().numpy(), "inputs: the model's forward fails on the probe inputs \\(RuntimeError: "
                                   ".*\\); pass them as the training loop does"),
])
def test_probe_inputs_the_recorder_cannot_pass_are_refused_in_one_line(tmp_path, make_inputs, message):
    x = torch.from_numpy(blobs(40)[0])
    with pytest.raises(RecordError, match=message):
        Recorder(tmp_path / "run" / "archive.zarr", Tower(), LAYERS, make_inputs(x))
    assert not (tmp_path / "run" / "archive.zarr").exists()


class MaskedTokens(nn.Module):
    """A token model of the kind `model(input_ids=..., attention_mask=...)` is called with."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(20, 6), nn.Linear(6, 3)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask[..., None].float()
        return self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1))


def test_probe_inputs_as_keyword_or_positional_arguments(tmp_path):
    """A dict is passed as keyword arguments, a tuple as positional ones; the first part is
    archived as X, and both record the layers the model computes."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (50, 7), generator=generator)
    mask = (torch.arange(7) < torch.randint(1, 8, (50, 1), generator=generator)).long()
    model = MaskedTokens()
    with torch.no_grad():
        expected = model.embed(ids).numpy(), model(ids, mask).numpy()
    for name, inputs in (("kw", {"input_ids": ids, "attention_mask": mask}), ("pos", (ids, mask))):
        path = tmp_path / name / "archive.zarr"
        with Recorder(path, model, ["embed", "head"], inputs) as rec:
            rec.snapshot(0)
        archive = ArchiveReader(path)
        np.testing.assert_array_equal(archive.inputs, ids.numpy())
        np.testing.assert_allclose(archive.activations(0, "embed", 0), expected[0], rtol=1e-6)
        np.testing.assert_allclose(archive.activations(0, "head", 0), expected[1], rtol=1e-5, atol=1e-6)


def test_snapshot_epochs_are_whole_increasing_numbers(tmp_path):
    """A fractional or negative epoch is refused in one line before anything is stored; an epoch
    before the last recorded one is not recorded, with a warning unless it was recorded before
    (a rerun script); 2.0 is epoch 2."""
    path = tmp_path / "run" / "archive.zarr"
    with Recorder(path, Tower(), LAYERS, torch.from_numpy(blobs(40)[0])) as rec:
        for bad in (0.5, -1, "1"):
            with pytest.raises(RecordError, match=f"epoch {bad!r}: epochs are whole numbers counted from 0"):
                rec.snapshot(bad)
        assert rec.snapshot(0) and rec.snapshot(2.0) and rec.snapshot(np.int64(5))
        with pytest.warns(UserWarning, match="snapshot at epoch 3 not recorded: it comes before"):
            assert not rec.snapshot(3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not rec.snapshot(2)  # recorded before: silent, as when a script is rerun
    assert ArchiveReader(path).committed_epochs(0).tolist() == [0, 2, 5]


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_a_seed_the_archive_cannot_name_is_refused_before_anything_is_written(tmp_path, seed):
    path = tmp_path / "run" / "archive.zarr"
    with pytest.raises(RecordError, match=f"seed {seed!r}: seeds are whole numbers >= 0"):
        Recorder(path, Tower(), LAYERS, torch.from_numpy(blobs(40)[0]), seed=seed)
    assert not (tmp_path / "run").exists()


def test_a_bfloat16_network_and_autocast_layers_are_recorded_as_float32(tmp_path):
    """numpy has no bfloat16: inputs and layer outputs in it (a bf16 model, torch.autocast) are
    stored as float32, the values themselves unchanged."""
    x = torch.from_numpy(blobs(40)[0])
    model = Tower().to(torch.bfloat16)
    path = tmp_path / "bf16" / "archive.zarr"
    with Recorder(path, model, LAYERS, x.to(torch.bfloat16)) as rec:
        rec.snapshot(0)
    archive = ArchiveReader(path)
    assert archive.inputs.dtype == np.float32
    np.testing.assert_array_equal(archive.inputs, x.to(torch.bfloat16).float().numpy())
    captured = capture(model, x.to(torch.bfloat16), LAYERS)
    for layer in archive.layers:
        np.testing.assert_array_equal(archive.activations(0, layer, 0), captured[layer])
    model = Tower()
    with torch.autocast("cpu", dtype=torch.bfloat16), Recorder(tmp_path / "amp" / "archive.zarr", model,
                                                                LAYERS, x) as rec:
        rec.snapshot(0)
    stored = ArchiveReader(tmp_path / "amp" / "archive.zarr").activations(0, LAYERS[0], 0)
    assert stored.dtype == np.float32 and np.isfinite(stored).all()


def test_a_finished_seed_says_once_that_it_records_no_more_epochs(tmp_path):
    """A script rerun with more epochs: the seed's recording was closed, so nothing is added;
    a warning says so once instead of every new epoch returning False in silence."""
    path = tmp_path / "run" / "archive.zarr"
    x = torch.from_numpy(blobs(40)[0])
    with Recorder(path, Tower(), LAYERS, x) as rec:
        rec.snapshot(0), rec.snapshot(1)
    with Recorder(path, Tower(), LAYERS, x) as rec:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not rec.snapshot(0) and not rec.snapshot(1)  # recorded before: silent
        with pytest.warns(UserWarning, match=r"epoch 2 not recorded: seed 0 of .* is finished \(closed "
                                             r"after epoch 1\) and is never extended; record more epochs as "
                                             r"another seed or into another archive"):
            assert not rec.snapshot(2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not rec.snapshot(3)  # said once
    assert ArchiveReader(path).committed_epochs(0).tolist() == [0, 1]


def test_flush_returns_once_every_snapshot_taken_is_committed(tmp_path):
    """A snapshot returns as soon as the writer has its rows; `flush` waits for the commit, so an
    estimate while training goes on sees every epoch recorded so far. 64 MB a snapshot: its
    commit takes longer than the step from `snapshot` to the reader."""
    path = tmp_path / "run" / "archive.zarr"
    model = nn.Sequential(nn.Linear(64, 4096), nn.Tanh())
    with Recorder(path, model, ["0"], torch.randn(4096, 64), activation_dtype="float32") as rec:
        for epoch in range(3):
            rec.snapshot(epoch, loss_train=1.0 / (epoch + 1))
            rec.flush()
            assert ArchiveReader(path).committed_epochs(0).tolist() == list(range(epoch + 1))
        assert ArchiveReader(path).seed_status(0)["status"] == "training"
        estimate_archive(path, scheduler="synchronous", estimators={"binning": {"method": "binning"}})
        cells = xr.open_zarr(path.parent / "estimates.zarr").load()
        assert cells.epoch.values.tolist() == [0, 1, 2] and bool(cells.done.all())
    with pytest.raises(RecordError, match="flush: the Recorder of seed 0 .* is closed"):
        rec.flush()


def test_a_closed_recorder_refuses_what_it_would_drop(tmp_path):
    """log, snapshot and gradient_step after the `with` block (or close()) would store nothing:
    each is refused in one line; what was recorded before stays as it was."""
    path = tmp_path / "run" / "archive.zarr"
    with Recorder(path, Tower(), LAYERS, torch.from_numpy(blobs(40)[0]), gradients=True) as rec:
        rec.snapshot(0, loss_train=0.5)
    for call in (lambda: rec.log(1, accuracy_test=0.9), lambda: rec.snapshot(1), rec.gradient_step):
        with pytest.raises(RecordError, match=r": the Recorder of seed 0 of .* is closed and stores "
                                              r"nothing more; call it before rec.close\(\)"):
            call()
    archive = ArchiveReader(path)
    assert archive.committed_epochs(0).tolist() == [0] and archive.seed_status(0)["status"] == "finished"
    assert archive.history(0)["loss_train"].tolist() == [0.5]


@pytest.mark.parametrize("option, message", [
    ({"batch_size": 0}, "batch_size: the probe samples per forward pass, a whole number >= 1, got 0"),
    ({"batch_size": -5}, "batch_size: .* got -5"),
    ({"select": {"nope": 1}}, r"select: \['nope'\] are not among the recorded layers"),
    ({"name": "../elsewhere"}, "name: '../elsewhere' is not a valid name"),
    ({"extra": {"when": object()}}, "extra: values must be JSON .*not JSON serializable"),
    ({"model_spec": {"factory": "nope"}}, "model_spec: unknown model 'nope'; registered: mlp"),
    ({"model_spec": {"factory": "tests.own_models:absent"}}, "model_spec: entry point .* has no 'absent'"),
    ({"model_spec": {"factory": "tests.own_models:build", "config": {"options": {"channels": 4}}}},
     r"model_spec: the factory 'tests.own_models:build' builds other parameters than were recorded "
     r"\(stem.0.weight \(3, 1, 3, 3\) recorded, \(4, 1, 3, 3\) built; .*\); give it the settings"),
    ({"model_spec": {"factory": "tests.own_models:build", "config": {"options": {"channels": -1}}}},
     r"model_spec: the factory 'tests.own_models:build' fails \(RuntimeError: "),
])
def test_recorder_options_it_would_trip_on_later_are_refused_at_once(tmp_path, option, message):
    with pytest.raises(RecordError, match=message):
        Recorder(tmp_path / "run" / "archive.zarr", Tower(), LAYERS, torch.from_numpy(blobs(40)[0]), **option)
    assert not (tmp_path / "run").exists()


def test_a_model_factory_that_no_longer_builds_the_recorded_network_ends_the_estimate_in_one_line(
        tmp_path, capsys):
    """The factory changed since the recording: the Fisher tasks would each fail to load the
    weights (on every worker, every retry); the stage says so once, before any work, and a run
    without the Fisher traces computes the rest."""
    from pipeline.archive import ArchiveError

    path = tmp_path / "tower" / "archive.zarr"
    train_tower(path, epochs=1, weights=True, model_spec={"factory": "tests.own_models:build", "config": {}})
    root = zarr.open_group(str(path), mode="r+")
    root.attrs["model"] = {"factory": "tests.own_models:build", "config": {"options": {"channels": 2}}}
    entries = {"binning_30": {"method": "binning", "n_bins": 30}}
    with pytest.raises(ArchiveError, match=r"Fisher information: the archive's model factory "
                       r"'tests.own_models:build' builds other parameters than were recorded \(stem.0.weight "
                       r"\(3, 1, 3, 3\) recorded, \(2, 1, 3, 3\) built; .*\); restore the factory .* "
                       r"or leave the Fisher traces out \(`--set estimate.fisher=false`\)"):
        estimate_archive(path, EstimatorsConfig(estimators=entries), scheduler="synchronous")
    from pipeline.config import EstimateConfig
    settings = EstimatorsConfig(EstimateConfig(fisher=False), entries)
    assert estimate_archive(path, settings, scheduler="synchronous") == 0
    assert bool(xr.open_zarr(tmp_path / "tower" / "estimates.zarr").done.all())


def test_a_rebuilt_model_that_cannot_run_fails_its_fisher_task_in_one_line(tmp_path, monkeypatch, capsys):
    """Parameters that match but a forward that fails on the archived inputs (a model of several
    inputs, say): the Fisher task reports the error once, the estimator cells are written."""
    path = tmp_path / "tower" / "archive.zarr"
    train_tower(path, epochs=1, weights=True, model_spec={"factory": "tests.own_models:build", "config": {}})

    def cannot_run(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr("pipeline.fisher.fisher_traces", cannot_run)
    entries = {"binning_30": {"method": "binning", "n_bins": 30}}
    assert estimate_archive(path, EstimatorsConfig(estimators=entries), scheduler="synchronous") == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("error: 1 task(s) failed, the first at Fisher traces of seed 0 at epoch 0: the "
                           "model raised RuntimeError: mat1 and mat2 shapes cannot be multiplied at "), last
    assert last.endswith("in cannot_run; the rebuilt model must take the archived inputs as its one argument "
                         "and return class logits; or leave the Fisher traces out "
                         "(`--set estimate.fisher=false`)"), last
    stored = xr.open_zarr(tmp_path / "tower" / "estimates.zarr").load()
    assert bool(stored.done.all()) and not bool(stored.fisher_done.any())


def test_each_training_session_records_its_threads_and_device(tmp_path):
    """What a bitwise repeat depends on is kept per seed: one entry per session that trained."""
    path = tmp_path / "run" / "archive.zarr"
    x, threads = torch.from_numpy(blobs(40)[0]), torch.get_num_threads()
    model = Tower()
    try:
        with Recorder(path, model, LAYERS, x) as rec:
            torch.set_num_threads(1)  # what the session's first commit runs with is recorded
            rec.snapshot(0)
            rec.close("training")
        torch.set_num_threads(2)
        with Recorder(path, model, LAYERS, x) as rec:
            rec.snapshot(1)
    finally:
        torch.set_num_threads(threads)
    Recorder(path, model, LAYERS, x).close()  # a finished seed trains no more: no session
    sessions = ArchiveReader(path).seed_status(0)["sessions"]
    assert [(s["after_snapshots"], s["torch_threads"], s["device"]) for s in sessions] == [
        (0, 1, "cpu"), (1, 2, "cpu")]
    assert all(s["torch"] == torch.__version__ for s in sessions)
    assert "trained in 2 session(s): torch" in ArchiveReader(path).describe()
    environments = ArchiveReader(path).training_environments()
    assert sorted(environments.values()) == [[0], [0]]
    assert [key.split(", ")[1] for key in environments] == ["1 thread(s)", "2 thread(s)"]


# ---------------------------------------------------------------- a killed user script resumes
USER_SCRIPT = """
import pathlib, sys, time, torch
sys.path.insert(0, {root!r})
runs = pathlib.Path(sys.argv[1] + ".runs")  # a line each time this top level runs
runs.parent.mkdir(parents=True, exist_ok=True)
with runs.open("a") as out:
    out.write("ran\\n")
torch.set_num_threads(1)
from torch import nn
from pipeline.record import Recorder
from tests.own_models import Tower, blobs
x, y = map(torch.from_numpy, blobs(120))
torch.manual_seed(0)
model = Tower()
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
generator = torch.Generator().manual_seed(1)
with Recorder(sys.argv[1], model, ["stem", "head"], x, y, optimizer=optimizer,
              generators=[generator], weights=True) as rec:
    for epoch in range(rec.resume() + 1, 12):
        for batch in torch.randperm(120, generator=generator).split(40):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        rec.snapshot(epoch, loss=loss.item())
        time.sleep(float(sys.argv[2]))
if sys.argv[3:] == ["estimate"]:  # no `__main__` guard: the cluster's workers must not rerun this
    from pipeline.estimate import estimate_archive
    sys.exit(estimate_archive(sys.argv[1], estimators={{"binning": {{"method": "binning"}}}}))
"""


@pytest.mark.slow
def test_killed_user_script_resumes_to_the_uninterrupted_archive(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT.format(root=str(ROOT)))
    ref, killed = tmp_path / "ref" / "archive.zarr", tmp_path / "killed" / "archive.zarr"
    subprocess.run([sys.executable, str(script), str(ref), "0"], check=True, timeout=300)
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.4"], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            if len(ArchiveReader(killed).committed_epochs(0)) >= 3:
                break
        except (ArchiveError, KeyError):
            continue
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(ArchiveReader(killed).committed_epochs(0)) < 11
    subprocess.run([sys.executable, str(script), str(killed), "0"], check=True, timeout=300)
    assert ArchiveReader(killed).seed_status(0)["status"] == "finished"
    assert_same_arrays(group_arrays(ref, "seed_0"), group_arrays(killed, "seed_0"))
    # a finished script rerun as it is, with an estimate on a local cluster at its top level
    subprocess.run([sys.executable, str(script), str(ref), "0", "estimate"], check=True, timeout=300)
    assert ref.with_name("archive.zarr.runs").read_text() == "ran\n" * 2  # never by a worker as it starts
    assert_same_arrays(group_arrays(ref, "seed_0"), group_arrays(killed, "seed_0"))
    assert bool(xr.open_zarr(ref.parent / "estimates.zarr").done.all())


def _train_and_record(path, lr: float, stop_after: int | None = None) -> dict[str, torch.Tensor]:
    """Train a Tower on blobs for 4 epochs into `path`, resuming where it stopped; raise after
    epoch `stop_after` (the seed stays resumable). Returns the weights after the last epoch run."""
    x, y = map(torch.from_numpy, blobs(60))
    torch.manual_seed(0)
    model = Tower()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with contextlib.suppress(KeyboardInterrupt), \
            Recorder(path, model, ["stem", "head"], x, y, optimizer=optimizer) as rec:
        for epoch in range(rec.resume() + 1, 5):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.snapshot(epoch, loss=loss.item())
            if epoch == stop_after:
                raise KeyboardInterrupt
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_archives_sharing_a_folder_keep_their_own_checkpoints_results_and_figures(tmp_path, capsys):
    """Two recordings of one network at two learning rates, side by side in one folder: the
    second one neither deletes the first one's checkpoints (it used to, when it finished) nor
    hands it its own (the first resumed with the second's weights and learning rate)."""
    slow, fast = tmp_path / "lr_0.01.zarr", tmp_path / "lr_0.5.zarr"
    at_stop = _train_and_record(slow, 0.01, stop_after=2)
    _train_and_record(fast, 0.5, stop_after=2)
    _train_and_record(fast, 0.5)
    x, y = map(torch.from_numpy, blobs(60))
    torch.manual_seed(0)
    model = Tower()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(slow, model, ["stem", "head"], x, y, optimizer=optimizer) as rec:
        assert rec.resume() == 2
        assert optimizer.param_groups[0]["lr"] == 0.01
        assert all(torch.equal(model.state_dict()[k], at_stop[k]) for k in at_stop)
        rec.close("training")
    report_archive(slow, tmp_path / "figures", formats="png")
    assert (f"note: no results store at {tmp_path / 'lr_0.01.estimates.zarr'}: run `make estimate "
            f"ARCHIVE={slow}` for the information-plane figures") in capsys.readouterr().out
    for path in (slow, fast):
        estimate_archive(path, scheduler="synchronous", estimators={"binning": {"method": "binning"}})
        report_archive(path, tmp_path / "figures", formats="png")
    stores = sorted(p.name for p in tmp_path.glob("*estimates.zarr"))
    assert stores == ["lr_0.01.estimates.zarr", "lr_0.5.estimates.zarr"]
    for name in ("lr_0.01", "lr_0.5"):
        assert xr.open_zarr(tmp_path / f"{name}.estimates.zarr").attrs["config_name"] == name
        assert (tmp_path / "figures" / name / "index.html").exists()


def test_a_checkpoint_that_is_gone_or_another_archives_is_refused_at_resume(tmp_path):
    first, second = tmp_path / "first.zarr", tmp_path / "second.zarr"
    for path in (first, second):
        _train_and_record(path, 0.1, stop_after=2)
    shutil.rmtree(tmp_path / "first.checkpoints")
    shutil.copytree(tmp_path / "second.checkpoints", tmp_path / "first.checkpoints")
    with pytest.raises(RecordError, match="first.checkpoints/seed_0/snapshot_2.pt was written for another "
                                          "archive than .*first.zarr; record into a new path"):
        _train_and_record(first, 0.1)
    shutil.rmtree(tmp_path / "first.checkpoints")
    with pytest.raises(RecordError, match="snapshot_2.pt is missing, so seed 0 of .*first.zarr cannot "):
        _train_and_record(first, 0.1)


def test_a_recorder_path_that_is_a_folder_of_other_files_is_refused_and_an_empty_one_taken(tmp_path):
    """`Recorder("runs/my_run", ...)` on the run's folder said "no archive ...: run `make train`"."""
    folder, empty = tmp_path / "my_run", tmp_path / "made_for_it.zarr"
    folder.mkdir()
    (folder / "train.py").write_text("# the researcher's script")
    x = torch.from_numpy(blobs(30)[0])
    with pytest.raises(RecordError, match=r"my_run exists and is not an archive: record into a new path, "
                                          r"e.g. .*my_run/archive.zarr \(its files are left as they are\)"):
        Recorder(folder, Tower(), LAYERS, x)
    assert [p.name for p in folder.iterdir()] == ["train.py"]
    empty.mkdir()
    with Recorder(empty, Tower(), LAYERS, x) as rec:
        rec.snapshot(0)
    assert ArchiveReader(empty).committed_epochs(0).tolist() == [0]


def test_an_archive_in_the_working_directory_is_named_after_it(tmp_path, monkeypatch):
    """`Recorder("archive.zarr", ...)` in the working directory: the run was named "" and its
    figures went into the figures folder itself."""
    monkeypatch.chdir(tmp_path)
    paths = RunPaths.from_archive("archive.zarr")
    assert paths.name == tmp_path.name and paths.figures("figures") == Path("figures") / tmp_path.name
    assert RunPaths.from_archive("/archive.zarr").name == "run"


def test_a_results_store_shared_by_a_folder_stays_the_store_of_the_archive_that_wrote_it(tmp_path):
    """A store called estimates.zarr beside an archive of another name (one store per folder, as
    an earlier release kept) is still found as that archive's store."""
    archive = tmp_path / "mine.zarr"
    _train_and_record(archive, 0.1)
    assert RunPaths.from_archive(archive).results == tmp_path / "mine.estimates.zarr"
    estimate_archive(archive, scheduler="synchronous", estimators={"binning": {"method": "binning"}},
                     results=tmp_path / "estimates.zarr")
    assert RunPaths.from_archive(archive).results == tmp_path / "estimates.zarr"
    assert RunPaths.from_archive(tmp_path / "other.zarr").results == tmp_path / "other.estimates.zarr"


SEED_SCRIPT = """
import pathlib, sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from torch import nn
from pipeline.record import Recorder
from tests.own_models import Tower, blobs
x, y = map(torch.from_numpy, blobs(200))
seed = int(sys.argv[2])
torch.manual_seed(seed)
model = Tower()
pathlib.Path(sys.argv[3] + f".ready{{seed}}").touch()
while not pathlib.Path(sys.argv[3]).exists():  # start together, as a job array's tasks do
    time.sleep(0.002)
with Recorder(sys.argv[1], model, ["stem", "head"], x, y, seed=seed, n_epochs=2) as rec:
    for epoch in range(3):
        rec.snapshot(epoch)
"""


@pytest.mark.slow
def test_seeds_started_together_record_into_one_archive(tmp_path):
    """Seeds of one recording started at once (a job array) each found no archive and built it,
    the last rename failing ('Directory not empty') or one building into another's files."""
    script, archive, go = tmp_path / "seed.py", tmp_path / "runs" / "archive.zarr", tmp_path / "go"
    script.write_text(SEED_SCRIPT.format(root=str(ROOT)))
    procs = [subprocess.Popen([sys.executable, str(script), str(archive), str(seed), str(go)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for seed in range(3)]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("go.ready*"))) < 3 and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], "\n".join(outputs)[-3000:]
    reader = ArchiveReader(archive)
    assert reader.seeds == [0, 1, 2] and verify(archive) == []
    assert all(reader.committed_epochs(seed).tolist() == [0, 1, 2] for seed in range(3))


UNCLOSED_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
from pipeline.record import Recorder
from tests.own_models import Tower, blobs
x, y = map(torch.from_numpy, blobs(60))
rec = Recorder(sys.argv[1], Tower(), ["stem", "head"], x, y)
for epoch in range(3):
    rec.snapshot(epoch)
"""


def test_a_recorder_never_closed_commits_at_exit_and_stays_resumable(tmp_path):
    """No `with` and no close(): the script still ends (its writer waited for a queue end that
    never came), with every snapshot committed (a writer still starting lost them all)."""
    script, path = tmp_path / "unclosed.py", tmp_path / "run" / "archive.zarr"
    script.write_text(UNCLOSED_SCRIPT.format(root=str(ROOT)))
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "was never closed: its snapshots are committed and the seed stays resumable" in proc.stderr
    archive = ArchiveReader(path)
    assert archive.committed_epochs(0).tolist() == [0, 1, 2]
    assert archive.seed_status(0)["status"] == "training" and verify(path) == []


# ---------------------------------------------------------------- the built-ins and older archives
SCHEMA_1_0 = ROOT / "tests" / "data" / "archive_schema_1_0.zarr"


@pytest.mark.slow
def test_builtin_archive_equals_the_previous_schemas(tmp_path):
    """tests/data/archive_schema_1_0.zarr was written by the release before the Recorder (configs/
    tiny.toml, seed 0, 2 epochs, 16 samples a split, 1 thread); retraining gives its arrays."""
    run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), "--set", "name=schema_1_0",
              "--set", "archive.samples_per_split=16", "--set", "train.n_epochs=2", "--set",
              "archive.every=1", "--set", "seeds=[0]", "--set", "train.threads_per_seed=1")
    new = tmp_path / "schema_1_0" / "archive.zarr"
    old_arrays, new_arrays = group_arrays(SCHEMA_1_0, "seed_0"), group_arrays(new, "seed_0")
    assert sorted(old_arrays) == sorted(new_arrays)
    for key in old_arrays:  # float32 training on one thread: equal up to the last bits of BLAS
        np.testing.assert_allclose(new_arrays[key], old_arrays[key], rtol=1e-5, atol=1e-7, err_msg=key)
    old, current = ArchiveReader(SCHEMA_1_0), ArchiveReader(new)
    assert old.attrs["parameters"] == current.attrs["parameters"]
    assert old.layer_parameters == current.layer_parameters
    np.testing.assert_array_equal(old.inputs, current.inputs)


@pytest.mark.slow
def test_archive_of_the_previous_schema_reads_and_estimates(tmp_path):
    shutil.copytree(SCHEMA_1_0, tmp_path / "old" / "archive.zarr")
    path = tmp_path / "old" / "archive.zarr"
    archive = ArchiveReader(path)
    assert archive.attrs["schema_version"] == "1.0" and archive.name == "schema_1_0"
    assert archive.layers == ["dense1", "dense2", "softmax"] and archive.output_layer == "softmax"
    assert archive.committed_epochs(0).tolist() == [0, 1, 2] and archive.split_names == ("train", "test")
    assert archive.layer_parameters["softmax"] == ["logits.0.weight", "logits.0.bias"]
    settings = EstimatorsConfig(tiny_config().estimate, {"binning_10": {"method": "binning", "n_bins": 10}})
    assert estimate_archive(path, settings, scheduler="synchronous") == 0
    ds = xr.open_zarr(tmp_path / "old" / "estimates.zarr").load()
    index = archive.split_index("test")
    expected = information_plane(archive.inputs[index], archive.activations(0, "dense1", 1)[index],
                                 archive.labels[index], "binning", n_bins=10)
    cell = ds.sel(estimator="binning_10", seed=0, split="test", epoch=1, layer="dense1")
    assert float(cell.I_XT) == expected["I_XT"] and float(cell.I_TY) == expected["I_TY"]
    assert np.isfinite(ds.fisher_trace).all()
    assert report_archive(path, tmp_path / "figures", formats="png") == 0
    with pytest.raises(ArchiveError, match="schema 1.0, which this release reads but does not extend"):
        Recorder(path, nn.Sequential(nn.Linear(12, 2)), ["0"], torch.zeros(32, 12))


# ---------------------------------------------------------------- models and data by entry point
@pytest.mark.slow
def test_config_names_own_model_data_and_estimator_by_entry_point(tmp_path):
    config = tmp_path / "own.toml"
    config.write_text("""
name = "own"
[data]
factory = "tests.own_models:dataset"
options = {n = 150}
[model]
factory = "tests.own_models:build"
layers = ["stem", "block.pair", "head"]
options = {channels = 2}
[train]
n_epochs = 2
lr = 0.05
[archive]
snapshots = "every"
[estimate]
splits = ["all"]
[estimators.gaussian]
method = "tests.own_models:gaussian_information_plane"
[estimators.binning]
method = "binning"
""")
    run_stage("train", "--config", str(config), "--runs", str(tmp_path))
    archive = ArchiveReader(tmp_path / "own" / "archive.zarr")
    assert archive.layers == LAYERS and archive.layer_shapes["stem"] == (2, 6, 6)
    run_stage("estimate", "--config", str(config), "--runs", str(tmp_path))
    ds = xr.open_zarr(tmp_path / "own" / "estimates.zarr").load()
    assert bool(ds.done.all()) and np.isfinite(ds.fisher_trace).all()
    np.testing.assert_array_equal(ds.calls.sel(estimator="gaussian", seed=0, split="all", layer="stem"),
                                  [1, 2, 3])
    proc = run_stage("train", "--config", str(config), "--runs", str(tmp_path), "--set", "name=other",
                     "--set", "model.factory=tests.own_models:nothing", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "'tests.own_models' has no 'nothing'" in proc.stderr



# ---------------------------------------------------------------- the worked example
@pytest.mark.slow
def test_worked_examples_record_a_network_and_add_an_own_estimator(tmp_path):
    source = (ROOT / "examples" / "own_network.py").read_text()
    body = source.split('"""', 2)[2].split('if __name__ == "__main__":')[0]
    code = [line for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 31, len(code)  # README and docs/extending.md: 31 lines of code
    own_estimator, own_network = import_examples("own_estimator", "own_network")
    archive = str(tmp_path / "runs" / "own_network" / "archive.zarr")
    own_network.main(archive, epochs=3, figures=str(tmp_path / "figures"), formats="png")
    ds = xr.open_zarr(tmp_path / "runs" / "own_network" / "estimates.zarr").load()
    assert list(ds.layer.values) == ["1", "4", "5"] and bool(ds.done.all())
    assert ds.attrs["output_layer"] == "5" and list(ds.estimator.values) == ["binning", "kde"]
    assert float(ds.I_XT_clipped.sel(estimator="binning").max()) == 0.0  # binned over their own span
    assert (tmp_path / "figures" / "own_network" / "plane_kde_all.png").exists()

    # the second example: its estimator on exact patterns, then added beside the stored entries
    check = own_estimator.check_on_known_patterns()
    assert check["I_XT"] == pytest.approx(3.0, abs=1e-12) and check["I_TY"] == pytest.approx(0.5, abs=1e-12)
    proc = subprocess.run([sys.executable, "examples/own_estimator.py", "--archive", archive, "--figures",
                           str(tmp_path / "figures"), "--formats", "png"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "keeping the stored cells of binning, kde" in proc.stdout
    both = xr.open_zarr(tmp_path / "runs" / "own_network" / "estimates.zarr").load()
    assert sorted(both.estimator.values) == ["binning", "equal_mass_4", "kde"] and bool(both.done.all())
    kept = ["binning", "kde"]
    assert both.I_XT.sel(estimator=kept).equals(ds.I_XT.sel(estimator=kept))  # not lost, not recomputed
    own = both.sel(estimator="equal_mass_4", split="all")
    assert bool((own.I_XT_lo <= own.I_XT_hi).all()) and bool(np.isfinite(own.I_TY_null).all())
    assert (tmp_path / "figures" / "own_network" / "plane_equal_mass_4_all.png").exists()
