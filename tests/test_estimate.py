"""The estimate stage on a tiny archive: Dask clusters, incremental work, kills, bad input."""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.config import ConfigError
from pipeline.estimate import Selection
from pipeline.estimate import main as estimate
from pipeline.provenance import git_revision
from pipeline.results import ResultsError
from tests.helpers import INTERRUPTED, ROOT, TINY, run_stage, start_stage, tiny_config

pytestmark = pytest.mark.slow
ESTIMATORS = {
    "binning_10": {"method": "binning", "n_bins": 10},
    "renyi": {"method": "renyi", "sigma_x": 1.0, "sigma_t": "alignment", "n_batches": 2,
              "n_candidates": 40},
}


def config(**estimators):
    cfg = tiny_config(**{"estimate.splits": ["all", "test"], "estimate.fisher_probe_size": 40})
    data = cfg.to_dict()
    data["estimators"] = estimators or ESTIMATORS
    from pipeline.config import config_from_dict
    return config_from_dict(data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_trained):
    return tiny_trained(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def runs(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "runs")
    return tmp_path / "runs"


def load(runs):
    return xr.open_zarr(runs / "tiny" / "estimates.zarr", consolidated=False).load()


@pytest.fixture
def register():
    """register(name, fn, **declarations): an estimator registered for this test only."""
    from pipeline.estimators import ESTIMATORS, register_estimator

    names = []

    def add(name, fn, **declarations):
        names.append(name)
        return register_estimator(name, **declarations)(fn)
    yield add
    for name in names:
        ESTIMATORS.pop(name, None)


def test_local_cluster_equals_synchronous(runs, tmp_path):
    shutil.copytree(runs, tmp_path / "sync")
    assert estimate(config(), runs) == 0
    assert estimate(config(), tmp_path / "sync", scheduler="synchronous") == 0
    a, b = load(runs), load(tmp_path / "sync")
    assert bool(a.done.all()) and bool(a.fisher_done.all())
    for name in ("I_XT", "I_TY", "sigma_t", "fisher_trace"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    # coordinates carry real epochs, layer names and widths; parameters travel as JSON
    assert a.epoch.values.tolist() == [0, 2, 4, 6]
    assert a.layer.values.tolist() == ["dense1", "dense2", "softmax"]
    assert a.layer_width.values.tolist() == [6, 4, 2] and a.I_XT.attrs["units"] == "bits"
    assert '"n_bins": 10' in str(a.parameters.sel(estimator="binning_10").values)
    # binning of a 6-unit tanh layer on 4096 distinct inputs, and the width chain was smoothed
    assert 0 < float(a.I_XT.sel(estimator="binning_10", split="all", layer="dense1").min()) <= 12
    sigma = a.sigma_t.sel(estimator="renyi", seed=0, split="all", layer="dense1").values
    assert np.isfinite(sigma).all() and len(set(sigma.round(12))) > 1


def _worker_state() -> tuple[bool, str | None, bool, int]:
    import torch

    return ("pipeline.tasks" in sys.modules, os.environ.get("OMP_NUM_THREADS"),
            "MALLOC_TRIM_THRESHOLD_" in os.environ, torch.get_num_threads())


def test_local_cluster_workers_start_with_the_task_code_and_one_thread():
    import multiprocessing

    from pipeline.cluster import make_client

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("this platform has no forkserver: LocalCluster workers are spawned")
    client, cluster = make_client(None, None, 2)
    try:
        states = client.run(_worker_state)
    finally:
        client.close()
        cluster.close()
    # imported before any task ran (a spawned worker imports it at its first task), with the
    # workers' environment although the server, not the nanny, started them
    assert len(states) == 2 and set(states.values()) == {(True, "1", False, 1)}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a worker whose Python cannot import `pipeline` (the project is not installed where it runs)
WORKER_WITHOUT_INFOPLANE = ("import sys; sys.modules['pipeline'] = None; "
                            "from distributed.cli.dask_worker import main; main()")


@contextlib.contextmanager
def external_cluster(workers: int = 2, without_infoplane: int = 0):
    """The address of a `dask scheduler` with `workers` plain `dask worker`s and
    `without_infoplane` more that cannot import the project, each its own process."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "start_new_session": True}
    worker, args = [f"{bin_dir}/dask", "worker"], [address, "--nthreads", "1", "--no-dashboard"]
    without = [sys.executable, "-c", WORKER_WITHOUT_INFOPLANE, *args, "--no-nanny"]
    procs = [subprocess.Popen([f"{bin_dir}/dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], **quiet)]
    try:
        time.sleep(3)
        procs += [subprocess.Popen([*worker, *args], **quiet) for _ in range(workers)]
        procs += [subprocess.Popen(without, **quiet, cwd=bin_dir) for _ in range(without_infoplane)]
        time.sleep(4)
        yield address
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_dashboard_line_gives_a_link_only_where_a_dashboard_is_served():
    import http.server
    import threading

    from pipeline.cluster import dashboard_line

    pages = {"/status": b"<html>task stream</html>", "/bare/status": b"<p>Dask needs bokeh>=3.1.0 ...</p>"}

    class Pages(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = pages.get(self.path)
            self.send_response(200 if body else 403 if self.path.startswith("/login") else 404)
            self.end_headers()
            self.wfile.write(body or b"no page")

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert dashboard_line(f"{base}/status") == f"dask dashboard: {base}/status"
        assert "needs bokeh>=3.1" in dashboard_line(f"{base}/bare/status")
        gone = dashboard_line(f"{base}/gone/status")
        assert gone.startswith(f"dask dashboard: none at {base}/gone/status (404 Not Found")
        # behind a login a browser may still open it: the link, with why it was not checked
        assert dashboard_line(f"{base}/login/status") == (f"dask dashboard: {base}/login/status "
                                                          "(not checked: HTTP 403 Forbidden)")
        server.shutdown()
    closed = dashboard_line(f"{base}/status")  # the server is gone
    assert closed == f"dask dashboard: none at {base}/status (nothing answers there)"
    assert dashboard_line(None) == "dask dashboard: none (the scheduler serves no web pages)"


def test_external_scheduler_and_workers(runs, tmp_path, capsys):
    with external_cluster() as address:
        assert estimate(config(), runs, scheduler=address) == 0
    # `dask scheduler --no-dashboard` still answers on its HTTP port, with 404 at the link
    printed = capsys.readouterr().out
    assert re.search(r"dask dashboard: none at http://127\.0\.0\.1:\d+/status \(404 Not Found;", printed)
    shutil.copytree(runs.parent / "runs", tmp_path / "sync", dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "sync" / "tiny" / "estimates.zarr")
    estimate(config(), tmp_path / "sync", scheduler="synchronous")
    np.testing.assert_array_equal(load(runs).I_XT.values, load(tmp_path / "sync").I_XT.values)


def test_a_worker_without_infoplane_is_one_clear_error_not_a_hang(runs):
    # sent its first task, such a worker fails to deserialize it in its connection and leaves
    # the cluster: no task error reaches the stage, which would wait for ever for another worker
    with external_cluster(workers=0, without_infoplane=1) as address:
        proc = run_stage("estimate", "--config", str(TINY), "--runs", str(runs), "--scheduler", address,
                         check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: the Dask worker tcp://\S+ cannot import infoplane's task code "
                        r"\(ModuleNotFoundError: .*pipeline.*\): install infoplane in the workers' "
                        r"environment, .*", last), last
    assert not load(runs).done.any()


def test_workers_that_run_other_code_are_named_in_a_warning(monkeypatch):
    from distributed import Client, LocalCluster

    from pipeline import cluster as cluster_module

    here = cluster_module.code_here()
    other = {**here, "git_revision": "0" * 40, "numpy": "0.1"}
    monkeypatch.setattr(cluster_module, "code_here", lambda: other)
    # a worker process of its own: it answers with the code it imports, not with this patch
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as local, \
            Client(local) as client:
        lines = cluster_module.check_workers(client, {}, "the local cluster")
    assert len(lines) == 1
    assert f"git_revision {here['git_revision']} (here {'0' * 40})" in lines[0]
    assert f"numpy {here['numpy']} (here 0.1)" in lines[0] and "torch" not in lines[0]


def test_adding_an_entry_computes_only_its_cells_and_rerun_does_nothing(runs, capsys):
    estimate(config(binning_10=ESTIMATORS["binning_10"]), runs, scheduler="synchronous")
    before = load(runs)
    capsys.readouterr()
    estimate(config(), runs, scheduler="synchronous")
    out = capsys.readouterr().out
    assert "estimating tiny: 12 tasks (48 cells) + 0 Fisher tasks" in out  # renyi only: 2x2x3 chains
    after = load(runs)
    np.testing.assert_array_equal(before.I_XT.sel(estimator="binning_10").values,
                                  after.I_XT.sel(estimator="binning_10").values)
    assert bool(after.done.all())
    estimate(config(), runs, scheduler="synchronous")
    assert "nothing to do" in capsys.readouterr().out
    # a changed parameter invalidates exactly that entry
    changed = dict(ESTIMATORS, binning_10={"method": "binning", "n_bins": 7})
    estimate(config(**changed), runs, scheduler="synchronous")
    assert "estimating tiny: 12 tasks (48 cells) + 0 Fisher tasks" in capsys.readouterr().out
    assert "history" in after.attrs and after.attrs["archive_training_hash"]


def test_an_entry_left_out_of_a_later_config_keeps_its_cells(runs, capsys):
    estimate(config(), runs, scheduler="synchronous")
    before = load(runs)
    capsys.readouterr()
    only_binning_3 = {"binning_3": {"method": "binning", "n_bins": 3}}
    estimate(config(**only_binning_3), runs, scheduler="synchronous")
    out = capsys.readouterr().out
    assert "keeping the stored cells of binning_10, renyi" in out
    assert "estimating tiny: 12 tasks (48 cells)" in out  # binning_3 alone
    after = load(runs)
    assert list(after.estimator.values) == ["binning_3", "binning_10", "renyi"] and bool(after.done.all())
    kept = ["binning_10", "renyi"]
    for name in ("I_XT", "I_TY", "sigma_t"):  # renyi's own output too
        np.testing.assert_array_equal(after[name].sel(estimator=kept), before[name].sel(estimator=kept))
    assert after.resolved_parameters.sel(estimator="renyi").item() == before.resolved_parameters.sel(
        estimator="renyi").item()
    estimate(config(), runs, scheduler="synchronous")  # the first config again: nothing to compute
    assert "nothing to do" in capsys.readouterr().out


def test_cells_whose_values_are_all_nan_stay_done_across_runs(runs, capsys, register):
    """An entry whose I_TY is NaN in every cell (as for an archive without labels) has its chunks
    on disk, written by the stage and copied by a store rewrite: later runs neither take them for
    lost nor compute them again."""
    register("test_no_ty", lambda x, t, y: {"I_XT": 1.0, "I_TY": float("nan")})
    no_ty, other = {"no_ty": {"method": "test_no_ty"}}, {"binning_3": {"method": "binning", "n_bins": 3}}
    with pytest.warns(UserWarning, match="NaN stored in 48 cell"):
        assert estimate(config(**no_ty), runs, scheduler="synchronous") == 0
    for entries in (other, no_ty):  # the first rewrites the store, adding binning_3
        assert estimate(config(**entries), runs, scheduler="synchronous") == 0
    out = capsys.readouterr().out
    assert "files are gone" not in out and out.count("nothing to do") == 1
    stored = load(runs)
    assert bool(stored.done.sel(estimator="no_ty").all())
    # a NaN the estimator gives no reason for is still listed, with where it came from
    assert re.search(r"no_ty seed 0 all epoch \d+ \S+: the estimator returned I_TY = nan",
                     stored.attrs["warnings"])


@pytest.mark.parametrize("returned, message", [
    ({"I_XT": 1.0}, "returned no I_TY, calls (it returned I_XT)"),
    ({"I_XT": 1.0, "I_TY": 0.5}, "returned no calls (it returned I_XT, I_TY)"),  # a declared output
    (1.0, "returned float, not a dict"),
    ({"I_XT": [1.0, 2.0], "I_TY": "0.1", "calls": np.float32(1)},
     "returned I_XT = [1.0, 2.0], I_TY = '0.1': return each as one number"),
])
def test_an_estimator_returning_less_than_it_declares_fails_and_leaves_its_cells_to_compute(
        runs, register, returned, message, capsys):
    register("test_short", lambda x, t, y: returned, outputs={"calls": ("calls", "1")})
    assert estimate(config(short={"method": "test_short"}), runs, scheduler="synchronous") == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"error: 12 task\(s\) failed, the first at short seed 0 (all|test) epoch 0 \S+: "
                        rf"estimator 'test_short' {re.escape(message)}.*; fix that function and run the same "
                        r"command again \(the cells already stored are kept\)", last), last
    assert not load(runs).done.sel(estimator="short").any()  # mended, a rerun computes them


FAILING = """
from pipeline.estimators import register_estimator

@register_estimator("failing")
def failing_plane(x, t, y):
    with open(CALLS, "a") as calls:  # the workers' environment is not this test's
        calls.write("called\\n")
    if t.shape[1] == 4:
        return {"I_XT": t.no_such_attribute, "I_TY": 0.0}
    return {"I_XT": 1.0, "I_TY": 0.5}
"""


def test_an_estimator_that_raises_is_reported_once_with_its_line_and_not_retried(runs, tmp_path, monkeypatch,
                                                                                   capsys):
    calls = tmp_path / "calls.txt"
    (tmp_path / "failing_mi.py").write_text(FAILING.replace("CALLS", repr(str(calls))))
    monkeypatch.syspath_prepend(str(tmp_path))
    import failing_mi  # noqa: F401 - registers "failing"
    cfg = config(failing={"method": "failing"})
    assert estimate(cfg, runs) == 1  # the default local cluster, which retries a task that raises
    out = capsys.readouterr().out.strip().splitlines()
    # dense1 and softmax: 2 seeds x 2 splits x 4 epochs; dense2 (4 units) fails at its first call,
    # which ends its unit (a seed's two splits): once a seed, where a retry would call it again
    assert len(calls.read_text().splitlines()) == 2 * 2 * 2 * 4 + 2, "a task was retried"
    assert out[-1].startswith("error: 4 task(s) failed, the first at failing seed ")
    assert out[-1].endswith("raised AttributeError: 'numpy.ndarray' object has no attribute "
                            f"'no_such_attribute' at {tmp_path / 'failing_mi.py'}:9 in failing_plane; "
                            "fix that function and "
                            "run the same command again (the cells already stored are kept)")
    assert sum(line.startswith("Traceback (most recent call last)") for line in out) == 1
    stored = load(runs).done.sel(estimator="failing")
    assert bool(stored.sel(layer=["dense1", "softmax"]).all()) and not stored.sel(layer="dense2").any()


LONELY = """
from pipeline.estimators import register_estimator

@register_estimator("lonely")
def lonely_plane(x, t, y):
    return {"I_XT": 0.0, "I_TY": 0.0}
"""


def test_an_estimator_the_workers_cannot_import_is_one_clear_error_not_a_hang(runs, tmp_path, monkeypatch):
    (tmp_path / "lonely_mi.py").write_text(LONELY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import lonely_mi  # noqa: F401 - registers "lonely" here, in the client only
    monkeypatch.undo()  # the workers start without the folder on their path
    with pytest.raises(ConfigError, match="method 'lonely' .*No module named 'lonely_mi'"):
        estimate(config(lonely={"method": "lonely"}), runs)  # the default local cluster
    assert not load(runs).done.sel(estimator="lonely").any()


def test_kill_and_resume_equals_uninterrupted(runs, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(runs, reference)
    estimate(config(), reference, scheduler="synchronous")
    # the tiny config's own entries differ from ESTIMATORS; build a matching TOML instead
    toml = tmp_path / "tiny.toml"
    text = TINY.read_text().split("[estimators.binning_10]")[0]
    text += ('[estimators.binning_10]\nmethod = "binning"\nn_bins = 10\n\n[estimators.renyi]\n'
             'method = "renyi"\nsigma_x = 1.0\nsigma_t = "alignment"\nn_batches = 2\nn_candidates = 40\n')
    text = text.replace("fisher_probe_size = 60", "fisher_probe_size = 40")
    toml.write_text(text)
    store = runs / "tiny" / "estimates.zarr"
    proc = start_stage("estimate", "--config", str(toml), "--runs", str(runs), "--scheduler", "synchronous",
                       stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # killed as soon as the first chunk of the done mask is written (8 chunks, one per entry,
    # seed and split): a directory listing, so the poll stays fast on a busy machine
    while time.monotonic() < deadline and proc.poll() is None and not _files(store / "done" / "c"):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = load(runs)
    assert not bool(partial.done.all()), "finished before the kill"
    run_stage("estimate", "--config", str(toml), "--runs", str(runs), "--scheduler", "synchronous")
    final, ref = load(runs), load(reference)
    for name in ("I_XT", "I_TY", "sigma_t", "done", "fisher_trace"):
        np.testing.assert_array_equal(final[name].values, ref[name].values, err_msg=name)


def test_ctrl_c_ends_a_local_cluster_run_in_one_line(runs):
    # slow Renyi cells (about a minute of tasks), so that tasks are running on both workers when
    # the interrupt comes, however late a loaded machine lets this test read the dashboard line
    proc = start_stage("estimate", "--config", str(TINY), "--runs", str(runs), "--set",
                       "estimators.renyi.n_batches=2000", "--set", "estimate.n_workers=2",
                       stdout=subprocess.PIPE)
    for line in proc.stdout:  # the cluster is up once its dashboard is printed
        if line.startswith("dask dashboard"):
            break
    time.sleep(1.0)
    assert proc.poll() is None, "finished before the interrupt"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("estimate tiny")]  # less its progress bar
    assert proc.returncode == 130, err[-3000:]
    assert lines == [INTERRUPTED], err


def _files(folder) -> int:
    """Files below `folder` (0 where it does not exist yet)."""
    return sum(len(names) for _, _, names in os.walk(folder))


def test_half_written_archive_is_read_to_its_last_commit(runs):
    import zarr
    root = zarr.open_group(str(runs / "tiny" / "archive.zarr"), mode="r+", use_consolidated=False)
    root["seed_1"].attrs.update({"committed_snapshots": 2, "status": "training"})
    estimate(config(binning_10=ESTIMATORS["binning_10"]), runs, scheduler="synchronous")
    ds = load(runs)
    assert bool(ds.done.sel(seed=0).all())
    assert ds.done.sel(seed=1).sum("layer").values[0, 0].tolist() == [3, 3, 0, 0]
    root["seed_1"].attrs.update({"committed_snapshots": 4, "status": "finished"})
    estimate(config(binning_10=ESTIMATORS["binning_10"]), runs, scheduler="synchronous")
    assert bool(load(runs).done.all())


def test_nan_results_are_stored_with_a_warning(runs):
    bad = {"ksg_too_many_neighbours": {"method": "ksg", "k": 100000}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert estimate(config(**bad), runs, scheduler="synchronous") == 0
    ds = load(runs)
    assert bool(ds.done.all()) and bool(np.isnan(ds.I_XT).all())
    [summary] = [str(w.message) for w in caught if "NaN stored" in str(w.message)]  # one, not one a cell
    assert summary.startswith("NaN stored in 48 cell(s)") and "ksg_too_many_neighbours: 48 cell(s)" in summary


def test_concurrent_runs_are_refused(runs):
    from pipeline.writer import lock_file
    lock = lock_file(runs / "tiny", "estimates", wait=True, busy="")
    try:
        with pytest.raises(ResultsError, match="another `make estimate`"):
            estimate(config(), runs, scheduler="synchronous")
    finally:
        os.close(lock)


def test_missing_archive_is_one_clear_error(tmp_path):
    proc = run_stage("estimate", "--config", str(TINY), "--runs", str(tmp_path), check=False)
    assert proc.returncode == 2 and "no archive at" in proc.stderr and "make train" in proc.stderr
    assert "Traceback" not in proc.stderr


def _listing(folder) -> dict[str, float]:
    return {str(path.relative_to(folder)): path.stat().st_mtime for path in folder.rglob("*")}


def test_a_results_store_away_from_the_archive_leaves_its_folder_untouched(runs, tmp_path):
    """A shared or read-only archive: `--results` puts the store (and its lock) elsewhere, and
    the figures and verify stages read it from there."""
    run_dir, store = runs / "tiny", tmp_path / "mine" / "tiny_estimates.zarr"
    before = _listing(run_dir)
    toml = tmp_path / "estimators.toml"
    toml.write_text('[estimators.binning_10]\nmethod = "binning"\nn_bins = 10\n')
    archive = str(run_dir / "archive.zarr")
    run_stage("estimate", "--archive", archive, "--results", str(store), "--config", str(toml),
              "--scheduler", "synchronous")
    assert _listing(run_dir) == before
    assert bool(xr.open_zarr(store).done.all())
    proc = run_stage("figures", "--archive", archive, "--results", str(store), "--figures",
                     str(tmp_path / "figures"), "--formats", "png")
    assert (tmp_path / "figures" / "tiny" / "plane_binning_10_all.png").exists(), proc.stdout
    proc = run_stage("verify", "--archive", archive, "--results", str(store))
    assert f"0 problem(s) in {archive}, {store}" in proc.stdout
    proc = run_stage("estimate", "--config", str(TINY), "--results", str(store), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("add --archive PATH or leave --results out")


def test_netcdf_export(runs):
    estimate(config(binning_10=ESTIMATORS["binning_10"]), runs, scheduler="synchronous", netcdf=True)
    exported = runs / "tiny" / "estimates.nc"
    with xr.open_dataset(exported) as ds:
        assert ds.I_XT.dims == ("estimator", "seed", "split", "epoch", "layer")
        first = ds.load()
    exported.unlink()  # a later run with nothing left to compute still exports the store
    estimate(config(binning_10=ESTIMATORS["binning_10"]), runs, scheduler="synchronous", netcdf=True)
    with xr.open_dataset(exported) as ds:
        xr.testing.assert_identical(ds.load(), first)


def test_figures_from_partial_results(runs, tmp_path):
    from pipeline.report import main as figures

    cfg = config()
    figures(cfg, runs, tmp_path, formats="png")  # no results store yet: a note and the archive's figures
    out = tmp_path / "tiny"
    report = (out / "index.html").read_text()
    assert (out / "training.png").exists() and (out / "gradients.png").exists()
    assert "no results store" in report
    bad = {"binning_10": ESTIMATORS["binning_10"], "broken": {"method": "ksg", "k": 100000}}
    with pytest.warns(UserWarning, match="NaN stored in 48 cell.*\n  broken: 48 cell\\(s\\), e.g. seed 0 all "
                      "epoch 0 dense1: k must be between 1 and n - 1"):
        estimate(config(**bad), runs, scheduler="synchronous")
    figures(config(**bad), runs, tmp_path, formats="png")
    report = (out / "index.html").read_text()
    assert "estimator broken: every value is NaN" in report
    # the DPI holds in every cell of this entry: a sentence in the report instead of a figure
    assert "binning_10 (all): the data-processing inequality holds in every cell" in report
    # the entry's parameters with the defaults its table leaves out (the store's resolved_parameters)
    entries = report.split("<h2 id='entries'>")[1].split("<h2")[0]
    assert "<td>n_bins</td><td>10</td>" in entries and "<td>range</td><td>fixed</td>" in entries
    assert "<td>uncertainty</td><td>none</td>" in entries
    for name in ("plane_binning_10_all", "plane_binning_10_test", "comparison",
                 "mi_vs_epoch_binning_10", "fisher"):
        assert (out / f"{name}.png").stat().st_size > 3000, name
        assert f"src='{name}.png'" in report
    assert not (out / "plane_broken_all.png").exists()
    figures(config(), runs, tmp_path)  # the config's renyi entry has no results yet
    import html
    assert "['renyi'] are in the config but not in the results" in html.unescape(
        (out / "index.html").read_text())


def test_several_archives_in_one_call(trained, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs)
    shutil.copytree(runs / "tiny", runs / "tiny2")
    second = tmp_path / "tiny2.toml"
    second.write_text(TINY.read_text().replace('name = "tiny"', 'name = "tiny2"'))
    # a copy of the archive under another run name: the estimate stage reads each in turn
    proc = run_stage("estimate", "--config", str(TINY), str(second), "--runs", str(runs),
                     "--scheduler", "synchronous", "--set", "estimate.fisher=false",
                     "--set", "estimate.splits=['all']")
    assert proc.stdout.count("estimating tiny") == 2
    assert (runs / "tiny" / "estimates.zarr").exists() and (runs / "tiny2" / "estimates.zarr").exists()


PARTIAL = Selection(only=("binning_10",), seeds=(1,), splits=("test",), every=2)


def test_only_seeds_every_restrict_a_run_and_a_full_run_completes_it(runs, capsys, tmp_path):
    from pipeline.report import main as figures

    estimate(config(), runs, scheduler="synchronous", selection=PARTIAL)
    part = load(runs)
    figures(config(), runs, tmp_path)  # the entry `--only` left out is not yet computed, not NaN
    report = (tmp_path / "tiny" / "index.html").read_text()
    assert "estimator renyi: no cell computed yet" in report and "every value is NaN" not in report
    n_epochs = part.sizes["epoch"]
    rows = [r for r in range(n_epochs) if r % 2 == 0 or r == n_epochs - 1]
    expected = np.zeros(part.done.shape, dtype=bool)
    expected[0, 1, 1, rows, :] = True  # binning_10 (entry 0), seed 1, split test, chosen epochs
    np.testing.assert_array_equal(part.done.values, expected)
    assert not bool(part.fisher_done.any())
    capsys.readouterr()
    estimate(config(), runs, scheduler="synchronous", selection=PARTIAL)
    assert "nothing to do" in capsys.readouterr().out
    root = zarr.open_group(runs / "tiny" / "estimates.zarr", mode="r+")  # as an older install wrote it
    versions = json.loads(root.attrs["versions"])
    root.attrs.update({"versions": json.dumps({**versions, "torch": "0.0.1"}), "git_revision": "0" * 40})
    estimate(config(), runs, scheduler="synchronous")
    full = load(runs)
    assert bool(full.done.all()) and bool(full.fisher_done.all())
    # the root describes the latest run (the store was extended, not rewritten); history keeps both
    assert json.loads(full.attrs["versions"]) == versions and full.attrs["git_revision"] == git_revision()
    changed = f"versions changed since the previous run: torch 0.0.1 -> {versions['torch']}"
    assert full.attrs["history"].splitlines()[-1].endswith(f"(git {git_revision()}; {changed})")
    assert "versions changed" not in full.attrs["history"].splitlines()[0]
    chosen = part.I_XT.isel(estimator=0, seed=1, split=1, epoch=rows)
    np.testing.assert_array_equal(chosen.values,
                                  full.I_XT.isel(estimator=0, seed=1, split=1, epoch=rows).values)


def test_layers_restrict_a_run_by_name_or_pattern(runs):
    selection = Selection(only=("binning_10",), layers=("dense*",))
    estimate(config(), runs, scheduler="synchronous", selection=selection)
    done = load(runs).done.sel(estimator="binning_10")
    assert bool(done.sel(layer=["dense1", "dense2"]).all()) and not bool(done.sel(layer="softmax").any())
    estimate(config(), runs, scheduler="synchronous", selection=Selection(layers=("softmax",)))
    full = load(runs)
    assert bool(full.done.sel(layer="softmax").all()) and not bool(full.done.sel(estimator="renyi",
                                                                                   layer="dense1").any())


def test_only_takes_entry_names_or_patterns(tmp_path):
    """`--only 'binning_*'` selects a sweep's entries; a pattern matching none is refused."""
    from pipeline.config import ConfigError

    selection = Selection(only=("binning_*", "fisher"))
    assert [selection.takes(entry=e) for e in ("binning_n_bins_10", "binning_30", "fisher", "kde_upper")] == \
        [True, True, True, False]
    entries = ["binning_10", "kde_upper"]
    selection.check(entries, [0], ["all"], tmp_path, "tiny")
    with pytest.raises(ConfigError, match=r"--only names unknown estimator entries \['ksg\*'\]"):
        Selection(only=("ksg*", "kde_upper")).check(entries, [0], ["all"], tmp_path, "tiny")


@pytest.mark.parametrize("selection, message", [
    ({"layers": ("conv*", "dense1")}, "--layers ['conv*'] match no layer of"),
    ({"only": ("binning_7",)}, "unknown estimator entries ['binning_7']"),
    ({"seeds": (5,)}, "--seeds [5] are not in"),
    ({"every": 0}, "--every must be a positive"),
    ({"splits": ("validation",)}, "--splits ['validation'] are not among"),
])
def test_bad_selection_is_one_clear_error(runs, selection, message):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        estimate(config(), runs, scheduler="synchronous", selection=Selection(**selection))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (runs / "tiny" / "estimates.zarr").exists()


def test_a_bad_selection_ends_the_stage_in_one_line(runs):
    proc = run_stage("estimate", "--config", str(TINY), "--runs", str(runs), "--scheduler",
                     "synchronous", "--seeds", "5", check=False)
    assert proc.returncode == 2 and "--seeds [5] are not in" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_task_cost_orders_long_chains_first():
    """The priority the stage submits with: cells x the estimator's cost x resamples and baselines."""
    from pipeline.estimate import Task
    from pipeline.estimators import get_estimator

    def task(method, epochs, **options):
        return Task("e", {"method": method, **options}, get_estimator(method), 0, "all", "l", tuple(epochs))

    renyi, binning = task("renyi", range(90)), task("binning", range(90))
    assert renyi.cost == 90 * get_estimator("renyi").cost > binning.cost == 90
    assert task("binning", range(5), uncertainty="bootstrap", n_resamples=10, null=True).cost == 5 * 11 * 2
    assert task("renyi", range(5), uncertainty="batches").cost == 5 * get_estimator("renyi").cost


def test_tasks_of_one_method_run_as_one_unit_per_seed_layer_and_epochs():
    """KDE tasks that differ only in entry, split and KDE settings form one batched unit; other
    seeds, layers or epochs are other units, so are cells with intervals (one by one), and other
    methods' tasks form their own units (binning's entries and splits); a chain runs alone."""
    from pipeline.estimate import Task
    from pipeline.estimators import get_estimator
    from pipeline.tasks import batch_tasks

    def task(entry, method="kde", seed=0, split="all", layer="l", epochs=(0, 1), **table):
        return Task(entry, {"method": method, **table}, get_estimator(method), seed, split, layer, epochs)

    tasks = [task("a", split=split, noise_variance=s2) for split in ("all", "test") for s2 in (0.1, 1e-3)]
    tasks += [task("b", bound="lower"), task("c", seed=1), task("d", layer="m"), task("e", epochs=(1,)),
              task("f", uncertainty="subsample"), task("g", "binning"), task("h", "binning", split="test"),
              task("i", "binning", n_bins=10), task("j", "renyi"), task("k", "renyi")]
    units = [[t.estimator for t in unit.tasks] for unit in batch_tasks(tasks)]
    assert sorted(units) == [["a", "a", "a", "a", "b"], ["c"], ["d"], ["e"], ["f"], ["g", "h", "i"], ["j"],
                             ["k"]]
    [batch] = [unit for unit in batch_tasks(tasks) if len(unit.tasks) == 5]
    assert batch.cost == sum(t.cost for t in tasks[:5]) and batch.key.startswith("batch5-estimate-a")


def test_units_store_the_single_calls_values(runs):
    """The stage's KDE unit (two settings on two splits, one reading per epoch, one batched call)
    stores each cell's single-call values; a KDE entry with intervals runs alone, and binning's
    unit (two entries, two splits, cell by cell), to the bit."""
    from pipeline.archive import ArchiveReader
    from pipeline.estimators import information_plane
    from pipeline.estimators.kde import kde_information_plane

    entries = {"kde_a": {"method": "kde", "noise_variance": 0.1},
               "kde_b": {"method": "kde", "noise_variance": 1e-2, "bound": "lower"},
               "kde_i": {"method": "kde", "noise_variance": 0.1, "uncertainty": "subsample",
                         "n_resamples": 2},
               "bin_a": {"method": "binning", "n_bins": 10}, "bin_b": {"method": "binning", "n_bins": 30}}
    assert estimate(config(**entries), runs, scheduler="synchronous", selection=Selection(seeds=(0,))) == 0
    ds = load(runs).sel(seed=0)
    archive = ArchiveReader(runs / "tiny" / "archive.zarr")
    for split in ("all", "test"):
        rows = archive.split_index(split)
        x, y = archive.inputs[rows], archive.labels[rows]
        for layer in archive.layers:
            for epoch in archive.committed_epochs(0):
                t = archive.activations(0, layer, int(epoch))[rows]
                for entry, table in entries.items():
                    params = {k: v for k, v in table.items() if k in ("noise_variance", "bound", "n_bins")}
                    if entry.startswith("bin"):
                        single = information_plane(x, t, y, "binning", **params)
                    else:
                        single = kde_information_plane(x, t, y, **params)
                    cell = ds.sel(estimator=entry, split=split, layer=layer, epoch=epoch)
                    for name in ("I_XT", "I_TY"):
                        if entry in ("kde_i", "bin_a", "bin_b"):
                            assert float(cell[name]) == single[name]
                        else:
                            assert float(cell[name]) == pytest.approx(single[name], rel=1e-12, abs=1e-13)
    assert bool(ds.done.sel(estimator=list(entries)).all())
    assert bool(np.isfinite(ds.I_XT_saturated.sel(estimator="kde_a")).all())


def test_cells_the_estimator_distrusts_are_stored_flagged_with_one_warning(runs):
    # The tiny archive's inputs have 12 dimensions: beyond KSG's measured rule at any n, so
    # every I(X;T) cell is flagged; its layers of at most 10 units give labels within the rule.
    # The test split only (819 samples): the same rule at a fifth of the cost.
    entries = {"ksg": {"method": "ksg"}, "compression": {"method": "compression", "dim": 1}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert estimate(config(**entries), runs, scheduler="synchronous",
                        selection=Selection(splits=("test",))) == 0
    ds = load(runs).sel(split="test")
    assert bool(ds.done.all())
    assert bool((ds.I_XT_biased.sel(estimator="ksg") == 1).all())
    kept = ds.T_kept.sel(estimator="compression")
    assert bool(((kept > 0) & (kept <= 1)).all())
    np.testing.assert_array_equal(ds.I_TY_lossy.sel(estimator="compression"), (kept < 0.99).astype(float))
    [summary] = [str(w.message) for w in caught if "flagged by their estimator" in str(w.message)]
    assert "ksg I_XT_biased: 24 of 24 cell(s)" in summary


def test_the_writer_holds_a_chunk_until_its_last_task_and_keeps_what_was_there(tmp_path, monkeypatch):
    """A chunk (estimator, seed, split) is written once its last task of the run arrives, with the
    cells earlier runs wrote kept; `flush` writes a chunk whose other tasks never came (once:
    not again without new results), and past FLUSH_S every write flushes."""
    from pipeline import results

    ds = results.template({"a": {"method": "binning"}, "b": {"method": "binning"}}, [0], ["all"],
                          np.arange(4), ["l1", "l2", "l3"], [3, 2, 1], {})
    path = tmp_path / "estimates.zarr"
    results.write_store(ds, path)

    def stored(estimator, layer, name="I_XT"):
        return xr.open_zarr(path, consolidated=False)[name].sel(estimator=estimator, seed=0, split="all",
                                                               layer=layer).values

    def cells(value, n):
        return {"I_XT": np.full(n, value), "I_TY": np.full(n, -value)}

    results.ResultsWriter(path, ds).write_cells("a", 0, "all", "l3", [0, 1, 2, 3], cells(9.0, 4))
    assert stored("a", "l3").tolist() == [9.0] * 4  # no plan: written as it comes
    writer = results.ResultsWriter(path, ds, {("a", 0, "all"): 2, ("b", 0, "all"): 2})
    writer.write_cells("a", 0, "all", "l1", [0, 1, 2, 3], cells(1.0, 4))
    assert not stored("a", "l1", "done").any()  # held: one of the chunk's two tasks
    writer.write_cells("a", 0, "all", "l2", [1, 3], cells(2.0, 2))
    assert stored("a", "l1").tolist() == [1.0] * 4 and stored("a", "l3").tolist() == [9.0] * 4
    np.testing.assert_array_equal(stored("a", "l2"), [np.nan, 2.0, np.nan, 2.0])
    assert stored("a", "l2", "done").tolist() == [False, True, False, True]
    assert stored("a", "l1", "I_TY").tolist() == [-1.0] * 4
    writer.write_cells("b", 0, "all", "l1", [0], cells(3.0, 1))
    assert not stored("b", "l1", "done").any()
    writer.flush()  # its other task failed
    assert stored("b", "l1", "done").tolist() == [True, False, False, False]
    writes = []
    monkeypatch.setattr(writer, "_write_chunk", lambda key, chunk: writes.append(key))
    writer.flush()
    assert writes == []  # nothing new since the last flush
    monkeypatch.setattr(results, "FLUSH_S", 0.0)
    results.ResultsWriter(path, ds, {("b", 0, "all"): 5}).write_cells("b", 0, "all", "l2", [2], cells(4.0, 1))
    assert stored("b", "l2", "done").tolist() == [False, False, True, False]
    assert stored("b", "l1").tolist()[0] == 3.0


def test_an_interrupted_run_writes_the_results_it_received(runs, monkeypatch):
    """Ctrl-C after four tasks (a chunk holds three layers' tasks): their cells are stored and
    done, the held chunk's too (flushed on the way out), and the rest is not."""
    import pipeline.estimate as stage
    from pipeline.tasks import run_batch

    finished = []

    def interrupted(path, unit):
        if len(finished) == 4:
            raise KeyboardInterrupt
        finished.extend(unit.tasks)
        return run_batch(path, unit)

    monkeypatch.setattr(stage, "run_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        estimate(config(binning_10=ESTIMATORS["binning_10"]), runs, scheduler="synchronous")
    done = load(runs).done
    assert int(done.sum()) == sum(len(task.epochs) for task in finished) > 0
    for task in finished:
        cell = {"estimator": task.estimator, "seed": task.seed, "split": task.split, "layer": task.layer}
        assert bool(done.sel(cell).all())


def test_a_unit_whose_batched_call_fails_computes_its_cells_one_by_one(runs):
    """An epoch where the batched form raises a ValueError is computed cell by cell: the values
    of each task alone, to the bit."""
    import dataclasses

    from pipeline.estimate import Task
    from pipeline.estimators import get_estimator
    from pipeline.tasks import TaskBatch, run_batch, run_task

    def refuses(*args, **kwargs):
        raise ValueError("no batch today")

    kde = dataclasses.replace(get_estimator("kde"), batched=refuses)
    tasks = tuple(Task(f"kde_{s2}", {"method": "kde", "noise_variance": s2}, kde, 0, split, "dense2", (0, 4))
                  for s2 in (0.1, 1e-2) for split in ("all", "test"))
    path = str(runs / "tiny" / "archive.zarr")
    for unit, alone in zip(run_batch(path, TaskBatch(tasks)), tasks, strict=True):
        single = run_task(path, alone)
        assert unit["task"] == alone and unit["warnings"] == single["warnings"] == []
        for name, values in single["values"].items():
            np.testing.assert_array_equal(unit["values"][name], values, err_msg=name)


def test_an_entry_whose_table_changed_is_recomputed_and_said_so(runs, capsys):
    first = {"binning_10": {"method": "binning", "n_bins": 10}}
    assert estimate(config(**first), runs, scheduler="synchronous",
                    selection=Selection(only=("binning_10",), seeds=(0,), splits=("all",))) == 0
    capsys.readouterr()
    changed = {"binning_10": {"method": "binning", "n_bins": 3}}
    assert estimate(config(**changed), runs, scheduler="synchronous",
                    selection=Selection(only=("binning_10",), seeds=(0,), splits=("all",))) == 0
    said = capsys.readouterr().out
    assert ('note: recomputing the 12 stored cells of binning_10: n_bins 10 -> 3 (parameters with their '
            'defaults)') in said
    values = load(runs).I_XT.sel(estimator="binning_10", seed=0, split="all")
    assert float(values.max()) <= np.log2(3 ** 6) + 1e-9  # 3 bins a unit: at most 3^6 patterns in dense1


def test_an_entry_only_leaves_out_keeps_its_cells_though_its_table_changed(runs, capsys):
    """`--only b` with a config whose entry a differs from the stored a: a is not this run's, so
    its cells and parameters stay as they are (they were reset and never computed again)."""
    first = {"a": {"method": "binning", "n_bins": 10}}
    assert estimate(config(**first), runs, scheduler="synchronous",
                    selection=Selection(seeds=(0,), splits=("all",))) == 0
    before = load(runs).sel(estimator="a")
    capsys.readouterr()
    changed = {"a": {"method": "binning", "n_bins": 3}, "b": {"method": "binning", "n_bins": 5}}
    assert estimate(config(**changed), runs, scheduler="synchronous",
                    selection=Selection(only=("b",), seeds=(0,), splits=("all",))) == 0
    said = capsys.readouterr().out
    assert "recomputing" not in said and "note: keeping the stored cells of a:" in said
    after = load(runs)
    assert after.I_XT.sel(estimator="a").equals(before.I_XT)
    assert after.done.sel(estimator="a").equals(before.done)
    assert json.loads(str(after.parameters.sel(estimator="a").values))["n_bins"] == 10
    assert bool(after.done.sel(estimator="b", seed=0, split="all").all())


def test_a_config_naming_fewer_splits_keeps_the_stored_ones(runs, capsys):
    """A run whose estimate.splits leave out a split the store holds keeps that split's cells
    (they were dropped from the store, and the run said nothing to do) and computes none."""
    first = {"binning_10": {"method": "binning", "n_bins": 10}}
    only = Selection(seeds=(0,))
    assert estimate(config(**first), runs, scheduler="synchronous", selection=only) == 0
    before = load(runs)
    narrower = config(**first)
    narrower = dataclasses.replace(narrower, estimate=dataclasses.replace(narrower.estimate, splits=("all",)))
    capsys.readouterr()
    assert estimate(narrower, runs, scheduler="synchronous", selection=only) == 0
    assert "note: keeping the stored cells of splits ['test']: not among this run's estimate.splits" in \
        capsys.readouterr().out
    after = load(runs)
    assert list(after.split.values) == ["all", "test"] and after.I_XT.equals(before.I_XT)
    assert after.done.equals(before.done)


def test_a_changed_default_recomputes_the_entry_and_a_store_without_defaults_keeps_its_cells(
        runs, capsys, register):
    """The store holds every parameter with its default (`resolved_parameters`): when a method's
    default changes (here a registered estimator's), its cells are computed again. A store
    written before it held them (schema 1.3) keeps its cells and gains the coordinate."""
    from pipeline.results import write_store

    def constant(value):
        def plane(x, t, y, scale=value):
            return {"I_XT": scale, "I_TY": scale}
        return plane

    selection = Selection(seeds=(0,), splits=("all",))
    register("test_scaled", constant(1.0))
    assert estimate(config(own={"method": "test_scaled"}), runs, scheduler="synchronous",
                    selection=selection) == 0
    stored = load(runs)
    assert '"scale": 1.0' in str(stored.resolved_parameters.sel(estimator="own").values)
    assert float(stored.I_XT.sel(estimator="own", seed=0, split="all").max()) == 1.0
    capsys.readouterr()
    register("test_scaled", constant(2.0))  # the same table, another default
    assert estimate(config(own={"method": "test_scaled"}), runs, scheduler="synchronous",
                    selection=selection) == 0
    assert "note: recomputing the 12 stored cells of own: scale 1.0 -> 2.0 (parameters with their " \
           "defaults)" in capsys.readouterr().out
    cells = load(runs).I_XT.sel(estimator="own", seed=0, split="all")
    assert float(cells.min()) == float(cells.max()) == 2.0

    older = load(runs).drop_vars("resolved_parameters")  # as schema 1.3 wrote it
    older.attrs["schema_version"] = "1.3"
    write_store(older, runs / "tiny" / "estimates.zarr")
    register("test_scaled", constant(3.0))  # unknowable for that store: kept
    assert estimate(config(own={"method": "test_scaled"}), runs, scheduler="synchronous",
                    selection=selection) == 0
    assert "recomputing" not in capsys.readouterr().out
    again = load(runs)
    assert float(again.I_XT.sel(estimator="own", seed=0, split="all").max()) == 2.0
    assert '"scale": 3.0' in str(again.resolved_parameters.sel(estimator="own").values)

    # such a store's entry left out of a run is resolved as named ones are: named again, kept
    write_store(older, runs / "tiny" / "estimates.zarr")
    capsys.readouterr()
    assert estimate(config(binning_3={"method": "binning", "n_bins": 3}), runs, scheduler="synchronous",
                    selection=selection) == 0
    assert "keeping the stored cells of own" in capsys.readouterr().out
    assert estimate(config(own={"method": "test_scaled"}), runs, scheduler="synchronous",
                    selection=selection) == 0
    assert "recomputing" not in capsys.readouterr().out
    assert float(load(runs).I_XT.sel(estimator="own", seed=0, split="all").max()) == 2.0
