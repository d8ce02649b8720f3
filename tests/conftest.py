"""Fixtures shared by the test modules."""

import fcntl
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import TINY, run_stage


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, request) -> Callable[..., Path]:
    """`tiny_trained(runs, *args)`: the tiny config trained by `make train` with `args` (its flags,
    e.g. "--set", "seeds=[0]"), copied into the runs folder `runs`, which it returns.

    Each distinct `args` is trained once a test session, by whichever test process asks first
    under an exclusive lock; the others wait for it and copy. Tests whose subject is training
    itself run the stage instead.
    """
    shared = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):  # a pytest-xdist process: each has its own folder
        shared = shared.parent  # under the session's, which they share

    def trained(runs: Path, *args: str) -> Path:
        key = hashlib.sha1("\0".join(args).encode()).hexdigest()[:12]
        cache = shared / f"tiny_trained_{key}"
        with open(shared / f"tiny_trained_{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (cache / "complete").exists():
                shutil.rmtree(cache, ignore_errors=True)
                run_stage("train", "--config", str(TINY), "--runs", str(cache / "runs"), *args)
                (cache / "complete").touch()
        shutil.copytree(cache / "runs", runs, dirs_exist_ok=True)
        return Path(runs)

    return trained
