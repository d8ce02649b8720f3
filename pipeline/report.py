"""The figures stage: every figure of a run, and its HTML report, from results and metadata.

    python -m stages.figures --config configs/szt_tanh.toml [--seed-spread]
    from pipeline.report import main; main(cfg, runs_dir="data/runs", figures_dir="figures")

Never trains or estimates. Missing or partial results give a message and the remaining
figures (training curves and gradients come from the archive alone).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import figures as F
from pipeline.archive import ArchiveReader, split_indices
from pipeline.config import ExperimentConfig
from pipeline.results import ResultsError, masked, open_results


def szt_ib_curve(betas: np.ndarray | None = None) -> np.ndarray:
    """The IB curve of the SZT task's p(x, y): x uniform over the 4096 patterns, y its label."""
    from pipeline.data import szt_patterns
    from pipeline.ib import ib_curve

    _, y = szt_patterns()
    p_x = np.full(len(y), 1 / len(y))
    p_y_given_x = np.eye(2)[y]
    return ib_curve(p_x, p_y_given_x, np.logspace(-2, 2, 30) if betas is None else betas, n_clusters=64)


def main(cfg: ExperimentConfig, runs_dir: str | Path = "data/runs", figures_dir: str | Path = "figures",
         seed_spread: bool = False) -> int:
    run_dir = Path(runs_dir) / cfg.name
    out = Path(figures_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    saved: list[str] = []
    messages: list[str] = []
    archive = ArchiveReader(run_dir / "archive.zarr")
    seeds = archive.seeds
    stop = None
    histories = [h for h in map(archive.history, seeds) if len(h["loss_train"])]
    if histories:
        fig, stop = F.training_figure(histories)
        F.save(fig, out, "training", saved)
    if seeds and len(archive.committed_epochs(seeds[0])) > 1:
        g_mean, g_std = archive.gradient_stats(seeds[0])
        F.save(F.gradients_figure(archive.committed_epochs(seeds[0]), g_mean, g_std, archive.layers),
               out, "gradients", saved)
    try:
        results = open_results(run_dir / "estimates.zarr")
    except ResultsError as err:
        results, _ = None, messages.append(str(err))
    if results is None:
        messages.append(f"no results store at {run_dir / 'estimates.zarr'}: run `make estimate` for "
                        "the information-plane figures")
    else:
        results = masked(results)  # cells not computed yet are NaN, not fill values
        wanted = [e for e in cfg.estimators if e not in results.estimator.values]
        if wanted:
            messages.append(f"estimator entries {wanted} are in the config but not in the results: "
                            "run `make estimate`")
        present = [e for e in results.estimator.values if not np.isnan(results.I_XT.sel(estimator=e)).all()]
        for e in results.estimator.values:
            if e not in present:
                messages.append(f"estimator {e}: every value is NaN (see the store's `warnings`); skipped")
        results = results.sel(estimator=present)
        ib = szt_ib_curve() if cfg.data.dataset == "szt" else None
        for estimator in present:
            for split in results.split.values:
                if np.isnan(results.I_XT.sel(estimator=estimator, split=split)).all():
                    messages.append(f"estimator {estimator}: no values on split {split} (estimated "
                                    "on part of the cells); its plane is not drawn")
                    continue
                index = split_indices(archive.split, str(split))
                limits = F.saturation_limits(len(index), archive.labels[index])
                fig = F.information_plane_figure(results, estimator, split, limits, seed_spread, stop, ib)
                F.save(fig, out, f"plane_{estimator}_{split}", saved)
                F.save(F.dpi_figure(results, estimator, split), out, f"dpi_{estimator}_{split}", saved)
            F.save(F.mi_vs_epoch_figure(results, estimator), out, f"mi_vs_epoch_{estimator}", saved)
        if present:
            F.save(F.comparison_figure(results), out, "comparison", saved)
        if "fisher_trace" in results and not np.isnan(results.fisher_trace).all():
            F.save(F.fisher_figure(results), out, "fisher", saved)
    estimators = {} if results is None else {
        str(e): str(results.parameters.sel(estimator=e).values) for e in results.estimator.values}
    attrs = {} if results is None else dict(results.attrs)
    attrs["archive_provenance"] = archive.attrs.get("provenance")
    report = F.write_report(out, cfg.name, saved, json.loads(cfg.to_json()), attrs, estimators, messages)
    for message in messages:
        print(f"note: {message}")
    print(f"wrote {len(saved)} figures (PNG and PDF) and {report}")
    return 0



