"""The figures stage: every figure of a run, and its HTML report, from results and metadata.

    python -m stages.figures --config configs/szt_tanh.toml [--no-intervals]
    python -m stages.figures --archive runs/mine/archive.zarr
    from pipeline.report import report_archive; report_archive("runs/mine/archive.zarr")

Never trains or estimates. Missing or partial results give a message and the remaining
figures (training curves and gradients come from the archive alone). A results store that cannot
be read, or belongs to another archive, ends the stage with one line before any figure is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline import figures as F
from pipeline import findings
from pipeline.archive import ArchiveReader
from pipeline.config import ConfigError, ExperimentConfig
from pipeline.figure_files import FORMATS, FigureFiles, checked_formats
from pipeline.interactive import interactive_sections, write_plotly_js
from pipeline.methods_text import methods_section
from pipeline.report_html import write_report
from pipeline.results import MASKED, belongs_to, foreign_store, masked, open_results, parameters_key
from pipeline.runs import RunPaths
from pipeline.sweeps import sweep_figure, sweep_views


def szt_ib_curve(betas: np.ndarray | None = None) -> np.ndarray:
    """The IB curve of the SZT task's p(x, y): x uniform over the 4096 patterns, y its label."""
    from pipeline.data import szt_patterns
    from pipeline.ib import ib_curve

    _, y = szt_patterns()
    p_x = np.full(len(y), 1 / len(y))
    p_y_given_x = np.eye(2)[y]
    return ib_curve(p_x, p_y_given_x, np.logspace(-2, 2, 30) if betas is None else betas, n_clusters=64)


def main(cfg: ExperimentConfig, runs_dir: str | Path = "data/runs", figures_dir: str | Path = "figures",
         intervals: bool = True, formats: str | tuple[str, ...] = FORMATS) -> int:
    """Every figure of a built-in run (its config's estimator entries are checked for)."""
    return report_archive(RunPaths.of(runs_dir, cfg.name), figures_dir, intervals, list(cfg.estimators),
                          formats)


def report_archive(paths: RunPaths | str | Path, figures_dir: str | Path = "figures",
                   intervals: bool = True, wanted: list[str] | None = None,
                   formats: str | tuple[str, ...] = FORMATS, results: str | Path | None = None) -> int:
    """Every figure of an archive and its results store (beside it, or at `results`) into
    `figures_dir/<run>/`, with index.html.

    Parts the archive lacks (history, gradient statistics, weights) and results not computed yet
    are skipped, each with one note saying why. `formats`: each figure's files, PNG and PDF by
    default ("png,svg", "png" alone; `pipeline.figure_files.checked_formats`).
    """
    try:
        formats = checked_formats(formats)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    command = "make estimate"  # a config's run; an archive's own is estimated by its path
    if not isinstance(paths, RunPaths):
        paths = RunPaths.from_archive(paths, results)
        command += f" ARCHIVE={paths.archive}" + (f" ARGS='--results {results}'" if results else "")
    messages: list[str] = []
    archive = ArchiveReader(paths.archive)
    # an unreadable or foreign results store stops here, before a figure of the last report is replaced
    results = _results(paths, archive, messages, wanted or [], command)
    out = paths.figures(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    # written by worker processes while this one goes on; a bar on stderr counts them
    with FigureFiles(out, progress=f"figures {archive.name}", formats=formats) as files:
        stop = _archive_figures(archive, files, messages)
        if results is not None:
            _results_figures(results, archive, files, messages, intervals, stop)
        summary = None if results is None else findings.run_summary(results)
        interactive = {} if results is None else interactive_sections(results)
        methods = None if results is None else _methods(results, archive, out, intervals)
    estimators = {} if results is None else {  # every parameter with its default, where stored
        str(e): str(params) for e, params in zip(results.estimator.values,
                                                 results[parameters_key(results)].values, strict=True)}
    attrs = {} if results is None else {k: v for k, v in results.attrs.items() if k != MASKED}
    attrs["archive_provenance"] = archive.attrs.get("provenance")
    attrs["training_environments"] = archive.training_environments() or "not recorded (archive schema < 1.2)"
    if interactive:
        write_plotly_js(out)
    report = write_report(out, archive.name, files.names, archive.config or _recording(archive), attrs,
                          estimators, messages, summary, final_accuracy(archive), interactive, methods,
                          formats)
    for message in messages:
        print(f"note: {message}")
    print(f"wrote {len(files.names)} figures ({' and '.join(f.upper() for f in formats)}) and {report}")
    return 0


def final_accuracy(archive: ArchiveReader) -> dict[str, float]:
    """The last logged accuracy of each split, mean over seeds (empty without a history)."""
    out = {}
    for split in ("train", "test"):
        finals = [h[f"accuracy_{split}"][np.isfinite(h[f"accuracy_{split}"])] for h in map(archive.history,
                                                                                          archive.seeds)]
        finals = [f[-1] for f in finals if f.size]
        if finals:
            out[split] = float(np.mean(finals))
    return out


def _methods(results, archive: ArchiveReader, out: Path, intervals: bool) -> tuple[str, str]:
    """The methods paragraph and its BibTeX, also written beside the report."""
    samples = {str(split): len(archive.split_index(str(split))) for split in results.split.values}
    n_classes = len(np.unique(archive.labels)) if archive.labels is not None else None
    text, bib = methods_section(results, samples, n_classes, intervals)
    (out / "methods.txt").write_text(text + "\n")
    (out / "references.bib").write_text(bib)
    return text, bib


def _recording(archive: ArchiveReader) -> dict[str, Any]:
    """What the report shows of an archive that no built-in config produced."""
    return {key: archive.attrs.get(key) for key in ("name", "output_layer", "splits", "parts", "model")} | {
        "layers": {name: list(shape) for name, shape in archive.layer_shapes.items()}}


def _archive_figures(archive: ArchiveReader, files: FigureFiles, messages: list[str]) -> int | None:
    """Training curves and gradient statistics, from the archive alone; the early-stopping epoch."""
    seeds = archive.seeds
    stop = None
    histories = [h for h in map(archive.history, seeds) if np.isfinite(h["loss_train"]).any()]
    if histories:
        fig, stop = F.training_figure(histories)
        files.save(fig, "training")
    else:
        messages.append("no training history in the archive (Recorder.log / snapshot(loss=...)): "
                        "no training curves")
    grads = archive.gradient_stats(seeds[0]) if seeds else None
    epochs = archive.committed_epochs(seeds[0]) if seeds else np.zeros(0)
    if grads is None or not (np.isfinite(grads[0]) & (grads[0] > 0)).any() or len(epochs) < 2:
        messages.append("no gradient statistics in the archive (Recorder(gradients=True) and "
                        "gradient_step()): no gradient figure")
    else:
        files.save(F.gradients_figure(epochs, grads[0], grads[1], archive.layers), "gradients")
    return stop


def _results(paths: RunPaths, archive: ArchiveReader, messages: list[str], wanted: list[str],
             command: str = "make estimate"):
    """The results store with uncomputed cells masked, or None (and a note naming `command`)
    when there is none. A store that cannot be read, or belongs to another archive, is a
    ResultsError."""
    results = open_results(paths.results)
    if results is None:
        messages.append(f"no results store at {paths.results}: run `{command}` for the "
                        "information-plane figures")
        return None
    if not belongs_to(results.attrs, archive.identity, archive.attrs.get("training_hash")):
        raise foreign_store(paths.results, results.attrs, paths.archive, f"run `{command}`")
    results = masked(results)  # cells not computed yet are NaN, not fill values
    missing = [e for e in wanted if e not in results.estimator.values]
    if missing:
        messages.append(f"estimator entries {missing} are in the config but not in the results: "
                        "run `make estimate`")
    present = [e for e in results.estimator.values if not np.isnan(results.I_XT.sel(estimator=e)).all()]
    for e in results.estimator.values:
        if e in present:
            continue
        if "done" in results and not results.done.sel(estimator=e).any():  # `--only` left it out
            messages.append(f"estimator {e}: no cell computed yet (`make estimate` computes them); skipped")
        else:
            messages.append(f"estimator {e}: every value is NaN (see the store's `warnings`); skipped")
    return results.sel(estimator=present)


def _results_figures(results, archive: ArchiveReader, files: FigureFiles, messages: list[str],
                     intervals: bool, stop: int | None) -> None:
    """Planes, DPI and MI-vs-epoch per estimator entry, the comparison and the Fisher traces."""
    config = archive.config or {}
    ib = szt_ib_curve() if config.get("data", {}).get("dataset") == "szt" else None
    planes = F.plane_views(results)
    for estimator in results.estimator.values:
        for split in results.split.values:
            if np.isnan(results.I_XT.sel(estimator=estimator, split=split)).all():
                messages.append(f"estimator {estimator}: no values on split {split} (estimated "
                                "on part of the cells); its plane is not drawn")
                continue
            if (estimator, split) not in planes:
                messages.append(f"estimator {estimator} ({split}): no I(T;Y) values (an archive without "
                                "labels); no plane, I(X;T) against epochs only")
                continue
            index = archive.split_index(str(split))
            limits = F.saturation_limits(len(index), archive.split_labels(index))
            fig = F.information_plane_figure(results, estimator, split, limits, intervals, stop, ib)
            files.save(fig, f"plane_{estimator}_{split}")
            if F.dpi_rate(results, estimator, split) > 0:
                files.save(F.dpi_figure(results, estimator, split), f"dpi_{estimator}_{split}")
            else:
                messages.append(f"estimator {estimator} ({split}): the data-processing inequality "
                                "holds in every cell of the seed mean; no DPI figure")
        files.save(F.mi_vs_epoch_figure(results, estimator), f"mi_vs_epoch_{estimator}")
    if planes:
        files.save(F.comparison_figure(results), "comparison")
    for sweep, split, name in sweep_views(results):
        files.save(sweep_figure(results, sweep, split), name)
    if "fisher_trace" in results and not np.isnan(results.fisher_trace).all():
        files.save(F.fisher_figure(results), "fisher")
