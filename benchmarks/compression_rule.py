"""How often `compresses` and `phase_counts` call compression: `make bench` section compression_rule.

    python -m benchmarks.compression_rule [--only curves,phases,default]   # 10 s, 1 min, 2 min

Seed-mean I(X;T) curves of known shape over 92 snapshots (as many as the default run keeps):
a rise of 3 bits over the first 30 snapshots, then a plateau (no compression: every call is a
false one) or a linear fall by 0.5, 1 or 2 bits to the last snapshot (compression: the share
called is the rule's power). Every seed's curve carries noise of standard deviation 1 bit with
one of three structures: independent at every snapshot (an estimator whose noise is fresh at
each epoch), a per-seed offset of sd 1 plus independent noise of sd 1 (seeds that differ as a
whole), and AR(1) noise with correlation 0.9 between neighbouring snapshots (slow wandering).
Every rule of `compresses` (90% intervals; 5% of the peak) on 2, 4 and 8 seeds, each cell
from independent curves. Nothing here was tuned: the rules are measured as they are.

`phases`: `count_phases` on curves with 0 to 3 true phases (flat; a rise; a rise and a fall;
rise, fall, rise) under calibrated 90% intervals, for 1, 2 and 3 consecutive snapshots
(`persist`) asked to lie beyond the turning point's interval, at 92 and 274 snapshots.

`default`: the default config (`configs/szt_tanh.toml`) trained and estimated by its stages, as
`make all` runs them, and every rule's verdict per entry and hidden layer.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import DOCS, machine, stage_seconds, table, write_section
from pipeline.findings import COMPRESSION_RULES, compresses, count_phases
from pipeline.provenance import git_revision
from pipeline.results import open_results, template

N_SNAPSHOTS, RISE_END, LEVEL, REPEATS = 92, 30, 3.0, 400
NOISES = ("independent", "seed offset", "AR(1) 0.9")
DROPS = (0.0, 0.5, 1.0, 2.0)
SEEDS = (2, 4, 8)


def trend(drop: float) -> np.ndarray:
    """Rise to LEVEL bits by snapshot RISE_END, then fall linearly by `drop` bits to the end."""
    index = np.arange(N_SNAPSHOTS)
    rise = LEVEL * np.minimum(index / RISE_END, 1.0)
    return rise - drop * np.clip((index - RISE_END) / (N_SNAPSHOTS - 1 - RISE_END), 0.0, 1.0)


def noise(rng: np.random.Generator, shape: tuple[int, int, int], kind: str) -> np.ndarray:
    """(seed, snapshot, curve) noise of sd 1 bit a seed, of the structure `kind`."""
    seeds, snapshots, curves = shape
    if kind == "independent":
        return rng.standard_normal(shape)
    if kind == "seed offset":
        return rng.standard_normal((seeds, 1, curves)) + rng.standard_normal(shape)
    walk = np.empty(shape)
    walk[:, 0] = rng.standard_normal((seeds, curves))
    for e in range(1, snapshots):
        walk[:, e] = 0.9 * walk[:, e - 1] + np.sqrt(1 - 0.81) * rng.standard_normal((seeds, curves))
    return walk


def called_share(curves: np.ndarray, rule: str) -> float:
    """The share of `curves` (seed, snapshot, curve) that `compresses` calls compressing, each
    curve stored as one hidden layer of a results store (plus an output layer it leaves out)."""
    seeds, snapshots, n = curves.shape
    layers = [f"h{i}" for i in range(n)] + ["out"]
    ds = template({"entry": {"method": "binning"}}, list(range(seeds)), ["all"], np.arange(snapshots),
                  layers, [2] * len(layers), {})
    ds["I_XT"][0, :, 0, :, :n] = curves
    ds["I_XT"][0, :, 0, :, n] = 1.0
    ds["I_TY"][:] = 0.5
    ds["done"][:] = True
    return float(compresses(ds, "entry", rule=rule).mean())


def measure(seed: int = 0) -> list[list[object]]:
    rng = np.random.default_rng(seed)
    rows = []
    for kind in NOISES:
        for n_seeds in SEEDS:
            row: list[object] = [kind, n_seeds]
            for rule in COMPRESSION_RULES:
                for drop in DROPS:
                    shape = (n_seeds, N_SNAPSHOTS, REPEATS)
                    curves = trend(drop)[None, :, None] + noise(rng, shape, kind)
                    row.append(f"{called_share(curves, rule):.0%}")
            rows.append(row)
            print(rows[-1], flush=True)
    return rows


PHASE_SHAPES = {  # name: (true phase count, curve over snapshot fraction u in [0, 1])
    "flat": (0, lambda u: np.zeros_like(u)),
    "rise": (1, lambda u: 6 * np.minimum(u / 0.33, 1)),
    "rise, fall": (2, lambda u: np.where(u < 0.33, 6 * u / 0.33, 6 - 4 * (u - 0.33) / 0.67)),
    "rise, fall, rise": (3, lambda u: np.where(u < 0.33, 6 * u / 0.33, np.where(
        u < 0.66, 6 - 4 * (u - 0.33) / 0.33, 2 + 4 * (u - 0.66) / 0.34))),
}
PERSISTS = (1, 2, 3)


def phase_row(shape: str, kind: str, snapshots: int, rng: np.random.Generator) -> list[object]:
    """For one curve shape and noise: per `persist`, the share of curves whose phase count is
    the true one and the mean count, with calibrated 90% intervals (value +- 1.645 sd)."""
    truth, curve = PHASE_SHAPES[shape]
    values = curve(np.linspace(0, 1, snapshots))[None, :, None] + noise(rng, (1, snapshots, REPEATS), kind)
    row: list[object] = [shape, kind, snapshots]
    for persist in PERSISTS:
        counts = np.array([count_phases(v, lo=v - 1.645, hi=v + 1.645, persist=persist)
                           for v in values[0].T])
        row.append(f"{np.mean(counts == truth):.0%} ({counts.mean():.2f})")
    return row


RULE_CURVES = 4000  # flat curves the choice of `persist` reads: its share's sd is below 0.4%


def false_phase_shares(rng: np.random.Generator) -> dict[int, float]:
    """Per `persist`: the share of flat curves (92 snapshots, independent noise, calibrated
    90% intervals) in which `count_phases` finds any phase."""
    flat = rng.standard_normal((RULE_CURVES, 92))
    return {p: float(np.mean([count_phases(v, lo=v - 1.645, hi=v + 1.645, persist=p) > 0 for v in flat]))
            for p in PERSISTS}


def phases_section() -> None:
    rng = np.random.default_rng(1)
    shares = false_phase_shares(rng)
    chosen = next(p for p in PERSISTS if shares[p] <= 0.05)
    rows = [phase_row(shape, kind, snapshots, rng) for snapshots in (92, 274)
            for kind in ("independent", "AR(1) 0.9") for shape in PHASE_SHAPES]
    body = (f"Command: `python -m benchmarks.compression_rule --only phases`; `count_phases` with "
            f"intervals of +-1.645 noise sd (calibrated 90%), noise sd 1, curves of 6 bits' range, "
            f"{REPEATS} curves a row. Rule: the fewest consecutive snapshots (`persist`) for which at "
            f"most 5% of {RULE_CURVES} flat curves (92 snapshots, independent noise) show any phase: "
            + ", ".join(f"persist {p}: {v:.1%}" for p, v in shares.items())
            + f", so {chosen}; the rows below were not used to choose it; {stamp()}.\n\n"
            + table(["shape", "noise", "snapshots",
                     *(f"persist {p}: share with the true count (mean count)" for p in PERSISTS)], rows))
    write_section(DOCS / "estimators.md", "phase-rule", body)
    print(body)


def stamp() -> str:
    return f"commit {git_revision()}; {datetime.date.today().isoformat()}; {machine()}"


def curves_section() -> None:
    rows = measure()
    header = ["noise", "seeds"] + [f"{rule}: {'no drop (false calls)' if d == 0 else f'drop {d} bits'}"
                                   for rule in COMPRESSION_RULES for d in DROPS]
    body = (f"Command: `python -m benchmarks.compression_rule --only curves` (or `make bench`, section "
            f"compression_rule); {REPEATS} independent sets of curves a cell, {N_SNAPSHOTS} snapshots, "
            f"rise of {LEVEL} bits over the first {RISE_END}, noise sd 1 bit a seed; {stamp()}.\n\n"
            + table(header, rows))
    write_section(DOCS / "estimators.md", "compression-rule", body)
    print(body)


def verdict(value: float) -> str:
    return "undetermined" if np.isnan(value) else ("yes" if value else "no")


def default_section() -> None:
    """Every rule's verdicts on the default run, trained and estimated in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        where = ["--config", "configs/szt_tanh.toml", "--runs", tmp]
        stage_seconds(["stages.train", *where])
        stage_seconds(["stages.estimate", *where])
        results = open_results(Path(tmp) / "szt_tanh" / "estimates.zarr")
    rows, agree, decided = [], 0, 0
    for entry in results.estimator.values:
        calls = {rule: compresses(results, str(entry), "all", rule) for rule in COMPRESSION_RULES}
        for layer in calls["held_out"].layer.values:
            values = [float(calls[rule].sel(layer=layer)) for rule in COMPRESSION_RULES]
            rows.append([str(entry), str(layer), *map(verdict, values)])
            if not np.isnan(values[:2]).any():
                decided += 1
                agree += values[0] == values[1]
    body = (f"Command: `python -m benchmarks.compression_rule --only default`: `configs/szt_tanh.toml` "
            f"(4 seeds, {results.sizes['epoch']} snapshots) trained and estimated as `make all` does, "
            f"split all; the held-out and interval rules agree on {agree} of the {decided} layers both "
            f"decide; {stamp()}.\n\n"
            + table(["entry", "layer", *COMPRESSION_RULES], rows))
    write_section(DOCS / "estimators.md", "compression-rule-default", body)
    print(body)


def main(only: tuple[str, ...] = ("curves", "phases", "default")) -> None:
    if "curves" in only:
        curves_section()
    if "phases" in only:
        phases_section()
    if "default" in only:
        default_section()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="curves,phases,default", help="any of curves, phases, default")
    main(tuple(parser.parse_args().only.split(",")))
