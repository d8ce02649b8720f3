"""Memory and time of recording large snapshots: the Recorder against a plain loop (`make bench`
section recording).

    python -m benchmarks.recording [--samples 2000,4000,8000,16000]

Each case runs in a fresh process: a convolutional layer of 64 x 32 x 32 float32 units on n
probe images (n x 256 KiB a snapshot) and the model's 10 outputs, two snapshots. The plain loop
is what a hand-written recorder does: `capture` every layer, then write each whole layer into a
zarr array of the archive's chunking. Peak memory is the process's resident high-water mark
(VmHWM, reset once the model and the probe inputs exist), and for the Recorder also that of its
writer process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks.common import DOCS, ROOT, machine, table, write_section
from pipeline.provenance import git_revision

CASE = """
import json, resource, tempfile, time
import numpy as np, torch, zarr
from torch import nn
from benchmarks.common import reset_peak_memory, resident_mb
from pipeline.archive import CHUNK_BYTES
from pipeline.record import Recorder, capture

n, how = {n}, {how!r}
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 32 * 32, 10))
x, y = torch.randn(n, 3, 32, 32), np.arange(n) % 10
scratch = tempfile.TemporaryDirectory()  # removed at exit, failed or not: snapshots take GBs
folder = scratch.name
base = resident_mb()
reset_peak_memory()
start = time.perf_counter()
if how == "recorder":
    with Recorder(folder + "/archive.zarr", model, ["0", "3"], x, labels=y) as rec:
        for epoch in range(2):
            rec.snapshot(epoch)
else:
    root = zarr.open_group(folder + "/plain.zarr", mode="w")
    for epoch in range(2):
        for layer, values in capture(model, x, ["0", "3"]).items():
            rows = max(1, CHUNK_BYTES // values[0].nbytes)
            root.create_array(f"{{layer}}_{{epoch}}", shape=values.shape, dtype="float32",
                              chunks=(rows, *values.shape[1:]))[:] = values
seconds = time.perf_counter() - start
writer = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({{"base": base, "peak": resident_mb("VmHWM"), "writer": writer, "seconds": seconds}}))
"""


def run_case(n: int, how: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CASE.format(n=n, how=how)], cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(samples: tuple[int, ...] = (2000, 4000, 8000, 16000)) -> None:
    rows = []
    for n in samples:
        snapshot_mb = n * 64 * 32 * 32 * 4 / 2**20
        rec, plain = run_case(n, "recorder"), run_case(n, "plain")
        extra_rec, extra_plain = rec["peak"] - rec["base"], plain["peak"] - plain["base"]
        rows.append([n, f"{snapshot_mb:.0f}", f"{extra_rec:.0f} (writer {rec['writer']:.0f})",
                     f"{extra_plain:.0f}", f"{extra_rec / extra_plain:.2f}",
                     f"{rec['seconds']:.1f}", f"{plain['seconds']:.1f}",
                     f"{rec['seconds'] / plain['seconds']:.2f}"])
        print(rows[-1], flush=True)
    body = (f"Command: `python -m benchmarks.recording` (or `make bench`, section recording); two "
            "snapshots of a 64 x 32 x 32 convolution and a 10-unit head on n probe images, probe "
            "batch 2048, in a fresh process each, one after the other with no training between "
            "them, so the Recorder's seconds include waiting at the end for its writer to drain "
            "(in a training loop the writer works while training goes on). Extra memory: the "
            "process's peak resident memory above its memory once the model and inputs exist (MB); "
            "the Recorder's writer process in brackets (its whole peak). The plain loop captures "
            "each snapshot whole and writes it into zarr in the same process. Commit "
            f"{git_revision(paths=('pipeline',))}; {machine()}.\n\n"
            + table(["n", "snapshot (MB)", "Recorder: extra memory (MB)", "plain loop: extra memory (MB)",
                     "ratio", "Recorder (s)", "plain loop (s)", "ratio"], rows))
    write_section(DOCS / "benchmarks.md", "recording", body)
    print(body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="2000,4000,8000,16000")
    main(tuple(int(n) for n in parser.parse_args().samples.split(",")))
