"""Reusable test helpers: tiny configs, running stages as subprocesses, comparing archives."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

from pipeline.config import ExperimentConfig, config_from_dict, load_config

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
TINY = ROOT / "configs" / "tiny.toml"


def import_examples(*names: str) -> list:
    """Modules of examples/ by name, imported with that folder first on sys.path only meanwhile
    (an example's name must not shadow a package the others import)."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(ROOT / "examples"))


def tiny_config(**overrides: object) -> ExperimentConfig:
    """configs/tiny.toml with dotted-key overrides, e.g. tiny_config(**{"train.n_epochs": 3})."""
    cfg = load_config(TINY)
    data = cfg.to_dict()
    for key, value in overrides.items():
        node = data
        *parents, last = key.split(".")
        for k in parents:
            node = node[k]
        node[last] = value
    return config_from_dict(data)


def run_stage(stage: str, *args: str, check: bool = True, timeout: float = 600,
              **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m stages.<stage>` from the project root, capturing output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", f"stages.{stage}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"stage {stage} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


INTERRUPTED = "interrupted: committed work is kept; run the same command again to resume"


def start_stage(stage: str, *args: str, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE) -> subprocess.Popen:
    """`python -m stages.<stage>` in a process group of its own, so that a test can signal the
    whole group as Ctrl-C (SIGINT) or a kill does; SIGINT at its default, as a terminal leaves
    it (a test run started in the background would hand it down ignored)."""
    return subprocess.Popen([sys.executable, "-m", f"stages.{stage}", *args], cwd=ROOT, text=True,
                            start_new_session=True, stdout=stdout, stderr=stderr,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def group_arrays(path: Path, group: str) -> dict[str, np.ndarray]:
    """Every array under `group` of a Zarr store, keyed by its path."""
    root = zarr.open_group(str(path), mode="r", use_consolidated=False)
    out = {}
    for name, arr in root[group].arrays():
        out[name] = np.asarray(arr[...])
    for name, sub in root[group].groups():
        for sub_name, arr in sub.arrays():
            out[f"{name}/{sub_name}"] = np.asarray(arr[...])
    return out


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
