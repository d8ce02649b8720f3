"""Compute every estimator entry over every archived cell, on Dask, into estimates.zarr.

    python -m stages.estimate --config configs/szt_tanh.toml [--scheduler tcp://host:8786]
    python -m stages.estimate --config configs/szt_tanh.toml configs/szt_relu.toml   # several
    python -m stages.estimate --config configs/tiny.toml --scheduler synchronous     # no Dask
    python -m stages.estimate --config configs/szt_relu.toml --only kde_upper_1e-1 --seeds 0 1 \
        --splits all --every 4                                   # part of the cells
"""

from pipeline.cli import base_parser, run_stage
from pipeline.config import load_config
from pipeline.estimate import Selection, main


def cli() -> None:
    parser = base_parser(__doc__.splitlines()[0], several_configs=True)
    parser.add_argument("--scheduler", default=None,
                        help="address of an existing Dask scheduler, or 'synchronous'")
    parser.add_argument("--scheduler-file", default=None, help="Dask scheduler file")
    parser.add_argument("--netcdf", action="store_true", help="also export estimates.nc")
    parser.add_argument("--only", nargs="+", default=None, metavar="ENTRY",
                        help="compute only these estimator entries ('fisher' for the Fisher traces)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="compute only these seeds")
    parser.add_argument("--splits", nargs="+", default=None, help="compute only these splits")
    parser.add_argument("--every", type=int, default=1, metavar="K",
                        help="compute only every K-th snapshot (and the last)")
    args = parser.parse_args()
    configs, args.config = args.config, args.config[0]

    def body(a, first_cfg) -> int:
        selection = Selection(only=a.only and tuple(a.only), seeds=a.seeds and tuple(a.seeds),
                              splits=a.splits and tuple(a.splits), every=a.every)
        codes = []
        for path in configs:  # every archive in turn; the first was loaded by run_stage
            cfg = first_cfg if path == configs[0] else load_config(path, a.overrides)
            codes.append(main(cfg, a.runs, scheduler=a.scheduler, scheduler_file=a.scheduler_file,
                              netcdf=a.netcdf, selection=selection))
        return max(codes)

    run_stage(body, args)


if __name__ == "__main__":
    cli()
