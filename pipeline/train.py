"""Training: every seed of an experiment, writing its snapshots into the activation archive.

    python -m stages.train --config configs/szt_tanh.toml        # or: make train
    from pipeline.train import main; main(cfg, runs_dir="data/runs")

Resumable: at every snapshot the model, optimiser and RNG states are checkpointed before the
snapshot is committed, so a run killed at any moment restarts from its last committed snapshot
and ends with the same archive content as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.archive import (
    SPLITS,
    ArchiveError,
    ArchiveReader,
    Samples,
    choose_samples,
    consolidate,
    create_archive,
    remove_litter,
    snapshot_epochs,
)
from pipeline.child_process import exit_with_parent
from pipeline.config import ConfigError, ExperimentConfig
from pipeline.data import SplitData, load_dataset
from pipeline.models import build_model, recorded_layers
from pipeline.provenance import provenance
from pipeline.record import NonFiniteActivations, Recorder, match_layers, recording_spec
from pipeline.runs import RunPaths
from pipeline.writer import lock_file, lock_seed

EVAL_BATCH = 2048
EXPLODED_FACTOR = 100  # a loss over 100 x ln(n_classes) is reported as exploded


@dataclass(frozen=True)
class SeedResult:
    seed: int
    status: str  # finished | diverged | skipped
    message: str
    seconds: float


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                    y: torch.Tensor, batch_size: int, generator: torch.Generator,
                    after_backward: Callable[[], None] | None = None) -> float:
    """One pass over shuffled mini-batches; returns the mean training loss over batches."""
    model.train()
    order = torch.randperm(len(y), generator=generator)
    total, n = 0.0, 0
    for start in range(0, len(y), batch_size):
        batch = order[start:start + batch_size].to(x.device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        total += loss.item() * len(batch)
        n += len(batch)
    return total / n


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy on a whole split, in evaluation mode (no noise, BN frozen)."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(y), EVAL_BATCH):
        logits = model(x[start:start + EVAL_BATCH])
        target = y[start:start + EVAL_BATCH]
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return loss / len(y), correct / len(y)


def _make_optimizer(cfg: ExperimentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # foreach: one fused update over all tensors (the per-tensor loop dominates small nets)
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                weight_decay=cfg.train.weight_decay, foreach=True)
    return torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                           weight_decay=cfg.train.weight_decay, foreach=True)


def model_spec(cfg: ExperimentConfig) -> dict[str, Any]:
    """How the Fisher estimator rebuilds a built-in run's network (pipeline.models factories)."""
    return {"factory": cfg.model.factory or cfg.model.architecture, "config": dataclasses.asdict(cfg.model)}


def recording(cfg: ExperimentConfig, samples: Samples) -> dict[str, Any]:
    """What a built-in run records, as keywords of `recording_spec` and `Recorder` alike."""
    return {"splits": {name: np.flatnonzero(samples.split == code) for code, name in enumerate(SPLITS)},
            "name": cfg.name, "epochs": snapshot_epochs(cfg.archive, cfg.train.n_epochs),
            "n_epochs": cfg.train.n_epochs, "weights": cfg.archive.store_weights, "gradients": True,
            "activation_dtype": cfg.archive.activation_dtype, "dataset_index": samples.dataset_index,
            "model_spec": model_spec(cfg),
            "extra": {"config": cfg.to_dict(), "training_hash": cfg.training_hash()}}


def recorder(cfg: ExperimentConfig, paths: RunPaths, seed: int, model: nn.Module, samples: Samples,
             optimizer: torch.optim.Optimizer | None = None,
             generator: torch.Generator | None = None, device: str = "cpu") -> Recorder:
    """The Recorder of one seed of a built-in run: the config's layers, schedule and parts."""
    return Recorder(
        paths.archive, model, recorded_layers(model, cfg.model),
        torch.from_numpy(samples.inputs).to(device), samples.labels, seed=seed, optimizer=optimizer,
        generators=[generator] if generator is not None else [], batch_size=EVAL_BATCH,
        nonfinite=cfg.archive.nonfinite, **recording(cfg, samples))


@dataclass
class Trainer:
    """One seed's model, optimiser and data on its device; `history()` evaluates both splits."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @classmethod
    def build(cls, cfg: ExperimentConfig, seed: int, data: SplitData) -> Trainer:
        device = torch.device(cfg.train.device)
        torch.manual_seed(seed)
        model = build_model(cfg.model, data.input_shape, data.n_classes).to(device)
        tensors = [torch.from_numpy(a).to(device) for a in (data.x_train, data.y_train, data.x_test,
                                                             data.y_test)]
        return cls(model, _make_optimizer(cfg, model), torch.Generator().manual_seed(seed), *tensors)

    def history(self) -> dict[str, float]:
        loss_train, acc_train = evaluate(self.model, self.x_train, self.y_train)
        loss_test, acc_test = evaluate(self.model, self.x_test, self.y_test)
        return {"loss_train": loss_train, "loss_test": loss_test, "accuracy_train": acc_train,
                "accuracy_test": acc_test}


def train_seed(cfg: ExperimentConfig, seed: int, runs_dir: str | Path, position: int = 0,
               threads: int = 0, data: SplitData | None = None) -> SeedResult:
    """Train one seed to the end, resuming from its last committed snapshot."""
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    paths = RunPaths.of(runs_dir, cfg.name)
    data = data or load_dataset(cfg.data)
    trainer = Trainer.build(cfg, seed, data)
    if not cfg.archive.enabled:  # benchmarks only: the same loop without recording
        status, message = _train_epochs(cfg, seed, trainer, Unrecorded(), position)
        return SeedResult(seed, status, message, time.perf_counter() - t0)
    archive = ArchiveReader(paths.archive)
    rec = recorder(cfg, paths, seed, trainer.model, archive_samples(archive), trainer.optimizer,
                   trainer.generator, cfg.train.device)
    if rec.finished:
        rec.close()
        return SeedResult(seed, "skipped", f"already {rec.status}", 0.0)
    with rec:
        status, message = _train_epochs(cfg, seed, trainer, rec, position)
        rec.close(status, message)
    return SeedResult(seed, status, message, time.perf_counter() - t0)


def _train_epochs(cfg: ExperimentConfig, seed: int, trainer: Trainer, rec: Recorder,
                  position: int) -> tuple[str, str]:
    """The epoch loop: train, evaluate, snapshot on schedule; stops at a non-finite loss or layer."""
    schedule = {int(e) for e in snapshot_epochs(cfg.archive, cfg.train.n_epochs)}
    start = rec.resume()
    # A loss this far above chance (the uniform predictor's ln C) has exploded, even if finite.
    exploded_above = EXPLODED_FACTOR * math.log(max(int(trainer.y_train.max()) + 1, 2))
    warning = ""
    bar = tqdm(total=cfg.train.n_epochs, initial=max(start, 0), position=position, leave=True,
               desc=f"{cfg.name} seed {seed}", unit="epoch", mininterval=2.0, dynamic_ncols=True)
    try:
        if start < 0:
            rec.log(0, **trainer.history())
            if 0 in schedule:
                rec.snapshot(0)
            start = 0
        for epoch in range(start + 1, cfg.train.n_epochs + 1):
            tracked = epoch in schedule  # gradient statistics only where a snapshot keeps them
            batch_loss = train_one_epoch(trainer.model, trainer.optimizer, trainer.x_train,
                                         trainer.y_train, cfg.train.batch_size, trainer.generator,
                                         rec.gradient_step if tracked and rec.recording else None)
            history = trainer.history()
            rec.log(epoch, **history)
            bar.update(1)
            bar.set_postfix(loss=f"{history['loss_train']:.4f}", refresh=False)
            if not (math.isfinite(batch_loss) and math.isfinite(history["loss_train"])):
                return "diverged", (f"seed {seed} diverged: loss is {history['loss_train']} at "
                                    f"epoch {epoch}; snapshots before it are kept. Lower train.lr "
                                    "or check the data.")
            if history["loss_train"] > exploded_above and not warning:
                warning = (f"warning: the training loss exploded to {history['loss_train']:.3g} at "
                           f"epoch {epoch} (chance is {exploded_above / EXPLODED_FACTOR:.3g}); "
                           "lower train.lr")
                print(f"seed {seed}: {warning}", flush=True)
            if tracked:
                rec.snapshot(epoch)
    except NonFiniteActivations as err:  # the loss may be finite while a layer is not
        return "diverged", f"seed {seed} stopped at {err}"
    except RuntimeError as err:
        if "overflow" not in str(err):
            raise
        return "diverged", (f"seed {seed} diverged: the optimiser overflowed float32 ({err}); snapshots "
                            "before it are kept. Lower train.lr.")
    finally:
        bar.close()
    return "finished", warning


class Unrecorded:
    """The Recorder's calls as no-ops: `archive.enabled = false` times training alone."""

    recording = False

    def resume(self) -> int:
        return -1

    def log(self, epoch: int, **metrics: float) -> None:
        pass

    def snapshot(self, epoch: int, **metrics: float) -> bool:
        return False


def archive_samples(archive: ArchiveReader) -> Samples:
    """The recorded samples of a built-in run's archive."""
    return Samples(archive.inputs, archive.labels, archive.dataset_index, archive.split)


_interrupt = {"received": False, "training": False}  # this seed process's Ctrl-C state


def _train_seed_process(args: tuple) -> SeedResult:
    cfg, seed, runs_dir, position, threads = args
    if _interrupt["received"]:  # a seed queued to this process before the Ctrl-C: never start it
        raise KeyboardInterrupt
    _interrupt["training"] = True
    try:
        return train_seed(cfg, seed, runs_dir, position=position, threads=threads)
    finally:
        _interrupt["training"] = False


def _on_interrupt(signum, frame) -> None:
    """Ctrl-C reaches every seed process: the seed in training stops as in the parent (its
    Recorder drains its writer); an idle process only remembers it, since a KeyboardInterrupt
    there would end it with a traceback."""
    _interrupt["received"] = True
    if _interrupt["training"]:
        raise KeyboardInterrupt


def _seed_process_setup(parent: int) -> None:
    """Pool initializer: Ctrl-C as `_on_interrupt` says, and the process stops when its `make
    train` is killed (its writer then exits uncommitted). Set before the process waits for a
    task: an idle one blocks on the task queue, whose pipe it holds both ends of, and would
    outlive the killed parent forever."""
    signal.signal(signal.SIGINT, _on_interrupt)
    exit_with_parent(parent)


def prepare_archive(cfg: ExperimentConfig, runs_dir: str | Path, force: bool = False) -> Path:
    """Create the run's archive, or check that an existing one belongs to this config."""
    paths = RunPaths.of(runs_dir, cfg.name)
    if force:
        shutil.rmtree(paths.archive, ignore_errors=True)
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
    if paths.archive.exists():
        reader = ArchiveReader(paths.archive)
        if reader.attrs.get("training_hash") != cfg.training_hash():
            raise ArchiveError(
                f"{paths.archive} was trained with another configuration (hash "
                f"{reader.attrs.get('training_hash')}, this config {cfg.training_hash()}): use "
                "--force to retrain it, or give the experiment another `name`"
            )
        return paths.archive
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.n_classes)
    samples = choose_samples(data, cfg.archive.samples_per_split, cfg.archive.sample_seed)
    samples = dataclasses.replace(samples, inputs=samples.inputs.astype(np.float32))
    spec = recording_spec(model, match_layers(model, recorded_layers(model, cfg.model)), samples.inputs,
                          samples.labels, **recording(cfg, samples))
    create_archive(paths.archive, spec, provenance())
    return paths.archive


def main(cfg: ExperimentConfig, runs_dir: str | Path = "data/runs", force: bool = False) -> int:
    """Train every seed of `cfg` not yet finished; returns a process exit code."""
    if not cfg.archive.enabled:
        raise ValueError("archive.enabled = false is for benchmarks only: nothing would be written")
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {cfg.train.device!r} but this machine has no GPU: "
                          "add --set train.device='cpu' (slow for VGG-16) or run on a GPU machine")
    paths = RunPaths.of(runs_dir, cfg.name)
    lock = lock_file(paths.run_dir, "train", wait=False, busy=f"another `make train` is running on "
                     f"{paths.run_dir}; wait for it to finish (or stop it) and run again")
    try:
        return _train_all(cfg, runs_dir, paths, force)
    finally:
        os.close(lock)


def _train_all(cfg: ExperimentConfig, runs_dir: str | Path, paths: RunPaths, force: bool) -> int:
    """Under the run's lock: prepare the archive, clean up after killed runs, train what is left."""
    archive_path = paths.archive
    prepare_archive(cfg, runs_dir, force)
    for litter in remove_litter(archive_path):
        print(f"removed {litter} (left by a killed run)")
    reader = ArchiveReader(archive_path)
    done = {s: reader.seed_status(s)["status"] for s in reader.seeds}
    for seed in [s for s, status in done.items() if status == "finished"]:
        if paths.seed_checkpoints(seed).exists():  # a kill came between the commit and the cleanup
            os.close(lock_seed(paths.seed_checkpoints(seed), "trainer", wait=False))
            shutil.rmtree(paths.seed_checkpoints(seed), ignore_errors=True)
    todo = [s for s in cfg.seeds if done.get(s) not in ("finished", "diverged")]
    if not todo:
        print(f"nothing to do: {archive_path} already holds seeds {list(cfg.seeds)} "
              "(finished or diverged); use --force to retrain")
        consolidate(archive_path)
        return 0
    cores = os.cpu_count() or 1
    processes = min(len(todo), cfg.train.parallel_seeds or cores)
    threads = cfg.train.threads_per_seed or max(1, cores // processes)
    print(f"training {cfg.name}: seeds {todo} ({processes} process(es) x {threads} thread(s)) "
          f"-> {archive_path}", flush=True)
    if processes == 1:
        results = [train_seed(cfg, s, runs_dir, position=0, threads=threads) for s in todo]
    else:
        context = multiprocessing.get_context("spawn")  # torch and fork do not mix
        with ProcessPoolExecutor(processes, mp_context=context, initializer=_seed_process_setup,
                                 initargs=(os.getpid(),)) as pool:
            jobs = [(cfg, s, runs_dir, i % processes, threads) for i, s in enumerate(todo)]
            try:
                results = list(pool.map(_train_seed_process, jobs))
            except KeyboardInterrupt:  # the seeds in training stop too; queued ones never start
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    consolidate(archive_path)
    failed = [r for r in results if r.status == "diverged"]
    for r in results:
        print(f"seed {r.seed}: {r.status} in {r.seconds:.1f}s {r.message}".rstrip())
    return 1 if failed else 0
