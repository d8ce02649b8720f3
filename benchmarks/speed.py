"""Estimators against plain references of the same formulas: `make bench` sections speed, memory, wide.

    python -m benchmarks.speed [--only speed,memory,wide]

speed: each estimator and its plain numpy/scipy reference (benchmarks/reference.py) on the same
arrays in the same process, best of 3; the speed-up and the largest relative difference of the
values. memory: the peak resident memory of one estimator call at n = 10000, 30000 and 60000,
each in a fresh process (the reference where its n x n matrices fit in memory). wide: the same
for binning of wide layers, where the layer itself is most of the memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

from benchmarks.common import DOCS, ROOT, best_of, machine, table, write_section
from pipeline.provenance import git_revision


def arrays(n: int, d: int, seed: int = 0):
    """SZT-like inputs (12 columns in [0, 1]), a tanh layer of width d, 10 classes."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(n, 12)), np.tanh(rng.normal(size=(n, d))).astype(np.float32),
            rng.integers(0, 10, n))


def cases():
    """(label, n x d, infoplane call, reference call) per row of the speed table."""
    import torch

    from benchmarks import reference as ref
    from pipeline.estimators import information_plane, mutual_information
    from pipeline.estimators.renyi import make_batches

    rows = []
    for d in (10, 256):
        x, t, y = arrays(4096, d)
        rows.append(("KDE upper, s2 = 0.1", f"4096 x {d}",
                     lambda x=x, t=t, y=y: information_plane(x, t, y, "kde"),
                     lambda t=t, y=y: ref.kde_reference(t, y)))
    for n, da, db in ((1000, 12, 10), (4096, 12, 10), (5000, 25, 25)):
        rng = np.random.default_rng(n)
        a, b = rng.normal(size=(n, da)), rng.normal(size=(n, db))
        b[:, 0] += a[:, 0]
        rows.append(("KSG I(X;T), k = 5", f"{n} x ({da}+{db})",
                     lambda a=a, b=b: mutual_information(a, b, "ksg"),
                     lambda a=a, b=b: ref.ksg_reference(a, b)))
    x, t, y = arrays(4096, 10)
    rows.append(("Renyi, 10 batches of 100, 300-width alignment", "4096 x 10",
                 lambda: information_plane(x, t, y, "renyi", sigma_x=2.5, n_candidates=300),
                 lambda: ref.renyi_reference(x, t, y, make_batches(4096, 100, 10, 0), 2.5, 300)))
    # the floor of a Renyi cell: its 40 eigenvalue problems (4 per batch) in one batched call,
    # against a loop of numpy calls over the same matrices
    gram = torch.rand(40, 100, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gram = gram @ gram.transpose(1, 2)
    rows.append(("Renyi eigenvalue floor: 40 symmetric 100 x 100", "-",
                 lambda: {"I": float(torch.linalg.eigvalsh(gram).sum())},
                 lambda: {"I": float(sum(np.linalg.eigvalsh(g).sum() for g in gram.numpy()))}))
    rows.append(("Renyi, fixed layer width (no search)", "4096 x 10",
                 lambda: information_plane(x, t, y, "renyi", sigma_x=2.5, sigma_t=1.0),
                 lambda: ref.renyi_reference(x, t, y, make_batches(4096, 100, 10, 0), 2.5, 300,
                                             width=1.0)))
    x, t, y = arrays(4096, 256)
    rows.append(("binning, 30 bins", "4096 x 256",
                 lambda: information_plane(x, t, y, "binning", n_bins=30),
                 lambda: ref.binning_reference(t, y, 30)))
    return rows


def largest_difference(fast, plain) -> float:
    """The largest relative difference over the values both return."""
    if not isinstance(fast, dict):
        fast, plain = {"I": fast}, {"I": plain}
    return max(abs(fast[k] - plain[k]) / max(abs(plain[k]), 1e-12) for k in plain if k in fast)


def speed() -> None:
    import torch

    rows = []
    for label, size, fast, plain in cases():
        t_fast, t_plain = best_of(fast), best_of(plain)
        rows.append([label, size, f"{1e3 * t_fast:.0f}", f"{1e3 * t_plain:.0f}",
                     f"{t_plain / t_fast:.1f}x", f"{largest_difference(fast(), plain()):.1e}"])
        print(rows[-1], flush=True)
    body = (f"Command: `python -m benchmarks.speed --only speed` (or `make bench`, section speed); "
            f"best of 3 calls, the same arrays for both, torch threads {torch.get_num_threads()}; "
            f"commit {git_revision()}; {machine()}. The references are the plain numpy/scipy code "
            "of `benchmarks/reference.py` (full distance matrices, loops over classes, widths and "
            "matrices, NPEET-style trees on one thread).\n\n"
            + table(["estimator", "n x d", "infoplane (ms)", "plain reference (ms)", "speed-up",
                     "largest relative difference"], rows))
    write_section(DOCS / "benchmarks.md", "speed", body)
    print(body)


MEMORY_CALLS = {  # name: (infoplane call, reference call or None), on arrays(n, 10)
    "KDE upper": ("information_plane(x, t, y, 'kde')", "ref.kde_reference(t, y)"),
    "KSG I(X;T)": ("mutual_information(x, t, 'ksg')", "ref.ksg_reference(x, t)"),
    "Renyi": ("information_plane(x, t, y, 'renyi', sigma_x=2.5)", None),
    "binning 30": ("information_plane(x, t, y, 'binning')", "ref.binning_reference(t, y)"),
}


def peak_memory(call: str, n: int, d: int = 10) -> dict[str, float]:
    """Peak resident memory (MB) of a fresh process making one call on `arrays(n, d)`, and its
    resident memory before it."""
    script = f"""
import json, time
from benchmarks import reference as ref
from benchmarks.common import reset_peak_memory, resident_mb
from benchmarks.speed import arrays
from pipeline.estimators import information_plane, mutual_information

x, t, y = arrays({n}, {d})
information_plane(x[:100], t[:100], y[:100], 'binning')  # imports and first-call set-up
base = resident_mb()
reset_peak_memory()
start = time.perf_counter()
{call}
print(json.dumps({{"base": base, "peak": resident_mb("VmHWM"), "seconds": time.perf_counter() - start}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(sizes: tuple[int, ...] = (10000, 30000, 60000), reference_limit_gb: float = 8.0) -> None:
    rows = []
    for name, (call, plain) in MEMORY_CALLS.items():
        for n in sizes:
            row = [name, n, _cell(peak_memory(call, n))]
            # the plain KDE holds about three n x n float64 matrices; the single-thread tree of
            # the plain KSG takes over ten minutes in 22 dimensions beyond n = 10000
            if plain is None:
                row.append("-")
            elif name == "KDE upper" and 3 * 8 * n * n / 1e9 > reference_limit_gb:
                row.append(f"not run: about {3 * 8 * n * n / 1e9:.0f} GB")
            elif name == "KSG I(X;T)" and n > 10000:
                row.append("not run: over 10 minutes")
            else:
                row.append(_cell(peak_memory(plain, n)))
            rows.append(row)
            print(rows[-1], flush=True)
    body = (f"Command: `python -m benchmarks.speed --only memory` (or `make bench`, section memory); "
            "one call on n x 10 (KSG: 12 + 10 dimensions) in a fresh process: the process's peak "
            "resident memory during the call (VmHWM, reset before it) and, in brackets, its resident "
            f"memory before the call (imports, data, a first small call); commit {git_revision()}; "
            f"{machine()}.\n\n"
            + table(["estimator", "n", "infoplane: peak memory, time", "plain reference: peak memory, time"],
                    rows))
    write_section(DOCS / "benchmarks.md", "memory", body)
    print(body)


WIDE_LAYERS = ((10000, 16384), (4000, 65536))  # a 64 x 16 x 16 and a 64 x 32 x 32 convolution


def wide_layers() -> None:
    """Binning of wide layers (convolutions: the layer is most of the memory), each call and its
    plain reference in a fresh process."""
    rows = []
    for n, d in WIDE_LAYERS:
        ours = peak_memory("information_plane(x, t, y, 'binning')", n, d)
        plain = peak_memory("ref.binning_reference(t, y)", n, d)
        ratio = (plain["peak"] - plain["base"]) / max(ours["peak"] - ours["base"], 1.0) \
            if "error" not in ours and "error" not in plain else float("nan")
        rows.append([n, d, f"{n * d * 4 / 1e6:.0f}", _cell(ours), _cell(plain), f"{ratio:.1f}x"])
        print(rows[-1], flush=True)
    body = (f"Command: `python -m benchmarks.speed --only wide` (or `make bench`, section wide); "
            "binning at 30 bins of one float32 layer of n samples x d units (tanh of normal draws; "
            "12 SZT-like input columns, 10 classes), one call in a fresh process: its peak resident "
            "memory (VmHWM, reset before the call), its resident memory before the call in brackets "
            "(imports and the arrays), and the ratio of what each call adds above that; commit "
            f"{git_revision()}; {machine()}.\n\n"
            + table(["n", "d", "layer (MB)", "infoplane: peak memory, time",
                     "plain reference: peak memory, time", "memory added: reference / infoplane"], rows))
    write_section(DOCS / "benchmarks.md", "wide", body)
    print(body)


def _cell(result: dict[str, float]) -> str:
    if "error" in result:
        return f"failed: {result['error'][:80]}"
    return f"{result['peak']:.0f} MB (baseline {result['base']:.0f}), {result['seconds']:.1f} s"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="speed,memory,wide")
    sections = parser.parse_args().only.split(",")
    if "speed" in sections:
        speed()
    if "memory" in sections:
        memory()
    if "wide" in sections:
        wide_layers()
