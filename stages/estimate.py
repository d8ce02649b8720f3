"""Compute every estimator entry over every archived cell, on Dask, into estimates.zarr.

    python -m stages.estimate --config configs/szt_tanh.toml [--scheduler tcp://host:8786]
    python -m stages.estimate --config configs/tiny.toml --scheduler synchronous   # no Dask
"""

from pipeline.cli import base_parser, run_stage
from pipeline.estimate import main


def cli() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--scheduler", default=None,
                        help="address of an existing Dask scheduler, or 'synchronous'")
    parser.add_argument("--scheduler-file", default=None, help="Dask scheduler file")
    parser.add_argument("--netcdf", action="store_true", help="also export estimates.nc")
    args = parser.parse_args()
    run_stage(lambda a, cfg: main(cfg, a.runs, scheduler=a.scheduler,
                                  scheduler_file=a.scheduler_file, netcdf=a.netcdf), args)


if __name__ == "__main__":
    cli()
