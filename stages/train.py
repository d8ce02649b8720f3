"""Train every seed of an experiment and archive its activations.

    python -m stages.train --config configs/szt_tanh.toml [--set train.n_epochs=100] [--force]
"""

from pipeline.cli import base_parser, run_stage
from pipeline.train import main


def cli() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="delete the run and retrain it")
    args = parser.parse_args()
    run_stage(lambda a, cfg: main(cfg, a.runs, force=a.force), args)


if __name__ == "__main__":
    cli()
