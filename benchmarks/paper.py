"""The paper-scale comparison of `configs/szt_tanh_paper.toml`, measured on part of its cells.

    python -m benchmarks.paper [--archive PATH]   # or `make bench` (section paper)

Every estimator entry of the config, its three splits and the Fisher traces, estimated by the
stage (LocalCluster, one single-threaded worker per core) on seed 0 at every 10th snapshot and
the last, then by groups of entries; each time less the stage's fixed cost is scaled by the full
run's cells over the measured ones (20 seeds x 274 snapshots against 1 x 29). Without
`--archive` one seed of the config is trained first (8000 epochs, about 3 minutes on 2 cores).
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
    "every entry and the Fisher traces": ("binning", "kde", "renyi", "compression", "fisher"),
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


def measure(cfg, runs: Path) -> tuple[list[list[object]], float, int, int, float]:
    """Rows of the table (each part's measured seconds and its projection to the full run), the
    stage's fixed seconds, the snapshots measured and archived, and the scale between them.

    The fixed seconds are a run of the cheapest cells (binning_10 on the test split at the first
    and last snapshots): the cluster's start and close, the store's template and its writes.
    A part's projection is those seconds plus the rest of its time times the scale.
    """
    from pipeline.archive import ArchiveReader
    from pipeline.estimate import Selection
    from pipeline.runs import RunPaths

    n_snapshots = len(ArchiveReader(RunPaths.of(runs, cfg.name).archive).committed_epochs(0))
    measured = len(range(0, n_snapshots - 1, EVERY)) + 1  # every 10th row and the last
    scale = len(cfg.seeds) * n_snapshots / measured
    fixed = _stage_seconds(cfg, runs, Selection(only=("binning_10",), seeds=(0,), splits=("test",),
                                                every=n_snapshots))
    entries = [*cfg.estimators, "fisher"]
    rows = []
    for part, prefixes in GROUPS.items():
        only = tuple(name for name in entries if name.startswith(prefixes))
        seconds = _stage_seconds(cfg, runs, Selection(only=only, seeds=(0,), every=EVERY))
        projected = fixed + max(seconds - fixed, 0.0) * scale
        rows.append([part, len(only), f"{seconds:.1f}", f"{projected / 3600:.2f}"])
    return rows, fixed, measured, n_snapshots, scale


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
        rows, fixed, measured, n_snapshots, scale = measure(cfg, runs)
    body = (f"Command: `python -m benchmarks.paper` (or `make bench`, section paper). "
            f"`configs/szt_tanh_paper.toml`: every estimator entry on its {len(cfg.estimate.splits)} "
            f"splits and 6 layers, and the Fisher traces, by `make estimate` (LocalCluster, one "
            f"single-threaded worker per core) on seed 0 at every {EVERY}th of its {n_snapshots} "
            f"snapshots and the last ({measured}); each part in a fresh store. Projection: the stage's "
            f"fixed {fixed:.1f} s (its start and close and the full store's template and writes: a run "
            f"of the 12 cheapest cells) plus the rest of the measured seconds x {scale:.0f} (the full "
            f"run's {len(cfg.seeds)} seeds x {n_snapshots} snapshots over the measured ones). Target: "
            "the whole comparison under 3 h on 2 cores.\n\n"
            + table(["part", "entries", "measured (s)", "projected full run (h)"], rows)
            + f"\n\nMachine: {machine()}; commit {git_revision()}; {datetime.date.today()}.")
    write_section(DOCS / "benchmarks.md", "paper", body)
    print(body)


if __name__ == "__main__":
    main()
