"""Where a run's files live: the one owner of every path under `data/runs/<run>/`.

    paths = RunPaths.of("data/runs", "szt_tanh")      # a built-in config's run
    paths = RunPaths.from_archive("runs/mine/archive.zarr")   # any archive: results beside it
    paths = RunPaths.from_archive("/shared/run/archive.zarr", results="mine/estimates.zarr")
    paths.archive, paths.results, paths.seed_checkpoints(0), paths.figures("figures")

The results store may live away from the archive (a read-only or shared archive): the estimate
stage then writes only there, and its lock beside the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path
    archive: Path
    results_store: Path | None = None  # None: estimates.zarr in run_dir

    @classmethod
    def of(cls, runs_dir: str | Path, name: str) -> RunPaths:
        run_dir = Path(runs_dir) / name
        return cls(run_dir, run_dir / "archive.zarr")

    @classmethod
    def from_archive(cls, archive: str | Path, results: str | Path | None = None) -> RunPaths:
        archive = Path(archive)
        return cls(archive.parent, archive, None if results is None else Path(results))

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def results(self) -> Path:
        return self.results_store or self.run_dir / "estimates.zarr"

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def seed_checkpoints(self, seed: int) -> Path:
        return self.checkpoints / f"seed_{seed}"

    def figures(self, figures_root: str | Path) -> Path:
        return Path(figures_root) / self.name
