"""Where a run's files live: the one owner of every path of a run.

    paths = RunPaths.of("data/runs", "szt_tanh")      # a built-in config's run
    paths = RunPaths.from_archive("runs/mine/archive.zarr")   # any archive: results beside it
    paths = RunPaths.from_archive("runs/lr_0.1.zarr")         # several archives in one folder
    paths = RunPaths.from_archive("/shared/run/archive.zarr", results="mine/estimates.zarr")
    paths.archive, paths.results, paths.seed_checkpoints(0), paths.figures("figures")

An archive called `archive.zarr` owns its folder: the run is named after the folder, and its
results store (`estimates.zarr`) and resume checkpoints (`checkpoints/`) sit beside it. An
archive of any other name shares its folder with others: the run is named after the archive
(`lr_0.1`), and its files carry that name (`lr_0.1.estimates.zarr`, `lr_0.1.checkpoints/`,
figures in `figures/lr_0.1/`), so that two archives in one folder never write into each other's.

The results store may live away from the archive (a read-only or shared archive): the estimate
stage then writes only there, and its lock beside the store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

ARCHIVE_NAME = "archive.zarr"  # the name of an archive that owns its folder


def is_results_store(path: str | Path) -> bool:
    """Whether `path` is a results store: every one has the `done` mask; archives never."""
    return (Path(path) / "done").is_dir()


def store_attributes(path: str | Path) -> dict:
    """The root attributes of a zarr store, read from its metadata document alone ({} where
    there is none or it cannot be read)."""
    try:
        return json.loads((Path(path) / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path
    archive: Path
    results_store: Path | None = None  # None: the store beside the archive (`results`)

    @classmethod
    def of(cls, runs_dir: str | Path, name: str) -> RunPaths:
        run_dir = Path(runs_dir) / name
        return cls(run_dir, run_dir / ARCHIVE_NAME)

    @classmethod
    def from_archive(cls, archive: str | Path, results: str | Path | None = None) -> RunPaths:
        archive = Path(archive)
        paths = cls(archive.parent, archive, None if results is None else Path(results))
        if results is None and not paths.owns_folder and not paths.results.exists():
            # the folder's `estimates.zarr` holding this archive's results (written by a release
            # that kept one store per folder) stays its store
            shared = paths.run_dir / "estimates.zarr"
            if store_attributes(shared).get("archive_path") == str(archive.resolve()):
                return replace(paths, results_store=shared)
        return paths

    @property
    def owns_folder(self) -> bool:
        return self.archive.name == ARCHIVE_NAME

    @property
    def name(self) -> str:
        if not self.owns_folder:
            return self.archive.name.removesuffix(".zarr")
        # `archive.zarr` in the working directory: the directory's own name ("." has none)
        return self.run_dir.name or self.run_dir.resolve().name or "run"

    @property
    def results(self) -> Path:
        if self.results_store is not None:
            return self.results_store
        return self.run_dir / ("estimates.zarr" if self.owns_folder else f"{self.name}.estimates.zarr")

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / ("checkpoints" if self.owns_folder else f"{self.name}.checkpoints")

    def seed_checkpoints(self, seed: int) -> Path:
        return self.checkpoints / f"seed_{seed}"

    def figures(self, figures_root: str | Path) -> Path:
        return Path(figures_root) / self.name

