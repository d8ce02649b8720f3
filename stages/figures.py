"""Draw information planes, comparisons and diagnostics of a run into figures/<run>/.

    python -m stages.figures --config configs/szt_tanh.toml [--no-intervals] [--figures figures]
    python -m stages.figures --formats png,svg                       # each figure as PNG and SVG
    python -m stages.figures --archive runs/mine/archive.zarr      # any archive, results beside it
    python -m stages.figures --archive /shared/run/archive.zarr --results mine/estimates.zarr
    python -m stages.figures --compare runs/a/archive.zarr runs/b/archive.zarr   # runs side by side
    python -m stages.figures --compare runs/a/archive.zarr mine/b_estimates.zarr # or a --results store
"""

import matplotlib

matplotlib.use("Agg")  # files only; the library leaves the backend to its caller

from pipeline.cli import (  # noqa: E402
    base_parser,
    guarded,
    refuse_results_without_archive,
    refuse_with_archive,
    run_stage,
)
from pipeline.compare_runs import compare_runs  # noqa: E402
from pipeline.figure_files import FORMATS  # noqa: E402
from pipeline.report import main, report_archive  # noqa: E402


def cli() -> None:
    parser = base_parser(__doc__.splitlines()[0], archive=True)
    parser.add_argument("--figures", default="figures", help="output root (figures/<run>/)")
    parser.add_argument("--no-intervals", dest="intervals", action="store_false",
                        help="leave out the 90%% intervals of the points (seed t or the cells' own)")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help="each figure's files: png and any of pdf, svg (default %(default)s)")
    parser.add_argument("--compare", nargs="+", default=None, metavar="RUN",
                        help="draw these runs' planes side by side on shared axes into "
                             "figures/<run>_vs_<run>/; each run is an archive (its results store "
                             "beside it) or a results store written with --results")
    args = parser.parse_args()
    if args.compare:
        guarded(lambda: compare_runs(args.compare, args.figures, args.formats))
    refuse_with_archive(args, "figures")
    refuse_results_without_archive(args)
    if args.archive:
        guarded(lambda: report_archive(args.archive, args.figures, args.intervals, formats=args.formats,
                                       results=args.results))
    run_stage(lambda a, cfg: main(cfg, a.runs, a.figures, a.intervals, a.formats), args)


if __name__ == "__main__":
    cli()
