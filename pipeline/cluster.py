"""The Dask cluster the estimate stage runs on: its own LocalCluster, or an existing scheduler.

Imports nothing heavy at module level, so that a command can start the workers' forkserver
(`start_worker_server`) before it imports the rest of the pipeline: the server's import of the
task code (torch included) then runs beside the command's own imports.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError


def worker_environ() -> dict[str, Any]:
    """distributed's worker environment without MALLOC_TRIM_THRESHOLD_.

    Setting that variable turns off glibc's dynamic mmap threshold, so every large temporary
    (Gram matrices, distance matrices) becomes a fresh mmap with page faults: one 40-epoch Renyi
    chain of szt_tanh took 7.2 s in a LocalCluster worker with it and 2.2 s without (measured
    once, by hand, on 2 cores). The stage benchmark in docs/benchmarks.md runs without it.
    """
    import dask
    import distributed  # noqa: F401  (its import puts its defaults in dask's configuration)

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


PRELOADED = ["distributed", "pipeline.worker_server", "pipeline.tasks"]


def start_worker_server() -> bool:
    """Start the process that LocalCluster workers fork from, with the task code imported.

    A spawned worker imports the task code after the cluster starts (1.0-1.5 s on 2 cores,
    mostly torch), and that wait does not shrink with more workers. Started before the stage's
    own imports (`stages/estimate.py`; `estimate_archive` starts it too, for callers from
    Python), a forkserver imports it once beside them; every worker then forks from it with the
    code in memory (docs/benchmarks.md, section stage). The server starts with the workers'
    environment (`worker_environ`: one OpenMP and BLAS thread), since a forked worker inherits
    the server's. Idempotent: the server lives as long as the calling process and keeps the
    code it imported, so a notebook that edits `pipeline` itself restarts its kernel for the
    workers to see it (a user's own modules are imported afresh by each worker). Returns False
    where the platform has no forkserver (Windows): the cluster then spawns its workers.
    """
    import multiprocessing
    from multiprocessing import forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOADED)
    environ = {name: str(value) for name, value in worker_environ().items()}
    saved = {name: os.environ.get(name) for name in environ}
    os.environ.update(environ)
    try:
        forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    return True


def make_client(scheduler: str | None, scheduler_file: str | None, n_workers: int):
    """A Client on an existing cluster, or a LocalCluster of single-threaded worker processes
    (forked from `start_worker_server`'s process where the platform allows)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler_file or scheduler:
        return _connect(Client, scheduler, scheduler_file), None
    method = "forkserver" if start_worker_server() else "spawn"
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ(),
                          "distributed.worker.multiprocessing-method": method}):
        cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=":0")
    return Client(cluster), cluster


def dashboard_line(link: str | None, timeout_s: float = 2.0) -> str:
    """"dask dashboard: <link>" where the scheduler serves one there, else why not and the fix.

    distributed prints a link whatever it serves: without bokeh installed on the scheduler it
    leads to a page asking for it, and under `dask scheduler --no-dashboard` to "404 Not Found".
    A link this process cannot open for another reason (a gateway that asks for a login, a
    certificate, a slow network) is printed with that reason: a browser may still open it.
    """
    import urllib.error
    import urllib.request

    if not link:
        return "dask dashboard: none (the scheduler serves no web pages)"
    try:
        with urllib.request.urlopen(link, timeout=timeout_s) as page:
            body = page.read(4096)
    except urllib.error.HTTPError as err:
        if err.code != 404:
            return f"dask dashboard: {link} (not checked: HTTP {err.code} {err.reason})"
        return (f"dask dashboard: none at {link} (404 Not Found; a scheduler started with "
                "--no-dashboard serves none)")
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        if isinstance(reason, ConnectionRefusedError):
            return f"dask dashboard: none at {link} (nothing answers there)"
        return f"dask dashboard: {link} (not checked: {reason})"
    if b"needs bokeh" in body:
        return ("dask dashboard: none (the scheduler needs bokeh>=3.1 to serve it: "
                "pip install -e '.[dashboard]' where the scheduler runs)")
    return f"dask dashboard: {link}"


CONNECT_TIMEOUT_S = 10


def check_scheduler(scheduler: str | None, scheduler_file: str | None) -> None:
    """One line at once for a scheduler no client can reach: a missing scheduler file, or a TCP
    address without a port or with a host the resolver does not know (connecting would only
    fail after CONNECT_TIMEOUT_S). Called before any work; "synchronous" and None pass."""
    if scheduler_file and not Path(scheduler_file).is_file():
        raise ConfigError(f"--scheduler-file {scheduler_file} does not exist: start the scheduler "
                          "with `dask scheduler --scheduler-file FILE` first, or give its address")
    if scheduler and scheduler != "synchronous" and not scheduler_file:
        _check_address(scheduler)


def _connect(client_class, scheduler: str | None, scheduler_file: str | None):
    """A client of an existing scheduler, or one line saying why not within a bounded wait
    (`check_scheduler`, run before any work, has refused what cannot work)."""
    where = f"--scheduler-file {scheduler_file}" if scheduler_file else f"scheduler {scheduler}"
    try:
        if scheduler_file:
            return client_class(scheduler_file=scheduler_file, timeout=CONNECT_TIMEOUT_S)
        return client_class(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as err:
        raise ConfigError(f"cannot reach the Dask {where} within {CONNECT_TIMEOUT_S} s ({type(err).__name__}"
                          f": {str(err).splitlines()[0] if str(err) else 'no answer'}): check the address "
                          "(tcp://host:8786) and that the scheduler runs") from None


def _check_address(scheduler: str) -> None:
    """A TCP address no scheduler can have (no port, a host the resolver does not know)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    protocol, location = parse_address(scheduler, strict=False)
    if protocol not in ("tcp", "tls"):
        return
    try:
        host, _ = parse_host_port(location)
        socket.getaddrinfo(host, None)
    except ValueError as err:
        raise ConfigError(f"--scheduler {scheduler}: not a scheduler address ({err}); give it as "
                          "tcp://host:8786") from None
    except socket.gaierror as err:
        raise ConfigError(f"--scheduler {scheduler}: the host {host!r} is unknown here ({err.strerror}); "
                          "check the address (tcp://host:8786)") from None


# What a worker's answers are compared on: a difference in any of these can change a stored number.
COMPARED_CODE = ("git_revision", "infoplane", "python", "torch", "numpy", "scipy")


def _worker_probe():
    """The function `check_workers` runs on every worker. Made here, nested, so that cloudpickle
    ships it by value: it must reach a worker that cannot import `pipeline`, and say so there."""

    def probe(payloads: dict[str, bytes]) -> dict[str, Any]:
        import importlib

        try:
            importlib.import_module("pipeline.tasks")
        except Exception as err:  # noqa: BLE001 - whatever stops the import is the answer
            return {"import": f"{type(err).__name__}: {err}"}
        import cloudpickle

        from pipeline.cluster import code_here  # by name there: pipeline imports on this worker

        unloadable = {}
        for method, payload in payloads.items():
            try:
                cloudpickle.loads(payload)
            except Exception as err:  # noqa: BLE001
                unloadable[method] = f"{type(err).__name__}: {err}"
        return {"import": None, "unloadable": unloadable, "code": code_here()}

    return probe


def code_here() -> dict[str, str]:
    """The code a process runs, as `check_workers` compares it: infoplane's commit and the
    package versions (`pipeline.provenance`)."""
    from pipeline.provenance import git_revision, package_versions

    return {"git_revision": git_revision(), **package_versions()}


def check_workers(client, own: dict[str, Any], where: str) -> list[str]:
    """Before any task: every worker of `client` imports the task code and loads the estimators
    of one's own (`own`: method -> definition). Either failing is one ConfigError line; sent in
    a task instead, it fails to deserialize inside the worker's connection, where no task error
    reaches the stage, and the run waits forever. Returns one line per worker that runs other
    code than this process (another infoplane commit or numeric package version), for the stage
    to warn with. Waits for a first worker where the scheduler has none yet, saying so."""
    import cloudpickle  # as Dask ships them: a script's functions by value, a module's by name

    if not client.scheduler_info().get("workers"):
        print(f"waiting for a first worker at {where}", flush=True)
        client.wait_for_workers(1)
    answers = client.run(_worker_probe(), {name: cloudpickle.dumps(d) for name, d in own.items()})
    here, differing = code_here(), []
    for worker, answer in sorted(answers.items()):
        if answer["import"]:
            raise ConfigError(f"the Dask worker {worker} cannot import infoplane's task code "
                              f"({answer['import']}): install infoplane in the workers' environment, the "
                              "same commit as here (pip install -e <this checkout>, or the same wheel)")
        if answer["unloadable"]:
            method, why = next(iter(answer["unloadable"].items()))
            raise ConfigError(f"the Dask worker {worker} cannot load estimator method {method!r} ({why}): "
                              f"make its module {own[method].information_plane.__module__!r} importable "
                              "where the workers run (installed, or on their PYTHONPATH), or define the "
                              "function in the script that runs the stage")
        changed = [f"{key} {answer['code'].get(key)} (here {here[key]})" for key in COMPARED_CODE
                   if answer["code"].get(key) != here[key]]
        if changed:
            differing.append(f"the Dask worker {worker} runs other code than this process: "
                             f"{', '.join(changed)}; its cells may differ from this process's, whose "
                             "versions the store records")
    return differing
