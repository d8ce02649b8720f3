"""End-to-end checks of stored data: an archive's chunks against its commits' records, a results
store's done cells against their files.

    from pipeline.verify import verify
    verify("data/runs/szt_tanh/archive.zarr")     # [] when clean, else one line per problem
"""

from __future__ import annotations

from pathlib import Path

from pipeline.archive import ArchiveReader
from pipeline.results import verify_results
from pipeline.runs import is_results_store


def verify(path: str | Path, progress: bool = False) -> list[str]:
    """Damage found in an archive or a results store (told apart by the `done` mask);
    `progress`: a bar on stderr counts the bytes of the archive's chunks read."""
    path = Path(path)
    if is_results_store(path):
        return verify_results(path)
    return ArchiveReader(path).verify(progress)
