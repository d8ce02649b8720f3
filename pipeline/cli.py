"""Shared command-line plumbing of the stages: config loading and one clear error per failure."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.archive import ArchiveError
from pipeline.config import ConfigError, ExperimentConfig, load_config
from pipeline.data import DataError
from pipeline.results import ResultsError


def base_parser(description: str, several_configs: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    if several_configs:
        parser.add_argument("--config", nargs="+", default=["configs/szt_tanh.toml"],
                            help="one or more experiment TOML files")
    else:
        parser.add_argument("--config", default="configs/szt_tanh.toml", help="experiment TOML file")
    parser.add_argument("--runs", default="data/runs", help="directory holding one folder per run")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. train.n_epochs=50")
    return parser


def run_stage(body: Callable[[argparse.Namespace, ExperimentConfig], int],
              args: argparse.Namespace) -> None:
    """Load the config and run `body`; known failures print one line and exit non-zero."""
    try:
        cfg = load_config(args.config, args.overrides)
        code = body(args, cfg)
    except (ConfigError, DataError, ArchiveError, ResultsError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: committed work is kept; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(code)
