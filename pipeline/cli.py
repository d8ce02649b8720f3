"""Shared command-line plumbing of the stages: config loading and one clear error per failure."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from pipeline.config import ExperimentConfig, load_config
from pipeline.errors import KnownFailure

DEFAULT_CONFIG = "configs/szt_tanh.toml"
STORAGE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)


def base_parser(description: str, several_configs: bool = False,
                archive: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    if several_configs:
        parser.add_argument("--config", nargs="+", default=None,
                            help=f"one or more experiment TOML files (default {DEFAULT_CONFIG})")
    else:
        parser.add_argument("--config", default=None, help=f"experiment TOML file (default {DEFAULT_CONFIG})")
    if archive:
        parser.add_argument("--archive", default=None, metavar="PATH",
                            help="work on this archive (any recording) instead of a config's run")
        parser.add_argument("--results", default=None, metavar="PATH",
                            help="with --archive: the results store, instead of the one beside the "
                                 "archive (estimates.zarr; <name>.estimates.zarr for <name>.zarr): for "
                                 "a read-only or shared archive")
    parser.add_argument("--runs", default="data/runs", help="directory holding one folder per run")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. train.n_epochs=50")
    return parser


def refuse_results_without_archive(args: argparse.Namespace) -> None:
    """`--results` places the store of an `--archive` run; a config's run keeps its own."""
    if args.results and not args.archive:
        print("error: --results goes with --archive (a config's run keeps its results in its run "
              "folder); add --archive PATH or leave --results out", file=sys.stderr)
        sys.exit(2)


def refuse_with_archive(args: argparse.Namespace, stage: str) -> None:
    """`--config` and `--set` mean nothing to a stage given `--archive`, which reads the archive
    and its results as stored: one line and exit 2, rather than leaving them out in silence."""
    given = [flag for flag, value in (("--config", args.config), ("--set", args.overrides)) if value]
    if args.archive and given:
        print(f"error: {stage} --archive reads the archive and its results as stored: "
              f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply there; leave "
              f"{'it' if len(given) == 1 else 'them'} out", file=sys.stderr)
        sys.exit(2)


PACKAGE = Path(__file__).resolve().parent


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning the pipeline gives, as a stage prints it: `warning: <message>`; Python's own
    form adds the file, line and source of the `warnings.warn` call, which tell a user nothing.
    Warnings from other packages keep Python's form."""
    ours = issubclass(category, UserWarning) and PACKAGE in Path(filename).resolve().parents
    python = warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(f"warning: {message}\n" if ours else python)


def guarded(body: Callable[[], int]) -> None:
    """Run `body` and exit with its code; known failures print one line and exit 2, the
    pipeline's warnings one `warning:` line each."""
    warnings.showwarning = show_warning
    try:
        code = body()
    except KeyboardInterrupt:
        print("interrupted: committed work is kept; run the same command again to resume",
              file=sys.stderr)
        _quiet_abandoned_writes()
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - every failure ends in a message and an exit code
        code = _report(err)
        _quiet_abandoned_writes()
        sys.exit(code)
    sys.exit(code)


def _quiet_abandoned_writes() -> None:
    """After the stage has said why it stops: zarr's writes still pending in its event loop
    (the other chunks of a write that hit a full disk) are destroyed at exit, and asyncio would
    log each one ("Task was destroyed but it is pending!") after the stage's one line."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _report(err: Exception) -> int:
    """Print what went wrong: one line for a known failure (exit 2), else the traceback (exit 1)."""
    if isinstance(err, KnownFailure):
        print(f"error: {err}", file=sys.stderr)
        return 2
    if isinstance(err, OSError) and err.errno in STORAGE_ERRORS:
        print(f"error: cannot write {err.filename or 'the output'}: {err.strerror}; free space or make "
              "the folder writable, then run the same command again (committed work is kept)",
              file=sys.stderr)
        return 2
    traceback.print_exception(err)
    print("error: an unexpected failure (traceback above); committed work is kept. Please report it, "
          "with the command and the traceback, in the project's issue tracker", file=sys.stderr)
    return 1


def run_stage(body: Callable[[argparse.Namespace, ExperimentConfig], int],
              args: argparse.Namespace) -> None:
    """Load the config and run `body`; known failures print one line and exit non-zero."""
    config = args.config[0] if isinstance(args.config, list) else args.config
    guarded(lambda: body(args, load_config(config or DEFAULT_CONFIG, args.overrides)))
