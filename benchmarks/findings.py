"""Write the numeric checks of the papers' findings into docs/results.md from finished runs.

    python -m benchmarks.findings --runs data/runs          # after make train/estimate/figures

Each section reads one run's results with the functions of pipeline.findings; runs that are
absent are skipped with a note. Figures are copied (PNG) into docs/figures/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.common import DOCS, table, write_section
from pipeline import findings as fd
from pipeline.archive import ArchiveReader
from pipeline.results import holding_values, masked, open_results, seed_mean
from pipeline.runs import RunPaths


def _load(runs: Path, name: str):
    paths = RunPaths.of(runs, name)
    results = open_results(paths.results)
    if results is None:
        return None, None
    return masked(results), ArchiveReader(paths.archive)


def _absent(what: str, runs: Path) -> None:
    """A section whose run is not under `runs`: said, and its text in docs/results.md kept."""
    print(f"skipped: {what} not found under {runs}; its section of docs/results.md is left as it is")


def _config(archive: ArchiveReader) -> SimpleNamespace:
    """A built-in run's stored config with attribute access (read as stored, never re-validated)."""
    return json.loads(json.dumps(archive.config), object_hook=lambda d: SimpleNamespace(**d))


def _small_copy(src: Path, dst: Path, longest: int = 1400) -> None:
    """Copy a PNG for the docs, shrunk so its longest side is at most `longest` pixels (the
    11-row estimator comparison is 900 kB at full size). Pillow comes with matplotlib."""
    from PIL import Image

    with Image.open(src) as image:
        image.thumbnail((longest, longest))
        image.save(dst, optimize=True)


def _copy(figures: Path, name: str, files: list[str]) -> list[str]:
    out = []
    for f in files:
        src = figures / name / f"{f}.png"
        if src.exists():
            (DOCS / "figures").mkdir(exist_ok=True)
            _small_copy(src, DOCS / "figures" / f"{name}_{f}.png")
            out.append(f"![{name} {f}](figures/{name}_{f}.png)")
    return out


def compression_section(runs: Path, figures: Path, name: str, estimator: str,
                        split: str = "all") -> str | None:
    results, archive = _load(runs, name)
    if results is None or estimator not in results.estimator.values:
        return _absent(f"run `{name}` with estimator `{estimator}`", runs)
    phase = fd.compression_phase(results, estimator, split)
    band = seed_mean(results.sel(estimator=estimator, split=split), "I_XT")
    peak, final = band.isel(epoch=band["mean"].fillna(-np.inf).argmax("epoch")), band.isel(
        epoch=fd.last_valid_index(band["mean"]))
    verdicts = [_verdict_words(results, estimator, split, rule) for rule in ("held_out", "interval")]
    rows = [[str(layer), f"{float(phase.peak_epoch_mean.sel(layer=layer)):.0f}",
             f"{float(phase.drop_mean.sel(layer=layer)):.3f} +- {float(phase.drop_std.sel(layer=layer)):.3f}",
             _interval(peak.sel(layer=layer)), _interval(final.sel(layer=layer)),
             *(words(layer) for words in verdicts)] for layer in results.layer.values]
    out = fd.output_information(results, estimator, archive.labels, split)
    cfg = _config(archive)
    seeds, snapshots = _coverage(results, estimator, split)
    text = (f"Run `{name}`: {cfg.train.n_epochs} epochs; estimator `{estimator}` on {seeds} of "
            f"{len(results.seed)} seeds and {snapshots} of {len(results.epoch)} snapshots, "
            f"`{results.parameters.sel(estimator=estimator).values}`, split `{split}`.\n\n"
            + table(["layer", "epoch of max I(X;T) (mean over seeds)", "drop max -> end (bits, mean +- sd)",
                     "I(X;T) at the peak of the seed mean [90% interval]",
                     "I(X;T) at the end [90% interval]", "compresses beyond the noise (held-out peak)",
                     "beyond the interval at the seed mean's peak"], rows)
            + f"\n\nOutput layer: final I(T;Y) = {out['final_mean']:.4f} +- {out['final_std']:.4f} bits "
            f"against H(Y) = {out['H_Y']:.4f} bits.\n\n"
            + "\n".join(_copy(figures, name, [f"plane_{estimator}_{split}", "training"])))
    return text


def _interval(band) -> str:
    """'mean [lo, hi]' of one cell of `pipeline.results.seed_mean`."""
    return f"{float(band['mean']):.3f} [{float(band.lo):.3f}, {float(band.hi):.3f}]"


def _verdict_words(results, estimator: str, split: str, rule: str):
    """layer -> the verdict of `fd.compresses` under `rule`, in words."""
    called = fd.compresses(results, estimator, split, rule)
    saturated = fd.saturated_at_both_ends(results, estimator, split, rule)
    return lambda layer: _called(called, saturated, layer)


def _called(called, saturated, layer) -> str:
    """A `compresses` verdict in words (the output layer is not judged)."""
    if layer not in called.layer.values:
        return ""
    value = float(called.sel(layer=layer))
    if bool(saturated.sel(layer=layer)):
        return "undetermined (saturated at the peak and the end)"
    return "undetermined (no interval)" if np.isnan(value) else ("yes" if value else "no")


def _coverage(results, estimator: str, split: str) -> tuple[int, int]:
    """Seeds and snapshots holding values of one entry (entries may be estimated on part)."""
    values = results.I_XT.sel(estimator=estimator, split=split)
    return int(holding_values(values, "seed").sum()), int(holding_values(values, "epoch").sum())


def _layers_where(called, keep) -> str:
    """The names of the layers whose verdict passes `keep`, comma-separated."""
    return ", ".join(str(k) for k, v in zip(called.layer.values, called.values, strict=True) if keep(v))


def comparison_section(runs: Path, figures: Path, name: str, split: str = "all") -> str | None:
    results, _ = _load(runs, name)
    if results is None:
        return _absent(f"run `{name}`", runs)
    shares = {rule: fd.compression_table(results, split, rule) for rule in fd.COMPRESSION_RULES}
    rows = []
    for e in results.estimator.values:
        seeds, snapshots = _coverage(results, e, split)
        if not seeds:
            continue
        verdicts = []
        for rule in fd.COMPRESSION_RULES:
            layers = fd.compresses(results, e, split, rule)
            share = shares[rule][e]
            open_ = _layers_where(layers, np.isnan)
            verdicts.append("undetermined (one seed, no intervals)" if np.isnan(share)
                            else f"{share:.0%} of {int(np.isfinite(layers).sum())} decided "
                                 f"({_layers_where(layers, lambda v: v == 1) or 'none'})"
                                 + (f"; undetermined: {open_}" if open_ else ""))
        rows.append([e, str(results.parameters.sel(estimator=e).values), seeds, snapshots, *verdicts,
                     f"{fd.dpi_share(results, e, split):.0%}"])
    return (f"Run `{name}`, split `{split}`.\n\n"
            + table(["entry", "parameters", "seeds", "snapshots",
                     "hidden layers compressing beyond the noise (90% interval of the seed mean at "
                     "the held-out peak above the one at the end; undetermined: saturated at both ends)",
                     "the same at the seed mean's own peak",
                     "hidden layers compressing by the 5% rule (mean over seeds drops > 5% of its peak)",
                     "DPI holds (cells)"], rows)
            + "\n\n" + "\n".join(_copy(figures, name, ["comparison"])))


def _path(curve, *points: str) -> str:
    """'a -> b -> c' of a curve over epochs at its first value, maximum and last valid value."""
    picks = {"first": lambda c: c.isel(epoch=0), "max": lambda c: c.max("epoch"), "last": fd.last_valid}
    return " -> ".join(f"{float(picks[p](curve)):.3f}" for p in points)


def phases_section(runs: Path, figures: Path, name: str, estimator: str = "compression",
                   split: str = "test") -> str | None:
    results, archive = _load(runs, name)
    if results is None or estimator not in results.estimator.values:
        return _absent(f"run `{name}` with estimator `{estimator}`", runs)
    thresholds = (0.02, 0.05, 0.10)
    counts = {(variable, t): fd.phase_counts(results, estimator, split, variable, t, "fraction")
              for variable in ("I_XT", "I_TY") for t in thresholds}
    for variable in ("I_XT", "I_TY"):
        counts[variable, "interval"] = fd.phase_counts(results, estimator, split, variable)
        counts[variable, "single"] = fd.phase_counts(results, estimator, split, variable, persist=1)

    def phases(variable: str, layer: str) -> str:
        # beyond the cells' intervals (held 3 snapshots, then on single ones), then per
        # threshold: the counts of every seed (comma-separated)
        return " / ".join(",".join("-" if np.isnan(v) else str(int(v))
                                   for v in counts[variable, t].sel(layer=layer).values)
                          for t in ("interval", "single", *thresholds))

    phase = fd.compression_phase(results, estimator, split)
    sel = results.sel(estimator=estimator, split=split).mean("seed")
    rows = [[str(layer), _path(sel.I_XT.sel(layer=layer), "first", "max", "last"),
             _path(sel.I_TY.sel(layer=layer), "first", "last"),
             f"{float(phase.peak_epoch_mean.sel(layer=layer)):.0f}",
             phases("I_XT", str(layer)), phases("I_TY", str(layer))]
            for layer in results.layer.values]
    cfg = _config(archive)
    history = archive.history(archive.seeds[0])
    return (f"Run `{name}`: {len(results.seed)} seed(s), {cfg.train.n_epochs} epochs, "
            f"{len(results.epoch)} snapshots, {cfg.archive.samples_per_split} {split} images; "
            f"`{estimator}` `{results.parameters.sel(estimator=estimator).values}`. Final test "
            f"accuracy {float(history['accuracy_test'][-1]):.3f}.\n\n"
            + table(["layer", "I(X;T) first -> max -> last (bits)", "I(T;Y) first -> last (bits)",
                     "epoch of max I(X;T)",
                     "phases in I(X;T) beyond the interval, held 3 snapshots / on single ones / at 2% / "
                     "5% / 10%",
                     "phases in I(T;Y) beyond the interval, held 3 snapshots / on single ones / at 2% / "
                     "5% / 10%"], rows)
            + "\n\nPhases: `pipeline.findings.phase_counts(results, estimator, split, variable)`: "
            "a move in one direction since the last turning point whose points leave the turning "
            "point's 90% interval (the cells' own) on 3 consecutive snapshots starts a new phase "
            "(`persist=1`: on single snapshots; `-`: the entry stores no intervals); with "
            "`rule=\"fraction\"`, a move of at least `min_change` (2%, 5% or 10% of the curve's range)."
            "\n\n"
            + "\n".join(_copy(figures, name, [f"mi_vs_epoch_{estimator}", f"plane_{estimator}_{split}"])))


def tensor_renyi_section(runs: Path, figures: Path, name: str, estimator: str = "renyi") -> str | None:
    results, archive = _load(runs, name)
    if results is None or estimator not in results.estimator.values:
        return _absent(f"run `{name}` with estimator `{estimator}`", runs)
    size = sum(f.stat().st_size for f in RunPaths.of(runs, name).archive.rglob("*") if f.is_file())
    sel = results.sel(estimator=estimator)
    bands = {(v, split): seed_mean(sel.sel(split=split), v)
             for v in ("I_XT", "I_TY") for split in ("train", "test")}

    def ends(variable: str, split: str, layer: str, *points: str) -> str:
        # the seed mean at the first and last snapshots with its 90% interval
        band = bands[variable, split].sel(layer=layer)
        where = {"first": 0, "last": int(fd.last_valid_index(band["mean"]))}
        return " -> ".join(_interval(band.isel(epoch=where[p])) for p in points)

    rows = [[str(layer), "x".join(map(str, archive.layer_shapes[str(layer)])),
             ends("I_XT", "train", layer, "first", "last"), ends("I_TY", "train", layer, "first", "last"),
             ends("I_TY", "test", layer, "last")]
            for layer in results.layer.values]
    history = archive.history(archive.seeds[0])
    cfg = _config(archive)
    shape = "x".join(map(str, archive.inputs.shape[1:]))
    return (f"Run `{name}`: {cfg.data.dataset} data ({len(archive.labels)} samples of {shape} recorded), "
            f"{cfg.train.n_epochs} epochs on `{cfg.train.device}`, {len(archive.layers)} recorded layers, "
            f"{cfg.archive.samples_per_split} samples per split in {cfg.archive.activation_dtype}; "
            f"archive {size / 2**20:.1f} MiB on disk. Final accuracy train "
            f"{float(history['accuracy_train'][-1]):.3f}, test {float(history['accuracy_test'][-1]):.3f}. "
            f"`{estimator}` "
            f"`{results.parameters.sel(estimator=estimator).values}`.\n\n"
            + table(["layer", "shape", "I(X;T) first -> last (train, bits) [90% interval]",
                     "I(T;Y) first -> last (train, bits) [90% interval]",
                     "I(T;Y) last (test, bits) [90% interval]"], rows)
            + "\n\nEstimate history: " + str(results.attrs.get("history", "")).replace("\n", "; ")
            + "\n\n" + "\n".join(_copy(figures, name, [f"plane_{estimator}_train",
                                                          f"mi_vs_epoch_{estimator}"])))


def fisher_section(runs: Path, figures: Path, name: str) -> str | None:
    results, _ = _load(runs, name)
    if results is None or not np.isfinite(results.fisher_trace).any():
        return _absent(f"Fisher traces of `{name}`", runs)
    peak = fd.fisher_peak(results)
    rows = [[str(layer), int(peak.peak_epoch.sel(layer=layer)),
             f"{float(peak.final_over_peak.sel(layer=layer)):.3f}"] for layer in results.layer.values]
    return (f"Run `{name}`:\n\n" + table(["layer", "epoch of max Fisher trace", "final / max"], rows)
            + "\n\n" + "\n".join(_copy(figures, name, ["fisher"])))


def renyi_mlp_section(runs: Path, figures: Path, name: str, estimator: str = "renyi") -> str | None:
    results, archive = _load(runs, name)
    if results is None or estimator not in results.estimator.values:
        return _absent(f"run `{name}` with estimator `{estimator}`", runs)
    params = json.loads(str(results.parameters.sel(estimator=estimator).values))
    batch = params.get("batch_size", 100)
    # the label kernel's entropy is the class entropy of a batch: its expectation at this size
    rng = np.random.default_rng(0)
    train = archive.split_index("train")
    batch_entropy = []
    for _ in range(200):
        counts = np.bincount(rng.choice(archive.labels[train], batch, replace=False))
        p = counts[counts > 0] / batch
        batch_entropy.append(float(-(p * np.log2(p)).sum()))
    rows = []
    for split in results.split.values:
        out = fd.output_information(results, estimator, archive.labels, str(split))
        phase = fd.compression_phase(results, estimator, str(split))
        held_out, at_peak = (_verdict_words(results, estimator, str(split), rule)
                             for rule in ("held_out", "interval"))
        fraction = fd.compresses(results, estimator, str(split), "fraction")
        hidden = fd.hidden_layers(results)
        rows.append([str(split), f"{out['final_mean']:.3f} +- {out['final_std']:.3f}",
                     f"{fd.dpi_share(results, estimator, str(split)):.0%}",
                     ", ".join(f"{layer}: {float(phase.drop_mean.sel(layer=layer)):.3f} "
                               f"({held_out(layer)}; at the seed mean's peak: {at_peak(layer)}; 5% rule: "
                               f"{'yes' if fraction.sel(layer=layer) == 1 else 'no'})"
                               for layer in hidden)])
    history = [archive.history(seed)["loss_test"] for seed in archive.seeds]
    stop = int(np.nanargmin(np.mean([h[: min(map(len, history))] for h in history], axis=0)))
    onset = fd.compression_phase(results, estimator, "train").peak_epoch_mean
    cfg = _config(archive)
    return (f"Run `{name}`: {len(results.seed)} seed(s), {cfg.train.n_epochs} epochs, "
            f"{len(results.epoch)} snapshots, {cfg.archive.samples_per_split} samples per split; "
            f"`{estimator}` `{json.dumps(params)}`.\n\n"
            + table(["split", f"final I(T;Y) of {fd.output_layer(results)} (bits)", "DPI holds (cells)",
                     "drop of I(X;T) from peak to end per hidden layer (bits; compresses beyond the 90% "
                     "interval of the seed mean at the held-out peak?; at the seed mean's own peak?; by "
                     "the 5% rule?)"], rows)
            + f"\n\nLabel-kernel entropy of a batch of {batch}: {np.mean(batch_entropy):.3f} bits (mean "
            "of 200 batches). Early stopping (minimum test loss): epoch "
            f"{stop}; compression onset (epoch of max I(X;T), train, mean over seeds): "
            + ", ".join(f"{k} {float(v):.0f}" for k, v in zip(onset.layer.values, onset.values, strict=True))
            + ".\n\n"
            + "\n".join(_copy(figures, name, [f"plane_{estimator}_train", f"plane_{estimator}_test"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="data/runs", type=Path)
    parser.add_argument("--figures", default="figures", type=Path)
    parser.add_argument("--tanh", default="szt_tanh_paper")
    parser.add_argument("--relu", default="szt_relu_paper")
    parser.add_argument("--mnist", default="mnist_mlp")
    parser.add_argument("--cnn", default="mnist_cnn_cpu")
    parser.add_argument("--vgg", default="cifar10_vgg16_cpu")
    parser.add_argument("--only", nargs="+", metavar="SECTION",
                        help="write these sections only (default: every section whose run is found)")
    args = parser.parse_args()
    sections = {
        "szt_tanh": lambda: compression_section(args.runs, args.figures, args.tanh, "binning_30"),
        "szt_relu": lambda: compression_section(args.runs, args.figures, args.relu, "binning_layer_100"),
        "szt_relu_kde": lambda: compression_section(args.runs, args.figures, args.relu, "kde_upper_1e-1"),
        "comparison": lambda: comparison_section(args.runs, args.figures, args.tanh),
        "fisher": lambda: fisher_section(args.runs, args.figures, args.tanh),
        "mnist_mlp": lambda: renyi_mlp_section(args.runs, args.figures, args.mnist),
        "fisher_mnist": lambda: fisher_section(args.runs, args.figures, args.mnist),
        "mnist_cnn": lambda: phases_section(args.runs, args.figures, args.cnn),
        "vgg16": lambda: tensor_renyi_section(args.runs, args.figures, args.vgg, "renyi"),
        "vgg16_unsmoothed": lambda: tensor_renyi_section(args.runs, args.figures, args.vgg,
                                                         "renyi_unsmoothed"),
    }
    unknown = set(args.only or ()) - set(sections)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {sorted(sections)}")
    chosen = {name: make() for name, make in sections.items() if args.only is None or name in args.only}
    written = {name: body for name, body in chosen.items() if body is not None}
    for name, body in written.items():
        write_section(DOCS / "results.md", name, body)
        print(body)
    print(json.dumps({k: len(v) for k, v in written.items()}))


if __name__ == "__main__":
    main()
