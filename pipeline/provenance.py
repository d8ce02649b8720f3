"""Provenance recorded with every archive and results store: package versions, git revision."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "zarr", "xarray", "dask", "distributed")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        versions["infoplane"] = importlib.metadata.version("infoplane")
    except importlib.metadata.PackageNotFoundError:
        versions["infoplane"] = "source"
    return versions


def version_changes(before: dict[str, str], after: dict[str, str]) -> str:
    """The packages whose versions differ, as "torch 2.14.1 -> 2.15.0, ..." ("" when none)."""
    return ", ".join(f"{name} {before.get(name, 'not recorded')} -> {after.get(name, 'not recorded')}"
                     for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name))


def git_revision(paths: tuple[str, ...] = ()) -> str:
    """HEAD of the project's checkout, with `+dirty` when it has uncommitted changes (under
    `paths` only, where given: a benchmark that writes tracked docs asks about `pipeline`)."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def training_environment(device: str | torch.device | None = "cpu") -> dict[str, object]:
    """What decides whether a seed's training repeats bit for bit: torch's version, its thread
    count (float reductions are summed in another order with another count), the device and
    the determinism switches. Recorded once per training session of each seed. `device` None:
    no torch model (activations recorded as arrays)."""
    import torch  # here, not at the top: the estimate and figure stages need no torch for provenance

    env: dict[str, object] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(), "machine": platform.machine(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    }
    if device is None:
        return {**env, "device": "no torch model (activations as arrays)"}
    device = torch.device(device)
    env.update(device=str(device), deterministic_algorithms=torch.are_deterministic_algorithms_enabled())
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cudnn_deterministic"] = bool(torch.backends.cudnn.deterministic)
        env["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return env


def provenance() -> dict[str, object]:
    return {
        "versions": package_versions(),
        "git_revision": git_revision(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
    }
