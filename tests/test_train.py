"""End-to-end tests of the train stage on the tiny SZT config (seconds each)."""

import os
import signal
import time

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.archive import ArchiveError, ArchiveReader
from pipeline.verify import verify
from tests.helpers import INTERRUPTED, TINY, assert_same_arrays, group_arrays, run_stage, start_stage

pytestmark = pytest.mark.slow
LONG = ["--set", "train.n_epochs=80", "--set", "archive.every=1", "--set", "train.threads_per_seed=1",
        "--set", "train.parallel_seeds=2"]  # a process per seed


def test_archive_contents(tmp_path):
    run_stage("train", "--config", str(TINY), "--runs", str(tmp_path))
    path = tmp_path / "tiny" / "archive.zarr"
    archive = ArchiveReader(path)
    assert archive.seeds == [0, 1]
    assert archive.layers == ["dense1", "dense2", "softmax"]
    assert archive.snapshot_epochs.tolist() == [0, 2, 4, 6]
    # all 4096 SZT patterns, both splits, each with its dataset index
    assert archive.inputs.shape == (4096, 12)
    np.testing.assert_array_equal(np.sort(archive.root["dataset_index"][:]), np.arange(4096))
    assert (archive.split == 0).sum() == 3277
    for seed in archive.seeds:
        assert archive.seed_status(seed)["status"] == "finished"
        softmax = archive.activations(seed, "softmax", 6)
        np.testing.assert_allclose(softmax.sum(axis=1), 1.0, rtol=1e-5)
        dense1 = archive.activations(seed, "dense1", 0)
        assert dense1.shape == (4096, 6) and np.abs(dense1).max() <= 1.0  # tanh
        history = archive.history(seed)
        assert len(history["loss_train"]) == 7 and np.isfinite(history["loss_train"]).all()
        assert history["loss_train"][-1] < history["loss_train"][0]  # it learned
        g_mean, g_std = archive.gradient_stats(seed)
        assert np.isnan(g_mean[0]).all() and (g_mean[1:] > 0).all() and (g_std[1:] > 0).all()
        w = archive.weights(seed, 6)
        assert w["dense1.1.weight"].shape == (6, 12)
    # the initial weights are the truncated normal of SZT: |w| <= 2 / sqrt(fan_in), biases 0
    w0 = archive.weights(0, 0)
    assert np.abs(w0["dense1.1.weight"]).max() <= 2 / np.sqrt(12) and not w0["dense1.1.bias"].any()
    # the two seeds differ
    assert not np.allclose(archive.activations(0, "dense1", 6), archive.activations(1, "dense1", 6))
    # provenance and the resolved config travel with the archive
    assert archive.attrs["config"]["name"] == "tiny" and archive.attrs["provenance"]["git_revision"]
    assert archive.attrs["provenance"]["versions"]["torch"]
    tree = xr.open_datatree(path, engine="zarr")
    assert tree["seed_0/activations"]["dense1"].dims == ("epoch", "sample", "dense1_unit")
    assert tree["seed_0"]["loss_train"].dims == ("history_epoch",)
    assert tree["seed_0"].ds.epoch.values.tolist() == [0, 2, 4, 6]


def test_second_run_does_nothing_and_force_retrains(tmp_path):
    # bitwise equality holds for a fixed torch thread count (reductions change with it)
    run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), "--set", "train.threads_per_seed=1")
    before = group_arrays(tmp_path / "tiny" / "archive.zarr", "seed_0")
    again = run_stage("train", "--config", str(TINY), "--runs", str(tmp_path))
    assert "nothing to do" in again.stdout
    forced = run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), "--force",
                       "--set", "seeds=[0]", "--set", "train.threads_per_seed=1")
    assert "training tiny" in forced.stdout
    assert_same_arrays(before, group_arrays(tmp_path / "tiny" / "archive.zarr", "seed_0"))
    assert ArchiveReader(tmp_path / "tiny" / "archive.zarr").seeds == [0]


def test_changed_config_refuses_to_mix(tmp_path, tiny_trained):
    tiny_trained(tmp_path, "--set", "seeds=[0]")
    proc = run_stage("train", "--config", str(TINY), "--runs", str(tmp_path),
                     "--set", "train.lr=0.5", check=False)
    assert proc.returncode == 2
    assert "another configuration" in proc.stderr and "--force" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one clear line, no traceback


def test_added_seed_trains_only_that_seed(tmp_path):
    run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), "--set", "seeds=[0]",
              "--set", "train.threads_per_seed=1")
    before = group_arrays(tmp_path / "tiny" / "archive.zarr", "seed_0")
    proc = run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), "--set", "seeds=[0, 1]")
    assert "seeds [1]" in proc.stdout
    assert ArchiveReader(tmp_path / "tiny" / "archive.zarr").seeds == [0, 1]
    assert_same_arrays(before, group_arrays(tmp_path / "tiny" / "archive.zarr", "seed_0"))


def test_divergence_stops_the_seed_and_keeps_its_snapshots(tmp_path):
    proc = run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), "--set", "seeds=[0]",
                     "--set", "train.optimizer='sgd'", "--set", "train.lr=1e38", check=False)
    assert proc.returncode == 1
    assert "diverged" in proc.stdout and "Lower train.lr" in proc.stdout
    archive = ArchiveReader(tmp_path / "tiny" / "archive.zarr")
    status = archive.seed_status(0)
    assert status["status"] == "diverged" and "epoch" in status["message"]
    committed = archive.committed_epochs(0)
    assert committed.tolist() == [0]  # the initial snapshot survives, nothing after NaN
    assert np.isfinite(archive.activations(0, "dense1", 0)).all()


def test_bad_inputs_give_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[train]\nn_epoch = 3\n')
    proc = run_stage("train", "--config", str(bad), "--runs", str(tmp_path), check=False)
    assert proc.returncode == 2 and "train.n_epoch: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupted_archive_names_the_array(tmp_path, tiny_trained):
    tiny_trained(tmp_path, "--set", "seeds=[0]")
    path = tmp_path / "tiny" / "archive.zarr"
    chunk = next((path / "seed_0" / "activations" / "dense2" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.write_bytes(b"garbage")
    archive = ArchiveReader(path)
    with pytest.raises(ArchiveError, match="seed_0/activations/dense2"):
        for epoch in archive.committed_epochs(0):
            archive.activations(0, "dense2", int(epoch))
    (path / "zarr.json").write_text("{broken")
    with pytest.raises(ArchiveError, match="archive.zarr exists but its metadata cannot be read"):
        ArchiveReader(path)


def _committed(path, seeds=(0, 1)):
    try:
        root = zarr.open_group(str(path), mode="r", use_consolidated=False)
        return min(int(root[f"seed_{s}"].attrs["committed_snapshots"]) for s in seeds)
    except Exception:
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_trained):
    """The archive of LONG trained without a kill: the reference of every kill point."""
    return tiny_trained(tmp_path_factory.mktemp("uninterrupted"), *LONG)


def _stage_interrupted(runs, args: list[str], when, how: int) -> str:
    """Run `make train` in its own process group, send `how` to the group once `when()` holds
    (as Ctrl-C in a terminal does for SIGINT), and return its stderr once it has ended."""
    proc = start_stage("train", "--config", str(TINY), "--runs", str(runs), *args)
    deadline = time.monotonic() + 120
    while not when() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, how)
    err = proc.communicate(timeout=60)[1]
    if how == signal.SIGINT:  # one line, whatever the seed processes and writers were doing
        assert proc.returncode == 130 and err.replace("\r", "\n").strip().splitlines()[-1] == INTERRUPTED
        assert "Traceback" not in err and "leaked" not in err, err[-3000:]
    return err


# Ctrl-C: with a third seed queued behind the two in training, which must never start
@pytest.mark.parametrize("kill_after, how, extra", [
    (3, signal.SIGKILL, []), (40, signal.SIGKILL, []),
    (3, signal.SIGINT, ["--set", "seeds=[0,1,2]"])])
def test_sigkill_or_ctrl_c_and_resume_equals_uninterrupted(tmp_path, kill_after, how, extra, uninterrupted):
    reference, killed = uninterrupted, tmp_path / "killed"
    path = killed / "tiny" / "archive.zarr"
    _stage_interrupted(killed, [*LONG, *extra], lambda: _committed(path) >= kill_after, how)
    if extra:
        assert 2 not in ArchiveReader(path).seeds
    archive = ArchiveReader(path)
    status = [archive.seed_status(s)["status"] for s in archive.seeds]
    assert "training" in status, "the run finished before the kill; make it longer"
    # what readers see after the kill: committed epochs only, each one complete
    for seed in archive.seeds:
        for epoch in archive.committed_epochs(seed):
            assert np.isfinite(archive.activations(seed, "dense2", int(epoch))).all()
    run_stage("train", "--config", str(TINY), "--runs", str(killed), *LONG, *extra)
    for seed in (0, 1):
        assert_same_arrays(group_arrays(reference / "tiny" / "archive.zarr", f"seed_{seed}"),
                           group_arrays(path, f"seed_{seed}"))
        assert ArchiveReader(path).seed_status(seed)["status"] == "finished"
    assert verify(path) == []  # every commit's record matches its files after the resume


def test_ctrl_c_on_a_single_seed_run_is_one_line_and_leaves_it_resumable(tmp_path):
    path = tmp_path / "tiny" / "archive.zarr"
    _stage_interrupted(tmp_path, [*LONG, "--set", "seeds=[0]"], lambda: _committed(path, (0,)) >= 3,
                       signal.SIGINT)
    assert ArchiveReader(path).seed_status(0)["status"] == "training"
    assert verify(path) == []
