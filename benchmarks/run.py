"""`make bench`: training overhead of archiving, estimator speed, estimate-stage scaling.

    python -m benchmarks.run [--only SECTION,...]
    # sections: train, recording, speed, memory, wide, estimators, images, gpu, stage, figures, paper,
    # accuracy, limits, bottleneck, uncertainty, compression_rule, variational, ksg_bias, families

Writes its tables into docs/benchmarks.md (and the accuracy report into docs/estimators.md).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DOCS, ROOT, best_of, machine, stage_seconds, table, timed, write_section


def bench_train() -> None:
    """Default config, one seed, 1 torch thread: archiving on vs off."""
    from pipeline.archive import snapshot_epochs
    from pipeline.config import load_config
    from pipeline.train import prepare_archive, train_seed

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        for enabled in (False, True):
            cfg = load_config(ROOT / "configs/szt_tanh.toml",
                              ["seeds=[0]", f"archive.enabled={str(enabled).lower()}"])
            runs = Path(tmp) / str(enabled)
            if enabled:
                prepare_archive(cfg, runs)
            t0 = time.perf_counter()
            train_seed(cfg, 0, runs, threads=1)
            times[enabled] = time.perf_counter() - t0
        n_snap = len(snapshot_epochs(cfg.archive, cfg.train.n_epochs))
        overhead = times[True] / times[False] - 1
        rows.append([f"szt_tanh, 1 seed, {cfg.train.n_epochs} epochs, {n_snap} snapshots x 4096 samples",
                     f"{times[False]:.1f}", f"{times[True]:.1f}", f"{100 * overhead:+.1f}%"])
    body = ("Command: `make bench` (section train). Wall time of `train_seed` with 1 torch thread; "
            "the archive writer runs in its own process.\n\n"
            + table(["run", "archiving off (s)", "archiving on (s)", "overhead"], rows)
            + f"\n\nMachine: {machine()}. Target: overhead under 15%.")
    write_section(DOCS / "benchmarks.md", "train", body)
    print(body)


def bench_estimators() -> None:
    """Each method on n x d: the sizes the pipeline meets (SZT, MNIST layers, a VGG conv layer)."""
    import torch

    from pipeline.estimators import information_plane

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    # column: (method, parameters); the autoencoder column compresses the layer, not the inputs
    methods = {
        "binning": ("binning", {}), "kde": ("kde", {}), "renyi": ("renyi", {"n_batches": 10}),
        "ksg": ("ksg", {}), "compression": ("compression", {}),
        "compression, autoencoder": ("compression", {"compressor": "autoencoder"}),
    }
    # Over a minute each on 2 cores: the n^2 d products of KDE, brute-force KSG and the
    # compressor's neighbours at 4096 x 65536.
    skip = {("kde", 4096, 65536), ("ksg", 4096, 65536), ("compression", 4096, 65536),
            ("compression, autoencoder", 4096, 65536)}
    rows = []
    for d in (10, 1000, 65536):
        for n in (100, 1000, 4096):
            x = rng.uniform(size=(n, 12)).astype(np.float32)
            t = np.tanh(rng.normal(size=(n, d))).astype(np.float32)
            y = rng.integers(0, 10, n)
            row = [n, d]
            for column, (method, params) in methods.items():
                if (column, n, d) in skip:
                    row.append("skipped")
                    continue
                seconds = best_of(lambda m=method, p=params, x=x, t=t, y=y:
                                  information_plane(x, t, y, m, **p), repeat=3, budget=15)
                row.append(f"{seconds * 1000:.0f}")
            rows.append(row)
            print(row, flush=True)
    body = ("Command: `make bench` (section estimators). Milliseconds per `information_plane` call "
            "(one layer, one epoch: both I(X;T) and I(T;Y)), best of up to 3, 2 CPU threads, default "
            "parameters (Renyi: 10 batches of 100, alignment search over 300 widths; the last "
            "column compresses the layer with the autoencoder, 3000 training steps whatever n and "
            "d, instead of PCA). 'skipped': "
            "over a minute on this machine (kNN trees degrade to brute force in high dimension; "
            "the `device=\"cuda\"` paths are meant for those sizes).\n\n"
            + table(["n", "d", *methods], rows) + f"\n\nMachine: {machine()}.")
    write_section(DOCS / "benchmarks.md", "estimators", body)


def bench_images() -> None:
    """The image defaults of compression: the parts on one side, then whole default calls."""
    import warnings

    import torch

    from pipeline.estimators.compression import (
        CompressionWarning,
        autoencoder_compress,
        compression_mutual_information,
        conv_autoencoder_compress,
    )
    from pipeline.estimators.flow import flow_mutual_information
    from pipeline.groundtruth import gaussian_pair, render_images
    from pipeline.provenance import git_revision

    torch.set_num_threads(2)
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    rows, n = [], 5000
    for family in ("bumps", "rectangles", "ellipses"):
        a, b = gaussian_pair(n, 1.5, 4, seed=41, rotate=False)
        images_a, images_b = render_images(family, a), render_images(family, b)
        shape = images_a.shape[1:]
        flat_a, flat_b = images_a.reshape(n, -1), images_b.reshape(n, -1)
        for device in devices:
            # a short untimed run first: the first call of a size pays torch's one-off set-up
            conv_autoencoder_compress(flat_a, 4, shape, steps=20, device=device)
            flow_mutual_information(a, b, steps=20, device=device)
            conv, codes_a = timed(conv_autoencoder_compress, flat_a, 4, shape, device=device)
            _, codes_b = timed(conv_autoencoder_compress, flat_b, 4, shape, seed=1, device=device)
            dense, _ = timed(autoencoder_compress, flat_a, 4, device=device)
            flow, _ = timed(flow_mutual_information, codes_a, codes_b, device=device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CompressionWarning)
                call, _ = timed(compression_mutual_information, images_a, images_b, device=device)
            rows.append([f"{family} {'x'.join(map(str, shape))}", n, device, f"{conv:.1f}", f"{dense:.1f}",
                         f"{flow:.1f}", f"{call:.0f}"])
            print(rows[-1], flush=True)
    body = ("Command: `make bench` (section images). Seconds for the parts of "
            "`mutual_information(a, b, \"compression\")` on images of 4 latents: the "
            "convolutional autoencoder on one side (defaults: 16 channels, 3 candidates for the first "
            "750 of 1500 steps, images above 32 pixels a side pooled to 32; what `compressor=\"auto\"` "
            "picks for images; on one torch thread, as every autoencoder on the CPU), the dense one for "
            "comparison (3000 steps), the flow model on the two sides' codes (3000 steps, 2 threads), "
            "and a whole default call timed (the two sides' encodings at once, one thread each, the "
            "intrinsic dimension of each side, the flow and KSG on the codes). Step counts do not "
            "depend on n: n only changes the final encoding pass and the flow's normal scores.\n\n"
            + table(["images", "n", "device", "conv autoencoder, one side", "dense autoencoder, one side",
                     "flow", "default call"], rows)
            + f"\n\nMachine: {machine()}; commit {git_revision(paths=('pipeline',))}.")
    write_section(DOCS / "benchmarks.md", "images", body)
    print(body)


def bench_gpu() -> None:
    """`device="cuda"` against the CPU on the same calls: seconds and the largest difference."""
    import torch

    from pipeline.estimators import information_plane

    if not torch.cuda.is_available():
        print("section gpu: no GPU on this machine; docs/benchmarks.md keeps its last GPU table")
        return
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    methods = {"renyi": {"n_batches": 10}, "kde": {}, "ksg": {}, "compression": {}}
    rows = []
    for d in (10, 1000, 65536):
        for n in (1000, 4096):
            x = rng.uniform(size=(n, 12))
            t = np.tanh(rng.normal(size=(n, d)))
            y = rng.integers(0, 10, n)
            for method, params in methods.items():
                if method == "ksg" and d > 10 and n > 1000:
                    continue  # the CPU tree degrades to brute force: minutes for one reference value
                seconds, values = {}, {}
                for device in ("cpu", "cuda"):
                    runs = [timed(information_plane, x, t, y, method, device=device, **params)
                            for _ in range(3)]
                    seconds[device], values[device] = min(runs, key=lambda run: run[0])
                diff = max(abs(values["cuda"][key] - values["cpu"][key]) for key in values["cpu"])
                rows.append([n, d, method, f"{seconds['cpu'] * 1000:.0f}", f"{seconds['cuda'] * 1000:.0f}",
                             f"{seconds['cpu'] / seconds['cuda']:.1f}x", f"{diff:.1e}"])
                print(rows[-1], flush=True)
    body = ("Command: `python -m benchmarks.run --only gpu` (part of `make bench` where a GPU exists). "
            "Milliseconds per `information_plane` call, best of 3 (the first GPU call includes "
            "its warm-up), CPU (2 threads) against `device=\"cuda\"`, and the largest difference of "
            "the two results in bits (float64 on both; ksg on the GPU uses brute-force neighbours).\n\n"
            + table(["n", "d", "method", "cpu (ms)", "cuda (ms)", "speed-up", "max diff (bits)"], rows)
            + f"\n\nMachine: {machine()}.")
    write_section(DOCS / "benchmarks.md", "gpu", body)
    print(body)


STAGE_REPEATS = 3


def bench_stage() -> None:
    """Runs `_bench_stage` in a subprocess pinned to one thread per process (see its docstring)."""
    import os
    import subprocess
    import sys

    pinned = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    subprocess.run([sys.executable, "-c", "from benchmarks.run import _bench_stage; _bench_stage()"],
                   cwd=ROOT, env={**os.environ, **pinned}, check=True)


def _import_tasks() -> bool:
    import pipeline.tasks  # noqa: F401  (what a worker's first task imports: torch included)
    return True


def seconds_in_fresh_process(setup: str, timed_call: str) -> float:
    """Seconds of `timed_call` in a new Python process after `setup`: a forkserver started
    earlier in this process would serve the call and hide the start it measures."""
    import subprocess
    import sys

    code = (f"import time\n{setup}\nstarted = time.perf_counter()\n{timed_call}\n"
            "print(time.perf_counter() - started)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def cluster_fixed_cost(workers: int, forked: bool = True) -> float:
    """Seconds to start a LocalCluster as the stage does, import the task code on every worker
    and close it again, in a fresh process with nothing to overlap: what the stage would wait
    for if it did not start the forkserver before its own imports. With
    `forked=False`, every worker is spawned and imports the task code itself."""
    setup = "from pipeline.cluster import make_client\nfrom benchmarks.run import _import_tasks"
    if not forked:
        setup += "\nimport pipeline.cluster\npipeline.cluster.start_worker_server = lambda: False"
    call = (f"client, cluster = make_client(None, None, {workers})\nclient.run(_import_tasks)\n"
            "client.close()\ncluster.close()")
    return seconds_in_fresh_process(setup, call)


def stage_on_running_cluster(run_stage: Callable[[str], None], workers: int) -> tuple[float, float]:
    """The stage on a LocalCluster started beforehand (the task code imported on every worker):
    its wall seconds, and the seconds from the first task computation to the end of the last
    one, from Dask's task stream: what scheduling and the tasks themselves take."""
    from pipeline.cluster import make_client

    client, cluster = make_client(None, None, workers)
    try:
        client.run(_import_tasks)
        client.get_task_stream()  # starts the scheduler's recording
        started = time.time()
        run_stage(cluster.scheduler_address)
        wall = time.time() - started
        spans = [(part["start"], part["stop"]) for task in client.get_task_stream(start=started)
                 for part in task["startstops"] if part["action"] == "compute"]
    finally:
        client.close()
        cluster.close()
    return wall, max(stop for _, stop in spans) - min(start for start, _ in spans)


SMALL_STAGE = ["seeds=[0, 1]", "train.n_epochs=300", "archive.n_log_points=40", "estimate.fisher=false"]


def plain_loop_seconds(cfg, runs: Path) -> tuple[float, int, int]:
    """Seconds of a plain loop over every cell of the run's default estimators (no stage, no
    store), and the numbers of cells and tasks."""
    from pipeline.archive import ArchiveReader
    from pipeline.estimate import usable_splits
    from pipeline.estimators import information_plane
    from pipeline.runs import RunPaths

    archive = ArchiveReader(RunPaths.of(runs, cfg.name).archive)
    splits = usable_splits(archive, cfg.estimate)[0]  # names and patterns, read as the stage reads them
    tasks = [(table_, seed, split, layer) for table_ in cfg.estimators.values() for seed in archive.seeds
             for split in splits for layer in archive.layers]
    started = time.perf_counter()
    for table_, seed, split, layer in tasks:
        params = {k: v for k, v in table_.items() if k != "method"}
        index = archive.split_index(split)
        for epoch in archive.committed_epochs(seed):
            t = archive.activations(seed, layer, int(epoch))[index]
            information_plane(archive.inputs[index], t, archive.labels[index], table_["method"], **params)
    return time.perf_counter() - started, len(tasks) * len(archive.committed_epochs(0)), len(tasks)


def best_alternated(measure: Callable[[int], Any], results: Path, repeats: int) -> dict[int, Any]:
    """The best (smallest) of `repeats` values of `measure(workers)` for 1 and 2 workers, the two
    alternated (this machine's speed drifts), each run into a fresh results store."""
    values: dict[int, list] = {1: [], 2: []}
    for _ in range(repeats):
        for workers in values:
            shutil.rmtree(results, ignore_errors=True)
            values[workers].append(measure(workers))
    return {workers: min(each) for workers, each in values.items()}


def stage_walls(overrides: list[str], runs: Path, repeats: int) -> dict[int, tuple[float, float]]:
    """`make estimate` (its own LocalCluster) with 1 and 2 workers, each a fresh command as a user
    runs it: the best (smallest) wall seconds of the whole command, Python's start and the
    imports included, with the stage's own seconds in that run (from opening the results store
    to its last write: planning, the cluster's start and close, the tasks; the stage writes them
    in the store's history)."""
    import re

    import zarr

    from pipeline.config import load_config
    from pipeline.runs import RunPaths

    results = RunPaths.of(runs, load_config(ROOT / "configs/szt_tanh.toml", overrides).name).results

    def walls(workers: int) -> tuple[float, float]:
        sets = [arg for item in [*overrides, f"estimate.n_workers={workers}"] for arg in ("--set", item)]
        whole = stage_seconds(["stages.estimate", "--config", "configs/szt_tanh.toml", "--runs", str(runs),
                               *sets])
        line = zarr.open_group(str(results), mode="r").attrs["history"].splitlines()[-1]
        return whole, float(re.search(r" in ([0-9.]+)s", line).group(1))

    return best_alternated(walls, results, repeats)


def _bench_stage() -> None:
    """The default estimate on 1 vs 2 workers, and the stage against a plain loop.

    Dask workers run with OMP_NUM_THREADS=1; the loop and the synchronous stage get the same
    single thread (BLAS/LAPACK included), or the comparison would measure threads, not the stage.
    """
    import torch

    torch.set_num_threads(1)
    from pipeline.config import load_config
    from pipeline.estimate import main as estimate
    from pipeline.provenance import git_revision
    from pipeline.runs import RunPaths
    from pipeline.train import main as train

    cfg = load_config(ROOT / "configs/szt_tanh.toml", SMALL_STAGE)
    with tempfile.TemporaryDirectory() as tmp:
        runs, default_runs = Path(tmp) / "small", Path(tmp) / "default"
        train(cfg, runs)
        loop, n_cells, n_tasks = plain_loop_seconds(cfg, runs)
        walls = stage_walls(SMALL_STAGE, runs, STAGE_REPEATS)
        fixed = {workers: min(cluster_fixed_cost(workers) for _ in range(STAGE_REPEATS))
                 for workers in (1, 2)}
        spawned = {workers: min(cluster_fixed_cost(workers, forked=False) for _ in range(STAGE_REPEATS))
                   for workers in (1, 2)}
        running = best_alternated(
            lambda workers: stage_on_running_cluster(lambda address: estimate(cfg, runs, scheduler=address),
                                                     workers),
            RunPaths.of(runs, cfg.name).results, STAGE_REPEATS)
        shutil.rmtree(RunPaths.of(runs, cfg.name).results, ignore_errors=True)
        sync = timed(estimate, cfg, runs, scheduler="synchronous")[0]
        train(load_config(ROOT / "configs/szt_tanh.toml"), default_runs)
        default = stage_walls([], default_runs, 1)

    def efficiency(one: float, two: float) -> str:
        return f"scaling efficiency {one / (2 * two):.0%}"

    def against_loop(seconds: float) -> str:
        return f"{100 * (seconds / loop - 1):+.1f}% vs loop"

    rows = [["plain loop over cells, 1 process, 1 thread", f"{loop:.1f}", "-"],
            ["stage, synchronous (1 process, 1 thread)", f"{sync:.1f}", against_loop(sync)],
            ["`make estimate`, the whole command (Python's start and imports included): 1 / 2 workers",
             f"{walls[1][0]:.1f} / {walls[2][0]:.1f}", efficiency(walls[1][0], walls[2][0])],
            ["its stage, from opening the store to the last write (cluster start and close included): "
             "1 / 2 workers", f"{walls[1][1]:.1f} / {walls[2][1]:.1f}",
             f"{efficiency(walls[1][1], walls[2][1])}; 1 worker {against_loop(walls[1][1])}"],
            ["LocalCluster start, first import of the task code, close, with nothing to overlap: "
             "1 / 2 workers", f"{fixed[1]:.1f} / {fixed[2]:.1f}", "-"],
            ["the same with every worker spawned, importing the task code itself: 1 / 2 workers",
             f"{spawned[1]:.1f} / {spawned[2]:.1f}", "-"],
            ["stage on a running LocalCluster (task code imported): 1 / 2 workers",
             f"{running[1][0]:.1f} / {running[2][0]:.1f}", efficiency(running[1][0], running[2][0])],
            ["its task computations, first start to last end: 1 / 2 workers",
             f"{running[1][1]:.1f} / {running[2][1]:.1f}", efficiency(running[1][1], running[2][1])],
            ["the default run (`make all`'s estimate: 4 seeds, 2500 epochs, Fisher traces), the whole "
             "command: 1 / 2 workers", f"{default[1][0]:.1f} / {default[2][0]:.1f}",
             efficiency(default[1][0], default[2][0])],
            ["its stage: 1 / 2 workers", f"{default[1][1]:.1f} / {default[2][1]:.1f}",
             efficiency(default[1][1], default[2][1])]]
    body = (f"Command: `make bench` (section stage). The default estimators of szt_tanh on a "
            f"2-seed, 300-epoch archive ({n_cells} cells in {n_tasks} tasks), and the default run. "
            "`make estimate` runs as a user runs it, a fresh `python -m stages.estimate` each time; "
            "its stage's own seconds are those it writes in the store's history. The LocalCluster "
            f"runs on the small archive are the best of {STAGE_REPEATS} (by the whole command), 1 and "
            "2 workers alternated (the loop, the synchronous stage and the default run: one run "
            "each). On a cluster started beforehand the stage still opens the archive, plans, and "
            "writes the store; the span of the task computations (Dask's task stream) is what the "
            "order of the tasks and their balance over the workers decide.\n\n"
            + table(["run", "wall (s)", "note"], rows)
            + f"\n\nMachine: {machine()}; commit {git_revision(paths=('pipeline', 'stages'))}; "
            f"{datetime.date.today().isoformat()}.")
    write_section(DOCS / "benchmarks.md", "stage", body)
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="train,recording,speed,memory,wide,estimators,images,gpu,stage,"
                                          "figures,paper,accuracy,limits,bottleneck,uncertainty,compression_rule,variational,"
                                          "ksg_bias,families")
    sections = parser.parse_args().only.split(",")
    if "train" in sections:
        bench_train()
    if "recording" in sections:
        from benchmarks.recording import main as recording
        recording()
    if "speed" in sections:
        from benchmarks.speed import speed
        speed()
    if "memory" in sections:
        from benchmarks.speed import memory
        memory()
    if "wide" in sections:
        from benchmarks.speed import wide_layers
        wide_layers()
    if "stage" in sections:
        bench_stage()
    if "figures" in sections:
        from benchmarks.figures import main as figures
        figures()
    if "paper" in sections:
        from benchmarks.paper import main as paper
        paper([])
    if "estimators" in sections:
        bench_estimators()
    if "images" in sections:
        bench_images()
    if "gpu" in sections:
        bench_gpu()
    if "accuracy" in sections:
        from benchmarks.accuracy import main as accuracy
        accuracy()
    if "limits" in sections:
        from benchmarks.compression_limits import main as limits
        limits()
    if "bottleneck" in sections:
        from benchmarks.code_bottleneck import main as bottleneck
        bottleneck()
    if "uncertainty" in sections:
        from benchmarks.uncertainty import main as uncertainty
        uncertainty()
    if "compression_rule" in sections:
        from benchmarks.compression_rule import main as compression_rule
        compression_rule()
    if "variational" in sections:
        from benchmarks.variational import main as variational
        variational()
    if "ksg_bias" in sections:
        from benchmarks.ksg_bias import main as ksg_bias
        ksg_bias()
    if "families" in sections:
        from benchmarks.families import IMAGE_BITS, IMAGE_LATENTS
        from benchmarks.families import main as families
        from pipeline.groundtruth import held_out_families
        families(["gaussian", "images"], held_out_families(),
                 IMAGE_LATENTS, IMAGE_BITS)


if __name__ == "__main__":
    main()
