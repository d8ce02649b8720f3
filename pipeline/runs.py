"""Where a run's files live: the one owner of every path under `data/runs/<run>/`.

    paths = RunPaths.of("data/runs", "szt_tanh")      # a built-in config's run
    paths = RunPaths.from_archive("runs/mine/archive.zarr")   # any archive: results beside it
    paths.archive, paths.results, paths.seed_checkpoints(0), paths.figures("figures")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path
    archive: Path

    @classmethod
    def of(cls, runs_dir: str | Path, name: str) -> RunPaths:
        run_dir = Path(runs_dir) / name
        return cls(run_dir, run_dir / "archive.zarr")

    @classmethod
    def from_archive(cls, archive: str | Path) -> RunPaths:
        archive = Path(archive)
        return cls(archive.parent, archive)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def results(self) -> Path:
        return self.run_dir / "estimates.zarr"

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def seed_checkpoints(self, seed: int) -> Path:
        return self.checkpoints / f"seed_{seed}"

    def figures(self, figures_root: str | Path) -> Path:
        return Path(figures_root) / self.name
