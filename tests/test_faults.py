"""Faults and bad input: full or read-only storage, invalid values; one line, exit 2, no hang."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from pipeline.archive import ArchiveError, ArchiveReader
from pipeline.record import NonFiniteActivations, Recorder
from pipeline.verify import verify
from tests.helpers import ROOT, TINY, assert_same_arrays, group_arrays, run_stage

ONE_SEED = ["--set", "seeds=[0]", "--set", "train.threads_per_seed=1", "--set", "train.n_epochs=60",
            "--set", "archive.every=1"]


@pytest.mark.parametrize("override, message", [
    ("estimators.binning_10.n_bins=0", "estimators.binning_10.n_bins: must be an integer >= 2, got 0"),
    ("estimators.kde_upper.noise_variance=-1", "estimators.kde_upper.noise_variance: must be a number > 0"),
    ("estimators.renyi.sigma_t='wide'", "estimators.renyi.sigma_t: must be a number > 0 or one of"),
    ("estimators.renyi.alpha=0", "estimators.renyi.alpha: must be a number > 0, got 0"),
    ("train.lr=-1", "train.lr: must be positive, got -1.0"),
    ("model.widths=[4,0]", "model.widths: every width must be at least 1, got [4, 0]"),
    ("name='../elsewhere'", "name: '../elsewhere' is not a valid name; use letters, digits and _ . + -"),
    ("estimators.a/b.method='binning'", "estimators.a/b: 'a/b' is not a valid name"),
    ("name='.hidden'", "name: '.hidden' is not a valid name"),
])
def test_invalid_values_are_refused_at_load(override, message):
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError) as caught:
        load_config(TINY, [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_invalid_value_ends_the_stage_in_one_line_before_anything_is_written(tmp_path):
    proc = run_stage("estimate", "--config", str(TINY), "--runs", str(tmp_path), "--set",
                     "estimators.renyi.alpha=0", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {TINY}: estimators.renyi.alpha: must be a number > 0, got 0"
    assert not any(tmp_path.iterdir())  # nothing was written


def test_a_stage_prints_the_pipelines_warnings_as_one_line_each(capsys):
    import warnings

    from pipeline import cli

    here = str(cli.PACKAGE / "estimate.py")
    cli.show_warning(UserWarning("cells flagged by their estimator:\n  ksg: 2 cells"), UserWarning, here, 490)
    cli.show_warning(FutureWarning("a library changes"), FutureWarning, "/elsewhere/lib.py", 7)
    assert capsys.readouterr().err.splitlines() == [
        "warning: cells flagged by their estimator:", "  ksg: 2 cells",
        "/elsewhere/lib.py:7: FutureWarning: a library changes"]
    assert warnings.showwarning is not cli.show_warning  # set by a stage's `guarded` only


@pytest.mark.parametrize("stage", ["figures", "verify"])
def test_config_or_set_beside_archive_is_refused_not_ignored(tmp_path, stage):
    proc = run_stage(stage, "--archive", str(tmp_path / "a.zarr"), "--set", "train.lr=1", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {stage} --archive reads the archive and its results as stored: "
                                   "--set does not apply there; leave it out")


def test_an_archive_run_takes_one_config_of_estimator_tables(tmp_path):
    proc = run_stage("estimate", "--archive", str(tmp_path / "a.zarr"), "--config", str(TINY), str(TINY),
                     check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: --archive takes one --config of estimator tables, got 2: merge their [estimators.*] "
        "tables into one file")


def test_the_stages_import_only_what_they_use():
    """The train stage starts without xarray or scipy.stats, the estimate stage without
    scipy.stats, the figures stage without torch: seconds of every run (`pipeline.errors` lets
    the CLI name errors without them). The estimate stage's module imports none of them, so that
    it starts its workers' forkserver before its own heavy imports (`pipeline.cluster`)."""
    probe = ("import sys, {}; print(sorted(m for m in ('xarray', 'scipy.stats', 'torch') "
             "if m in sys.modules))")
    modules = {"train": "stages.train", "estimate module": "stages.estimate",
               "estimate at work": "stages.estimate, pipeline.estimate",
               "figures at work": "stages.figures, pipeline.report"}
    loaded = {stage: subprocess.run([sys.executable, "-c", probe.format(imports)], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout.strip()
              for stage, imports in modules.items()}
    assert loaded == {"train": "['torch']", "estimate module": "[]",
                      "estimate at work": "['torch', 'xarray']", "figures at work": "['xarray']"}


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 1.5 MB (root and mount rights needed: skipped otherwise)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN) to fill a disk")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


@pytest.mark.slow
def test_disk_full_during_training_ends_in_one_line_and_resumes(small_disk, tmp_path):
    proc = run_stage("train", "--config", str(TINY), "--runs", str(small_disk), *ONE_SEED, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: writing the archive failed: No space left on device")
    assert "free space" in last and "committed snapshots are kept" in last
    committed = len(ArchiveReader(small_disk / "tiny" / "archive.zarr").committed_epochs(0))
    assert 0 < committed < 61
    remount(small_disk, "size=50m")
    run_stage("train", "--config", str(TINY), "--runs", str(small_disk), *ONE_SEED)
    run_stage("train", "--config", str(TINY), "--runs", str(tmp_path / "ref"), *ONE_SEED)
    assert_same_arrays(group_arrays(tmp_path / "ref" / "tiny" / "archive.zarr", "seed_0"),
                       group_arrays(small_disk / "tiny" / "archive.zarr", "seed_0"))


@pytest.mark.slow
def test_read_only_storage_ends_in_one_line(small_disk):
    remount(small_disk, "ro")
    proc = run_stage("train", "--config", str(TINY), "--runs", str(small_disk), *ONE_SEED, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Read-only file system" in proc.stderr and "make the folder writable" in proc.stderr


@pytest.mark.slow
def test_disk_full_during_estimate_ends_in_one_line(small_disk, tmp_path, tiny_trained):
    tiny_trained(tmp_path, "--set", "seeds=[0]")
    shutil.copytree(tmp_path / "tiny", small_disk / "tiny")
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(free - 60_000, 0))  # leaves room for the store's template only
    proc = run_stage("estimate", "--config", str(TINY), "--runs", str(small_disk), "--set", "seeds=[0]",
                     "--scheduler", "synchronous", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write") and "No space left on device" in last
    filler.unlink()
    run_stage("estimate", "--config", str(TINY), "--runs", str(small_disk), "--set", "seeds=[0]",
              "--scheduler", "synchronous")


# ---------------------------------------------------------------- integrity of stored data
@pytest.fixture(scope="module")
def estimated(tmp_path_factory, tiny_trained):
    runs = tiny_trained(tmp_path_factory.mktemp("runs"), "--set", "seeds=[0]")
    run_stage("estimate", "--config", str(TINY), "--runs", str(runs), "--set", "seeds=[0]",
              "--scheduler", "synchronous")
    return runs


@pytest.fixture
def run(estimated, tmp_path):
    shutil.copytree(estimated, tmp_path / "runs")
    return tmp_path / "runs"


def stage(name, runs, *args, check=True):
    return run_stage(name, "--config", str(TINY), "--runs", str(runs), "--set", "seeds=[0]", *args,
                     check=check)


@pytest.mark.slow
def test_a_deleted_activation_chunk_is_an_error_naming_it(run):
    chunk = run / "tiny" / "archive.zarr" / "seed_0" / "activations" / "dense2" / "c" / "2" / "0" / "0"
    chunk.unlink()
    proc = stage("verify", run, check=False)
    assert proc.returncode == 2 and "1 problem(s)" in proc.stdout
    assert "chunk seed_0/activations/dense2/c/2/0/0 (snapshot 2 of seed 0) is missing" in proc.stderr
    assert "verify tiny: 100%" in proc.stderr  # the bar of the bytes read, the missing file's included
    shutil.rmtree(run / "tiny" / "estimates.zarr")
    proc = stage("estimate", run, "--scheduler", "synchronous", check=False)
    assert proc.returncode == 2 and "seed_0/activations/dense2/c/2/0/0" in proc.stderr
    assert "retrain that seed" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_results_cell_whose_data_is_gone_is_not_done(run):
    store = run / "tiny" / "estimates.zarr"
    before = xr.open_zarr(store).load()
    (store / "I_XT" / "c" / "0" / "0" / "1" / "0" / "0").unlink()  # binning_10, seed 0, split test
    proc = stage("verify", run, check=False)
    assert proc.returncode == 2
    assert "cells of estimator binning_10, seed 0, split test are marked done but" in proc.stderr
    proc = stage("estimate", run, "--scheduler", "synchronous")
    assert "results of binning_10, seed 0, split test are marked done but their files are gone" in proc.stdout
    assert "3 tasks (12 cells)" in proc.stdout  # that block's three layers, nothing else
    after = xr.open_zarr(store).load()
    np.testing.assert_array_equal(after.I_XT.values, before.I_XT.values)
    proc = stage("verify", run)
    assert proc.returncode == 0 and "0 problem(s)" in proc.stdout
    assert "seed 0: 4 snapshots, status finished; trained in 1 session(s): torch" in proc.stdout


def test_results_given_a_folder_of_other_files_or_an_archive_leave_it_as_it_is(tmp_path):
    """`--results mine/` where mine/ held other files: the estimate wrote its store aside, renamed
    the folder away and deleted it with everything in it; an archive given as the store was read
    as one and failed with an AttributeError."""
    from pipeline.estimate import estimate_archive
    from pipeline.results import ResultsError

    archive, other = tmp_path / "a.zarr", tmp_path / "b.zarr"
    for path in (archive, other):
        with Recorder(path, torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()), ["1"],
                      torch.randn(40, 3), torch.arange(40) % 2) as rec:
            rec.snapshot(0)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("a researcher's notes")
    entries = {"binning": {"method": "binning"}}
    with pytest.raises(ResultsError, match="mine exists and is not a results store: give --results a new "
                                           "path .* its files are left as they are"):
        estimate_archive(archive, scheduler="synchronous", estimators=entries, results=folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    before = group_arrays(other, "seed_0")
    with pytest.raises(ResultsError, match="b.zarr is an archive: give --results a new path"):
        estimate_archive(archive, scheduler="synchronous", estimators=entries, results=other)
    assert_same_arrays(before, group_arrays(other, "seed_0"))
    assert verify(other) == []
    (tmp_path / "empty").mkdir()  # an empty folder is a new store
    assert estimate_archive(archive, scheduler="synchronous", estimators=entries,
                            results=tmp_path / "empty") == 0
    assert verify(tmp_path / "empty") == []


def test_a_results_store_or_another_zarr_group_given_as_an_archive_is_named_in_one_line(tmp_path):
    """A results store shares the archive's schema major version: it was read as an archive and
    failed with KeyError 'name', reported as an infoplane bug."""
    store = zarr.open_group(str(tmp_path / "a.estimates.zarr"), mode="w")
    store.attrs.update({"schema_version": "1.5", "archive_recording": "0" * 32,
                        "archive_path": "/runs/a.zarr"})
    with pytest.raises(ArchiveError, match=r"a.estimates.zarr is a results store, not an archive: give the "
                                           r"archive it was computed from \(/runs/a.zarr\) as --archive"):
        ArchiveReader(tmp_path / "a.estimates.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["schema_version"] = "1.2"
    with pytest.raises(ArchiveError, match="other.zarr is not an infoplane archive \\(its root attributes "
                                           "lack name, layers, output_layer, splits, parts\\)"):
        ArchiveReader(tmp_path / "other.zarr")


def test_a_foreign_store_is_named_by_the_archive_it_was_written_for(tmp_path):
    from pipeline.results import foreign_store

    archive, store = tmp_path / "a.zarr", tmp_path / "estimates.zarr"
    same = foreign_store(store, {"archive_path": str(archive.resolve())}, archive, "run it again")
    assert str(same) == (f"{store} holds the results of an earlier recording at this path (retrained or "
                         f"recorded again), not of {archive}: move it away and run it again, or give "
                         "this archive's results their own store (--results PATH)")
    other = foreign_store(store, {"archive_path": "/elsewhere/b.zarr"}, archive, "run it again")
    assert f"holds the results of the archive /elsewhere/b.zarr, not of {archive}: move" in str(other)


@pytest.mark.slow
def test_figures_refuse_a_foreign_or_corrupt_results_store_and_keep_the_last_report(run, tmp_path):
    figures = tmp_path / "figures"
    (figures / "tiny").mkdir(parents=True)  # the last report: no file of it may be replaced
    for name in ("index.html", "plane_binning_10_test.png", "training.png"):
        (figures / "tiny" / name).write_text(f"the last report's {name}")
    before = {f.name: f.read_bytes() for f in (figures / "tiny").iterdir()}
    other = tmp_path / "other"
    stage("train", other, "--set", "train.lr=0.02")
    shutil.copytree(run / "tiny" / "estimates.zarr", other / "tiny" / "estimates.zarr")
    proc = stage("figures", other, "--figures", str(figures), check=False)
    assert proc.returncode == 2  # the store names the archive it was written for (the run's original)
    assert re.search(rf"holds the results of the archive /\S+/tiny/archive.zarr, not of "
                     rf"{re.escape(str(other / 'tiny' / 'archive.zarr'))}: move it away", proc.stderr)
    assert {f.name: f.read_bytes() for f in (figures / "tiny").iterdir()} == before
    chunk = next(f for f in (run / "tiny" / "estimates.zarr" / "I_XT" / "c").rglob("*") if f.is_file())
    chunk.write_bytes(chunk.read_bytes()[:5])  # a half-written chunk
    proc = stage("figures", run, "--figures", str(figures), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "estimates.zarr cannot be read" in proc.stderr and "run `make estimate` again" in proc.stderr
    assert {f.name: f.read_bytes() for f in (figures / "tiny").iterdir()} == before


# ---------------------------------------------------------------- numerical health
def test_activations_beyond_float16_stop_or_warn(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.fill_(1e5)  # outputs near 1e5: float16 holds at most 65504
    x = torch.ones(8, 3)
    with pytest.raises(NonFiniteActivations, match="epoch 4: layer 0: 16 beyond float16's range"):
        with Recorder(tmp_path / "stop" / "archive.zarr", model, ["0"], x,
                      activation_dtype="float16") as rec:
            rec.snapshot(4)
    assert ArchiveReader(tmp_path / "stop" / "archive.zarr").committed_epochs(0).tolist() == []
    with pytest.warns(UserWarning, match="non-finite activations stored at epoch 0") as caught:
        with Recorder(tmp_path / "warn" / "archive.zarr", model, ["0"], x, activation_dtype="float16",
                      nonfinite="warn") as rec:
            rec.snapshot(0)
            rec.snapshot(1)
    assert len([w for w in caught if "non-finite" in str(w.message)]) == 1  # once
    assert np.isinf(ArchiveReader(tmp_path / "warn" / "archive.zarr").activations(0, "0", 1)).all()


@pytest.mark.slow
def test_optimiser_overflow_is_a_diverged_seed(tmp_path):
    proc = run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), "--set", "seeds=[0]",
                     "--set", "train.lr=1e38", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "seed 0 diverged: the optimiser overflowed float32" in proc.stdout
    assert ArchiveReader(tmp_path / "tiny" / "archive.zarr").seed_status(0)["status"] == "diverged"


# ---------------------------------------------------------------- concurrency and litter
@pytest.mark.slow
def test_a_second_train_is_refused_and_litter_is_cleaned(tmp_path):
    from pipeline.writer import lock_file

    lock = lock_file(tmp_path / "tiny", "train", wait=True, busy="")
    proc = run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), check=False)
    os.close(lock)
    assert proc.returncode == 2 and "another `make train` is running on" in proc.stderr
    run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), "--set", "seeds=[0]")
    archive = tmp_path / "tiny" / "archive.zarr"
    partial = archive / "seed_0" / "activations" / "dense1" / "c" / "0" / "0" / "0.1a2b3c.partial"
    partial.write_bytes(b"half a chunk")
    stale = tmp_path / "tiny" / "checkpoints" / "seed_0"
    stale.mkdir(parents=True)
    (stale / "snapshot_3.pt").write_bytes(b"old")
    proc = run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), "--set", "seeds=[0]")
    assert f"removed {partial}" in proc.stdout and not partial.exists() and not stale.exists()
    assert verify(archive) == []


@pytest.mark.slow
def test_killing_the_top_train_process_stops_its_workers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", "--config", str(TINY), "--runs",
                             str(tmp_path), "--set", "train.n_epochs=3000", "--set", "archive.every=50",
                             "--set", "train.parallel_seeds=2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(_children(proc.pid)) < 2:
        time.sleep(0.5)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the seed workers never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in workers)


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    try:
        with open(path) as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return False


def test_an_interrupted_store_swap_is_finished_and_a_store_moved_away_by_hand_stays_away(tmp_path):
    """The swap's own names are cleared; `estimates.zarr.old`, what a researcher told to move a
    store away names it, was renamed back over their move (or deleted beside a new store)."""
    from pipeline.results import SWAP_NEW, SWAP_OLD, recover

    store = tmp_path / "estimates.zarr"
    store.mkdir()
    (tmp_path / f"estimates.zarr{SWAP_OLD}").mkdir()  # the swap completed, the old store's deletion did not
    (tmp_path / f"estimates.zarr{SWAP_NEW}").mkdir()
    recover(store)
    assert store.exists() and not (tmp_path / f"estimates.zarr{SWAP_OLD}").exists()
    assert not (tmp_path / f"estimates.zarr{SWAP_NEW}").exists()
    store.rename(tmp_path / f"estimates.zarr{SWAP_OLD}")  # killed between the swap's two renames
    recover(store)
    assert store.exists()
    store.rename(tmp_path / "estimates.zarr.old")  # moved away by hand
    recover(store)
    assert not store.exists() and (tmp_path / "estimates.zarr.old").exists()
    store.mkdir()
    recover(store)
    assert (tmp_path / "estimates.zarr.old").exists()


def test_the_store_keeps_text_as_zarr_strings_and_reads_the_fixed_width_text_of_older_ones(tmp_path):
    from pipeline.results import open_results, template, write_store

    ds = template({"binning_30": {"method": "binning", "n_bins": 30}, "ksg": {"method": "ksg"}}, [0],
                  ["all", "test"], np.arange(3), ["dense1", "softmax"], [10, 2], {"config_name": "x"},
                  resolved={"binning_30": {"n_bins": 30}, "ksg": {"k": 5}})
    text = ("estimator", "split", "layer", "method", "parameters", "resolved_parameters")
    write_store(ds, tmp_path / "new.zarr")
    for name in text:  # zarr v3's variable-length UTF-8, which other Zarr libraries read too
        assert json.loads((tmp_path / "new.zarr" / name / "zarr.json").read_text())["data_type"] == "string"
    assert open_results(str(tmp_path / "new.zarr")).identical(ds)  # fixed-width str again; a str path too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated as written: the docs' xr.open_zarr reads it quietly
        assert list(xr.open_zarr(tmp_path / "new.zarr").layer.values) == ["dense1", "softmax"]
    older = ds.assign_attrs(schema_version="1.4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr-python's warning about the type written here
        older.to_zarr(tmp_path / "old.zarr", zarr_format=3, consolidated=False)
    assert json.loads((tmp_path / "old.zarr" / "layer" / "zarr.json").read_text())["data_type"]["name"] == \
        "fixed_length_utf32"
    assert open_results(tmp_path / "old.zarr").identical(older)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without a GPU")
def test_an_entry_asking_for_cuda_on_a_machine_without_one_is_one_line(run):
    before = sorted(p.name for p in (run / "tiny" / "estimates.zarr").iterdir())
    proc = stage("estimate", run, "--set", "estimators.kde_upper.device='cuda'", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: estimators.kde_upper.device: 'cuda', but this machine has no CUDA "
                                   'device; set device = "cpu", or run on a Dask cluster whose workers '
                                   "have GPUs (--scheduler ADDRESS)")
    assert sorted(p.name for p in (run / "tiny" / "estimates.zarr").iterdir()) == before


# ---------------------------------------------------------------- cluster connections
@pytest.mark.slow
def test_a_scheduler_that_cannot_be_reached_is_one_line(run):
    """A scheduler file that does not exist, an address without a port or with a host nobody
    knows: one line before any work (no connect timeout waited out), nothing written."""
    from pipeline.config import ConfigError
    from pipeline.estimate import estimate_archive

    shutil.rmtree(run / "tiny" / "estimates.zarr")
    proc = stage("estimate", run, "--scheduler", "notanaddress", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --scheduler notanaddress: not a scheduler address (missing port number in address "
        "'notanaddress'); give it as tcp://host:8786")
    for options, message in [
        ({"scheduler_file": "/nonexistent/scheduler.json"}, "--scheduler-file /nonexistent/scheduler.json "
         "does not exist"),
        ({"scheduler": "tcp://no-such-host.invalid:8786"}, "--scheduler tcp://no-such-host.invalid:8786: the "
         "host 'no-such-host.invalid' is unknown here"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            estimate_archive(run / "tiny" / "archive.zarr", **options)
    assert not (run / "tiny" / "estimates.zarr").exists()
    lock = run / "tiny" / "estimates.lock"
    assert stage("estimate", run, "--scheduler", "synchronous").returncode == 0 and lock.exists()


def test_an_address_nobody_answers_is_given_up_after_the_connect_timeout(monkeypatch):
    from distributed import Client

    from pipeline import cluster
    from pipeline.config import ConfigError

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    started = time.time()
    with pytest.raises(ConfigError, match=r"cannot reach the Dask scheduler tcp://127\.0\.0\.1:9 within 1 s"):
        cluster._connect(Client, "tcp://127.0.0.1:9", None)
    assert time.time() - started < 30  # a bounded wait, not a hang


def test_a_commit_point_is_one_write_of_the_seed_metadata(tmp_path, monkeypatch):
    """A kill between several writes of the seed's zarr.json would leave a commit half raised
    (committed_snapshots ahead of history_through): the commit must be a single write."""
    import zarr

    from pipeline.archive import SeedWriter

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    path = tmp_path / "run" / "archive.zarr"
    with Recorder(path, model, ["0"], torch.ones(4, 3)) as rec:
        rec.snapshot(0)
    writer = SeedWriter(path, 0)
    writes = []
    original = zarr.storage.LocalStore.set

    async def counting_set(self, key, value):
        writes.append(key)
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", counting_set)
    writer.commit(1, 5, "finished", "", [0], files={})
    assert writes.count("seed_0/zarr.json") == 1
    attrs = ArchiveReader(path).seed_status(0)
    assert attrs["history_through"] == 5 and attrs["status"] == "finished"


# ---------------------------------------------------------------- more bad input
@pytest.mark.slow
@pytest.mark.parametrize("node", ["seed_0", "seed_0/activations/dense1"])
def test_an_unreadable_node_metadata_is_one_line_naming_it(run, node):
    (run / "tiny" / "archive.zarr" / node / "zarr.json").write_text("{garbage")
    shutil.rmtree(run / "tiny" / "estimates.zarr")
    proc = stage("estimate", run, "--scheduler", "synchronous", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"({node}/zarr.json) cannot be read" in proc.stderr and "retrain that seed" in proc.stderr


@pytest.mark.slow
def test_an_exploding_loss_is_reported(tmp_path):
    proc = run_stage("train", "--config", str(TINY), "--runs", str(tmp_path), "--set", "seeds=[0]",
                     "--set", "train.lr=1e30")
    assert "warning: the training loss exploded to" in proc.stdout and "lower train.lr" in proc.stdout
    assert "exploded" in ArchiveReader(tmp_path / "tiny" / "archive.zarr").seed_status(0)["message"]


@pytest.mark.slow
def test_an_unexpected_error_keeps_its_traceback_and_says_where_to_report_it(tmp_path):
    config = tmp_path / "bug.toml"
    config.write_text('name = "bug"\n[data]\nfactory = "tests.own_models:broken"\n')
    proc = run_stage("train", "--config", str(config), "--runs", str(tmp_path), check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "RuntimeError: a bug in the researcher's loader" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: an unexpected failure")
