"""Compute every estimator entry over every archived cell, on Dask, into estimates.zarr.

    python -m stages.estimate --config configs/szt_tanh.toml [--scheduler tcp://host:8786]
    python -m stages.estimate --config configs/szt_tanh.toml configs/szt_relu.toml   # several
    python -m stages.estimate --config configs/tiny.toml --scheduler synchronous     # no Dask
"""

from pipeline.cli import base_parser, run_stage
from pipeline.config import load_config
from pipeline.estimate import main


def cli() -> None:
    parser = base_parser(__doc__.splitlines()[0], several_configs=True)
    parser.add_argument("--scheduler", default=None,
                        help="address of an existing Dask scheduler, or 'synchronous'")
    parser.add_argument("--scheduler-file", default=None, help="Dask scheduler file")
    parser.add_argument("--netcdf", action="store_true", help="also export estimates.nc")
    args = parser.parse_args()
    configs, args.config = args.config, args.config[0]

    def body(a, first_cfg) -> int:
        codes = []
        for path in configs:  # every archive in turn; the first was loaded by run_stage
            cfg = first_cfg if path == configs[0] else load_config(path, a.overrides)
            codes.append(main(cfg, a.runs, scheduler=a.scheduler, scheduler_file=a.scheduler_file,
                              netcdf=a.netcdf))
        return max(codes)

    run_stage(body, args)


if __name__ == "__main__":
    cli()
