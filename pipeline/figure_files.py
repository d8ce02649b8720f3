"""Figure files: each figure as PNG and PDF (or the `formats` asked for), written by worker
processes while the caller draws.

    with FigureFiles(Path("figures/run"), progress="figures run") as files:  # a bar on stderr
        files.save(fig, "plane_kde_all")        # figures/run/plane_kde_all.png and .pdf
    files.names                                 # in the order saved, every file written
    FigureFiles(out, formats=("png", "svg"))    # PNG and SVG, no PDF

Writing is most of the figures stage's time: each format renders the figure anew, and each PDF
embeds a subset of its font (about 0.3 s). A figure pickles in milliseconds and renders to the
same bytes after the round trip, so workers write while the stage draws the next figure.
Imports only matplotlib, so a worker starts in about half a second.
"""

from __future__ import annotations

import os
import pickle
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from tqdm import tqdm

from pipeline.child_process import main_module_hidden

STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 6,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "pdf.fonttype": 42, "svg.fonttype": "none",
         "svg.hashsalt": "infoplane"}

# PNG is always written (the HTML report shows it); the others are vector versions beside it.
KNOWN_FORMATS = ("png", "pdf", "svg")
FORMATS = ("png", "pdf")
# the date a file was made, left out so that the same figure writes the same bytes
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def checked_formats(formats: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The formats of "png,svg" (or a sequence), PNG first; a ValueError names what is wrong."""
    given = formats.split(",") if isinstance(formats, str) else list(formats)
    given = [f.strip().lower().lstrip(".") for f in given]
    unknown = [f for f in given if f not in KNOWN_FORMATS]
    if unknown or "png" not in given:
        problem = f"unknown format(s) {', '.join(map(repr, unknown))}" if unknown else "png is missing"
        raise ValueError(f"figure formats {','.join(given)}: {problem}; give png and any of "
                         f"{', '.join(KNOWN_FORMATS[1:])}, e.g. png,pdf (the report shows the PNGs)")
    return tuple(f for f in KNOWN_FORMATS if f in given)


def save(fig: Figure, out_dir: Path, name: str, formats: tuple[str, ...] = FORMATS) -> None:
    """The figure in each format; a file of the same name in a format not asked for is removed,
    so that no vector version from an earlier run sits beside a newer PNG. The PDF embeds its
    fonts as TrueType (the style's `pdf.fonttype`): journals refuse matplotlib's default Type 3
    fonts; the SVG keeps its text as text (`svg.fonttype`), editable in a drawing program, and
    its element ids come from a fixed salt (`svg.hashsalt`)."""
    formats = checked_formats(formats)
    with plt.rc_context(STYLE):
        for ext in formats:
            fig.savefig(out_dir / f"{name}.{ext}", dpi=130, metadata=_NO_DATE.get(ext))
    for ext in set(KNOWN_FORMATS) - set(formats):
        (out_dir / f"{name}.{ext}").unlink(missing_ok=True)
    plt.close(fig)


def _save_pickled(pickled: bytes, out_dir: str, name: str, formats: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a worker only writes files
    save(pickle.loads(pickled), Path(out_dir), name, formats)


def default_workers() -> int:
    """One core for the caller's drawing, the others (at most 4) for writing."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class FigureFiles:
    """The figure files of one folder. `save` hands a figure to a worker and returns; leaving the
    `with` block (or `close`) waits for every file and raises the first writer's error.

    Parameters
    ----------
    out_dir : the folder the files go to (it must exist).
    workers : writer processes (default `default_workers()`); 0 writes each figure in `save`.
    progress : where given, a bar of that title on stderr counts the figures written; how many
        there will be is known once the caller has drawn the last (`close`).
    formats : the file formats of each figure (`checked_formats`), PNG and PDF by default.
    """

    def __init__(self, out_dir: Path, workers: int | None = None, progress: str | None = None,
                 formats: str | tuple[str, ...] = FORMATS):
        self.out_dir = Path(out_dir)
        self.formats = checked_formats(formats)
        self.names: list[str] = []
        self._workers = default_workers() if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None
        self._pending: list[Future] = []
        self._bar = None if progress is None else tqdm(
            desc=progress, unit="figure", mininterval=1.0, dynamic_ncols=True,
            bar_format="{desc}: {n_fmt} written, more being drawn [{elapsed}]")

    def save(self, fig: Figure, name: str) -> None:
        pickled = self._pickled(fig) if self._workers else None
        if pickled is None:
            save(fig, self.out_dir, name, self.formats)
            self._written()
        else:
            plt.close(fig)
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self._workers, mp_context=get_context("spawn"))
            with main_module_hidden():  # a worker may start here: never rerun the caller's script
                future = self._pool.submit(_save_pickled, pickled, str(self.out_dir), name, self.formats)
            future.add_done_callback(lambda done: done.cancelled() or done.exception() or self._written())
            self._pending.append(future)
        self.names.append(name)

    def _written(self) -> None:
        if self._bar is not None:
            self._bar.update()

    @staticmethod
    def _pickled(fig: Figure) -> bytes | None:
        """The figure pickled, or None where it holds what pickle cannot carry (a lambda tick
        formatter of one's own): such a figure is written in this process."""
        try:
            return pickle.dumps(fig)
        except (pickle.PicklingError, AttributeError, TypeError):
            return None

    def close(self) -> None:
        if self._bar is not None:  # every figure is drawn: the bar now has its end
            self._bar.total = len(self.names)
            self._bar.bar_format = None  # tqdm's own: n/total, elapsed<remaining, rate
            self._bar.refresh()
        try:
            for future in self._pending:
                future.result()
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending = []
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> FigureFiles:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:  # the caller's error goes on; files not started yet are not written
            self._shut_down()
