"""The base of every failure the stages report as one line (`pipeline.cli`).

Each module keeps its own error type (`ConfigError`, `ArchiveError`, ...); they share this base
so that the command-line plumbing recognises them without importing the modules that raise
them (the figures stage need not import torch, nor the train stage xarray).
"""


class KnownFailure(Exception):
    """A failure whose message names the problem and the fix: printed as one line, exit 2."""
