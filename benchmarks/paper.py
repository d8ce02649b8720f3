"""The paper-scale comparison of `configs/szt_tanh_paper.toml`, measured on part of its cells.

    python -m benchmarks.paper [--archive PATH]   # or `make bench` (section paper)

Every estimator entry of the config, its three splits and the Fisher traces, estimated by the
stage (LocalCluster, one single-threaded worker per core) on every snapshot of seed 0 and
projected to all seeds; then by groups of entries on every 10th snapshot, for their shares.
Without `--archive` one seed of the config is trained first (8000 epochs, about 3 minutes on 2
cores). About 20 minutes with `--archive`.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

from benchmarks.common import DOCS, ROOT, machine, table, write_section

EVERY = 10
GROUPS = {  # part -> the entries it estimates (prefixes of the config's entry names)
    "binning, 3 entries": ("binning",),
    "KDE, 6 entries": ("kde",),
    "Renyi": ("renyi",),
    "compression": ("compression",),
    "Fisher traces": ("fisher",),
}


def _stage_seconds(cfg, runs: Path, selection) -> float:
    """Wall seconds of one estimate stage run into a fresh results store."""
    import shutil

    from pipeline.estimate import main as estimate
    from pipeline.runs import RunPaths

    shutil.rmtree(RunPaths.of(runs, cfg.name).results, ignore_errors=True)
    started = time.perf_counter()
    if estimate(cfg, runs, selection=selection) != 0:
        raise RuntimeError(f"the stage failed on {selection}; see its output above")
    return time.perf_counter() - started


def measure(cfg, runs: Path) -> dict[str, object]:
    """The stage's fixed seconds, the whole comparison on every snapshot of seed 0 and its
    projection to every seed, and the parts' seconds on every EVERY-th snapshot.

    The fixed seconds are a run of the cheapest cells (binning_10 on the test split at the first
    and last snapshots): the cluster's start and close, the store's template and its writes. The
    projection is those seconds plus the rest of seed 0's time times the number of seeds: every
    task and cell of seed 0 has one of the same length and cost in every other seed.
    """
    from pipeline.archive import ArchiveReader
    from pipeline.estimate import Selection
    from pipeline.runs import RunPaths

    n_snapshots = len(ArchiveReader(RunPaths.of(runs, cfg.name).archive).committed_epochs(0))
    fixed = _stage_seconds(cfg, runs, Selection(only=("binning_10",), seeds=(0,), splits=("test",),
                                                every=n_snapshots))
    seed0 = _stage_seconds(cfg, runs, Selection(seeds=(0,)))
    entries = [*cfg.estimators, "fisher"]
    parts = {}
    for part, prefixes in GROUPS.items():
        only = tuple(name for name in entries if name.startswith(prefixes))
        parts[part] = (len(only), _stage_seconds(cfg, runs, Selection(only=only, seeds=(0,), every=EVERY)))
    return {"fixed": fixed, "seed0": seed0, "projected": fixed + (seed0 - fixed) * len(cfg.seeds),
            "parts": parts, "n_snapshots": n_snapshots}


def main(argv: list[str] | None = None) -> None:
    from pipeline.config import load_config
    from pipeline.provenance import git_revision
    from pipeline.runs import RunPaths
    from pipeline.train import main as train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, help="an archive of the config with seed 0 trained")
    archive = parser.parse_args(argv).archive
    cfg = load_config(ROOT / "configs/szt_tanh_paper.toml")
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        paths = RunPaths.of(runs, cfg.name)
        if archive is None:
            train(load_config(ROOT / "configs/szt_tanh_paper.toml", ["seeds=[0]"]), runs)
        else:
            paths.archive.parent.mkdir(parents=True)
            paths.archive.symlink_to(archive.resolve())
        m = measure(cfg, runs)
    work = {part: max(seconds - m["fixed"], 0.0) for part, (_, seconds) in m["parts"].items()}
    rows = [[part, n, f"{seconds:.1f}", f"{work[part] / sum(work.values()):.0%}"]
            for part, (n, seconds) in m["parts"].items()]
    splits = len(cfg.estimate.splits)
    body = (f"Command: `python -m benchmarks.paper` (or `make bench`, section paper). "
            f"`configs/szt_tanh_paper.toml`: every estimator entry on its {splits} splits and 6 layers, "
            f"and the Fisher traces, by `make estimate` (LocalCluster, one single-threaded worker per "
            f"core) on all {m['n_snapshots']} snapshots of seed 0: **{m['seed0']:.0f} s**, of which "
            f"{m['fixed']:.1f} s are the stage's fixed cost (its start and close and the full store's "
            f"template and writes, measured as a run of the 12 cheapest cells). Every other seed has "
            f"the same tasks and cells, so the whole comparison ({len(cfg.seeds)} seeds) projects to "
            f"**{m['projected'] / 3600:.2f} h** on this machine. Target: under 3 h on 2 cores.\n\n"
            f"By part, each in a fresh store, on every {EVERY}th snapshot of seed 0 and the last "
            "(shares of the time beyond the fixed cost):\n\n"
            + table(["part", "entries", "seconds", "share"], rows)
            + f"\n\nMachine: {machine()}; commit {git_revision()}; {datetime.date.today()}.")
    write_section(DOCS / "benchmarks.md", "paper", body)
    print(body)


if __name__ == "__main__":
    main()
