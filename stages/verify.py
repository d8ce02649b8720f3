"""Check a run's archive and results store end to end against what their commits wrote.

A sound archive is then described: its layers, and per seed its snapshots, status and the
environments (torch version, threads, device) of the sessions that trained it.

    python -m stages.verify --config configs/szt_tanh.toml      # or: make verify
    python -m stages.verify --archive runs/mine/archive.zarr     # and the estimates.zarr beside it
                            [--results mine/estimates.zarr]   # or this results store
    python -m stages.verify path/to/archive.zarr path/to/estimates.zarr
"""

import sys
from pathlib import Path

from pipeline.archive import ArchiveReader
from pipeline.cli import (
    DEFAULT_CONFIG,
    base_parser,
    guarded,
    refuse_results_without_archive,
    refuse_with_archive,
)
from pipeline.config import load_config
from pipeline.runs import RunPaths, is_results_store
from pipeline.verify import verify


def cli() -> None:
    parser = base_parser(__doc__.splitlines()[0], archive=True)
    parser.add_argument("paths", nargs="*", type=Path, help="archive.zarr or estimates.zarr folders")
    args = parser.parse_args()
    refuse_with_archive(args, "verify")
    refuse_results_without_archive(args)

    def body() -> int:
        paths = list(args.paths)
        if not paths:
            run = (RunPaths.from_archive(args.archive, args.results) if args.archive else
                   RunPaths.of(args.runs, load_config(args.config or DEFAULT_CONFIG, args.overrides).name))
            paths = [run.archive] + ([run.results] if run.results.exists() else [])
        damage = [line for path in paths for line in verify(path, progress=True)]
        for line in damage:
            print(f"damaged: {line}", file=sys.stderr)
        print(f"{len(damage)} problem(s) in {', '.join(map(str, paths))}")
        if damage:
            return 2
        for path in paths:  # what a sound archive holds: seeds, snapshots, training environments
            if not is_results_store(path):
                print(ArchiveReader(path).describe())
        return 0
    guarded(body)


if __name__ == "__main__":
    cli()
