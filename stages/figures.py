"""Draw information planes, comparisons and diagnostics of a run into figures/<run>/.

    python -m stages.figures --config configs/szt_tanh.toml [--seed-spread] [--figures figures]
"""

from pipeline.cli import base_parser, run_stage
from pipeline.report import main


def cli() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--figures", default="figures", help="output root (figures/<run>/)")
    parser.add_argument("--seed-spread", action="store_true", help="error bars over seeds")
    args = parser.parse_args()
    run_stage(lambda a, cfg: main(cfg, a.runs, a.figures, a.seed_spread), args)


if __name__ == "__main__":
    cli()
