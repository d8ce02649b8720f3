"""The figures of a results store drawn and written: files written by worker processes against
written in the drawing process, side by side, with the bytes of the two compared.

    python -m benchmarks.figures            # or: make bench (section figures)

The store is synthetic, of a paper run's size (4 entries, 5 seeds, 2 splits, 100 epochs, 6
layers), so the section needs no training; `report._results_figures` draws what the stage draws
from results (planes, DPI maps, MI against epochs, the comparison, the Fisher traces).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.common import DOCS, machine, table, write_section

ENTRIES = {"binning_30": {"method": "binning", "n_bins": 30}, "kde_upper": {"method": "kde"},
           "renyi": {"method": "renyi"}, "ksg": {"method": "ksg"}}
LAYERS = ["dense1", "dense2", "dense3", "dense4", "dense5", "softmax"]
# what the figures read of an archive: 4096 samples in each split, two balanced classes
ARCHIVE = SimpleNamespace(config=None, split_index=lambda split: np.arange(4096),
                          split_labels=lambda index: index % 2)


def synthetic_store(n_seeds: int = 5, n_epochs: int = 100):
    """A done store whose deeper layers carry less, with seed noise, intervals and Fisher traces."""
    from pipeline.results import template

    epochs = np.unique(np.geomspace(1, 8000, n_epochs).astype(int))
    ds = template(ENTRIES, list(range(n_seeds)), ["train", "test"], np.r_[0, epochs], LAYERS,
                  [10, 7, 5, 4, 3, 2], {"config_name": "bench"})
    rng = np.random.default_rng(0)
    depth = np.linspace(6, 1, len(LAYERS))
    ds["I_XT"][:] = depth + rng.normal(0, 0.2, ds.I_XT.shape)
    ds["I_TY"][:] = 0.15 * depth + rng.normal(0, 0.03, ds.I_TY.shape)
    for name in ("I_XT", "I_TY"):
        ds[f"{name}_lo"], ds[f"{name}_hi"] = ds[name] - 0.1, ds[name] + 0.1
    ds["done"][:] = True
    ds["fisher_trace"][:] = rng.uniform(1, 2, ds.fisher_trace.shape)
    return ds


def draw_all(results, out: Path, workers: int, formats: tuple[str, ...]) -> tuple[float, list[str]]:
    """Seconds to draw and write every results figure into `out`, and the names written."""
    from pipeline.figure_files import FigureFiles
    from pipeline.report import _results_figures

    out.mkdir(parents=True)
    started = time.perf_counter()
    with FigureFiles(out, workers=workers, formats=formats) as files:
        _results_figures(results, ARCHIVE, files, [], True, None)
    return time.perf_counter() - started, files.names


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from pipeline.figure_files import FORMATS, default_workers
    from pipeline.provenance import git_revision

    results = synthetic_store()
    workers = default_workers()
    rows = []
    for formats in (FORMATS, ("png",), ("png", "svg")):
        with tempfile.TemporaryDirectory() as tmp:
            plain, names = draw_all(results, Path(tmp) / "plain", 0, formats)
            pooled, _ = draw_all(results, Path(tmp) / "pooled", workers, formats)
            files = [f"{name}.{ext}" for name in names for ext in formats]
            same = sum((Path(tmp) / "plain" / f).read_bytes() == (Path(tmp) / "pooled" / f).read_bytes()
                       for f in files)
        rows.append([",".join(formats) + (" (default)" if formats == FORMATS else ""), len(names),
                     f"{plain:.1f}", workers, f"{pooled:.1f}", f"{plain / pooled:.2f}",
                     f"{same} of {len(files)}"])
    body = ("Command: `python -m benchmarks.figures` (or `make bench`, section figures); every "
            "results figure the figures stage draws (planes, DPI maps, MI against epochs, the "
            "comparison, Fisher traces) in each set of formats (`make figures ARGS=\"--formats "
            "...\"`) from a synthetic store of "
            f"{len(ENTRIES)} entries, {results.sizes['seed']} seeds, {results.sizes['split']} splits, "
            f"{results.sizes['epoch']} epochs and {len(LAYERS)} layers, first written in the "
            "drawing process (`FigureFiles(workers=0)`), then by worker processes while the next "
            "figure is drawn (the default; the workers' start included). The last column compares "
            "the two runs' files byte for byte. "
            f"Commit {git_revision(paths=('pipeline',))}; {machine()}.\n\n"
            + table(["formats", "figures", "written in the drawing process (s)", "workers",
                     "written by workers (s)", "speed-up", "identical files"], rows))
    write_section(DOCS / "benchmarks.md", "figures", body)
    print(body)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()
