"""Compute every estimator entry over every archived cell, on Dask, into estimates.zarr.

    python -m stages.estimate --config configs/szt_tanh.toml [--scheduler tcp://host:8786]
    python -m stages.estimate --config configs/szt_tanh.toml configs/szt_relu.toml   # several
    python -m stages.estimate --config configs/tiny.toml --scheduler synchronous     # no Dask
    python -m stages.estimate --config configs/szt_relu.toml --only kde_upper_1e-1 --seeds 0 1 \
        --splits all --every 4 --layers 'dense*'                 # part of the cells
    python -m stages.estimate --archive runs/mine/archive.zarr [--config estimators.toml]
    python -m stages.estimate --archive /shared/run/archive.zarr --results mine/estimates.zarr
"""

from pipeline.cli import base_parser, guarded, refuse_results_without_archive, run_stage
from pipeline.cluster import start_worker_server
from pipeline.config import load_config


def cli() -> None:
    parser = base_parser(__doc__.splitlines()[0], several_configs=True, archive=True)
    parser.add_argument("--scheduler", default=None,
                        help="address of an existing Dask scheduler, or 'synchronous'")
    parser.add_argument("--scheduler-file", default=None, help="Dask scheduler file")
    parser.add_argument("--netcdf", action="store_true",
                        help="also export the store as netCDF beside it (estimates.nc)")
    parser.add_argument("--only", nargs="+", default=None, metavar="ENTRY",
                        help="compute only these estimator entries (names or patterns, e.g. 'binning_*'; "
                             "'fisher' for the Fisher traces)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="compute only these seeds")
    parser.add_argument("--splits", nargs="+", default=None, help="compute only these splits")
    parser.add_argument("--every", type=int, default=1, metavar="K",
                        help="compute only every K-th snapshot (and the last)")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="compute only these layers (names or patterns, e.g. 'conv*'; the Fisher "
                             "traces take every layer)")
    args = parser.parse_args()
    refuse_results_without_archive(args)
    options = {"scheduler": args.scheduler, "scheduler_file": args.scheduler_file, "netcdf": args.netcdf}
    if args.scheduler is None and args.scheduler_file is None:
        start_worker_server()  # the workers' import of the task code runs beside this process's
    from pipeline.estimate import Selection, archive_settings, estimate_archive, main

    def selection() -> Selection:
        return Selection(only=args.only and tuple(args.only), seeds=args.seeds and tuple(args.seeds),
                         splits=args.splits and tuple(args.splits), every=args.every,
                         layers=args.layers and tuple(args.layers))

    if args.archive:  # the config, if any, holds [estimate] and [estimators.*] tables
        if args.config and len(args.config) > 1:
            parser.exit(2, f"error: --archive takes one --config of estimator tables, got "
                           f"{len(args.config)}: merge their [estimators.*] tables into one file\n")

        def on_archive() -> int:
            settings = archive_settings(args.config[0] if args.config else None, args.overrides)
            return estimate_archive(args.archive, settings, selection=selection(), results=args.results,
                                    **options)
        guarded(on_archive)

    configs = args.config or [None]

    def body(a, first_cfg) -> int:
        codes = []
        for path in configs:  # every archive in turn; the first was loaded by run_stage
            cfg = first_cfg if path == configs[0] else load_config(path, a.overrides)
            codes.append(main(cfg, a.runs, selection=selection(), **options))
        return max(codes)

    run_stage(body, args)


if __name__ == "__main__":
    cli()
