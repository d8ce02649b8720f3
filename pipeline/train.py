"""Training: every seed of an experiment, writing its snapshots into the activation archive.

    python -m stages.train --config configs/szt_tanh.toml        # or: make train
    from pipeline.train import main; main(cfg, runs_dir="data/runs")

Resumable: at every snapshot the model, optimiser and RNG states are checkpointed before the
snapshot is committed, so a run killed at any moment restarts from its last committed snapshot
and ends with the same archive content as an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from tqdm import tqdm

from pipeline.archive import (
    HISTORY_VARIABLES,
    ArchiveError,
    ArchiveReader,
    SeedWriter,
    choose_samples,
    consolidate,
    create_archive,
    snapshot_epochs,
)
from pipeline.config import ConfigError, ExperimentConfig
from pipeline.data import SplitData, load_dataset
from pipeline.models import RecordingNetwork, build_model, state_arrays
from pipeline.provenance import provenance
from pipeline.writer import Commit, WriterProcess, atomic_write, lock_seed

EVAL_BATCH = 2048


@dataclass(frozen=True)
class SeedResult:
    seed: int
    status: str  # finished | diverged | skipped
    message: str
    seconds: float


class GradientStats:
    """Per recorded layer: ||E_batch g||_2 and sqrt(tr Cov_batch g) over one epoch's batches."""

    def __init__(self, model: RecordingNetwork):
        named = dict(model.named_parameters())
        self.groups = {layer: [named[p] for p in params]
                       for layer, params in model.layer_parameters().items()}
        self.sum = {k: [torch.zeros_like(p) for p in ps] for k, ps in self.groups.items()}
        self.sum_sq = {k: [torch.zeros_like(p) for p in ps] for k, ps in self.groups.items()}
        self.n_batches = 0

    def update(self) -> None:
        self.n_batches += 1
        for layer, params in self.groups.items():
            for p, s, s2 in zip(params, self.sum[layer], self.sum_sq[layer], strict=True):
                if p.grad is not None:
                    s += p.grad
                    s2 += p.grad * p.grad

    def result(self, layers: list[str]) -> tuple[np.ndarray, np.ndarray]:
        mean, std = np.full(len(layers), np.nan), np.full(len(layers), np.nan)
        if self.n_batches == 0:
            return mean, std
        for i, layer in enumerate(layers):
            if layer not in self.groups:
                continue
            # Reduce in numpy float64: torch's threaded sums would vary with the thread count.
            s = np.concatenate([t.detach().cpu().double().numpy().ravel() for t in self.sum[layer]])
            s2 = np.concatenate([t.detach().cpu().double().numpy().ravel()
                                 for t in self.sum_sq[layer]])
            m = s / self.n_batches
            mean[i] = math.sqrt(float(np.dot(m, m)))
            std[i] = math.sqrt(float(np.clip(s2 / self.n_batches - m * m, 0, None).sum()))
        return mean, std


def train_one_epoch(model: RecordingNetwork, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                    y: torch.Tensor, batch_size: int, generator: torch.Generator,
                    grad_stats: GradientStats | None = None) -> float:
    """One pass over shuffled mini-batches; returns the mean training loss over batches."""
    model.train()
    order = torch.randperm(len(y), generator=generator)
    total, n = 0.0, 0
    for start in range(0, len(y), batch_size):
        batch = order[start:start + batch_size].to(x.device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        if grad_stats is not None:
            grad_stats.update()
        optimizer.step()
        total += loss.item() * len(batch)
        n += len(batch)
    return total / n


@torch.no_grad()
def evaluate(model: RecordingNetwork, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy on a whole split, in evaluation mode (no noise, BN frozen)."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(y), EVAL_BATCH):
        logits = model(x[start:start + EVAL_BATCH])
        target = y[start:start + EVAL_BATCH]
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return loss / len(y), correct / len(y)


@torch.no_grad()
def record_activations(model: RecordingNetwork, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """Every recorded layer's output for the archived inputs, as float32 numpy arrays."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(inputs), EVAL_BATCH):
        _, layers = model(inputs[start:start + EVAL_BATCH], record=True)
        for name, value in layers.items():
            parts.setdefault(name, []).append(value.float().cpu().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _make_optimizer(cfg: ExperimentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # foreach: one fused update over all tensors (the per-tensor loop dominates small nets)
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                weight_decay=cfg.train.weight_decay, foreach=True)
    return torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                           weight_decay=cfg.train.weight_decay, foreach=True)


def run_paths(cfg: ExperimentConfig, runs_dir: str | Path) -> tuple[Path, Path, Path]:
    run_dir = Path(runs_dir) / cfg.name
    return run_dir, run_dir / "archive.zarr", run_dir / "checkpoints"


def train_seed(cfg: ExperimentConfig, seed: int, runs_dir: str | Path, position: int = 0,
               threads: int = 0, data: SplitData | None = None) -> SeedResult:
    """Train one seed to the end, resuming from its last committed snapshot."""
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    _, archive_path, ckpt_root = run_paths(cfg, runs_dir)
    data = data or load_dataset(cfg.data)
    device = torch.device(cfg.train.device)
    record = cfg.archive.enabled
    schedule = snapshot_epochs(cfg.archive, cfg.train.n_epochs)
    schedule_index = {int(e): i for i, e in enumerate(schedule)}
    writer = SeedWriter(archive_path, seed) if record else None
    if writer is not None and writer.status in ("finished", "diverged"):
        return SeedResult(seed, "skipped", f"already {writer.status}", 0.0)
    if writer is not None and writer.committed == len(schedule) == 0:
        raise ArchiveError("the snapshot schedule is empty: nothing would be archived")
    ckpt_dir = ckpt_root / f"seed_{seed}"
    trainer_lock = lock_seed(ckpt_dir, "trainer", wait=False) if record else None

    torch.manual_seed(seed)
    model = build_model(cfg.model, data.input_shape, data.n_classes).to(device)
    optimizer = _make_optimizer(cfg, model)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = torch.from_numpy(data.x_train).to(device), torch.from_numpy(data.y_train).to(device)
    x_test, y_test = torch.from_numpy(data.x_test).to(device), torch.from_numpy(data.y_test).to(device)
    if record:
        samples = zarr.open_group(str(archive_path), mode="r", use_consolidated=False)
        sample_inputs = torch.from_numpy(np.asarray(samples["inputs"][...])).to(device)
        layers = [layer["name"] for layer in samples.attrs["layers"]]
        layer_shapes = [tuple(layer["shape"]) for layer in samples.attrs["layers"]]
    committed = writer.committed if writer else 0
    start_epoch = 0
    if committed:
        ckpt = torch.load(ckpt_dir / f"snapshot_{committed - 1}.pt", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        generator.set_state(ckpt["generator"])
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        start_epoch = int(ckpt["epoch"])
    history: dict[str, list[float]] = {k: [] for k in HISTORY_VARIABLES}
    history_first = start_epoch + 1 if committed else 0
    background = None
    if record:
        model_bytes = sum(p.numel() for p in model.parameters()) * 4 * 4  # weights + checkpoint
        act_bytes = sum(int(np.prod(shape)) for shape in layer_shapes) * len(sample_inputs) * 4
        background = WriterProcess(archive_path, seed, ckpt_dir, model_bytes + act_bytes)

    def add_history() -> float:
        loss_train, acc_train = evaluate(model, x_train, y_train)
        loss_test, acc_test = evaluate(model, x_test, y_test)
        for k, v in zip(history, (loss_train, loss_test, acc_train, acc_test), strict=True):
            history[k].append(v)
        return loss_train

    def flush(committed_snapshots: int, epoch: int, **fields) -> None:
        """Queue one commit: the history rows since the last one, plus any snapshot."""
        nonlocal history_first
        rows = {k: np.asarray(v) for k, v in history.items()}
        background.submit(Commit(committed_snapshots, epoch, history_first, rows, **fields))
        history_first = epoch + 1
        for v in history.values():
            v.clear()

    def take_snapshot(epoch: int, grad_stats: GradientStats | None) -> None:
        index = schedule_index[epoch]
        acts = record_activations(model, sample_inputs)
        if cfg.archive.activation_dtype == "float16":
            acts = {k: v.astype(np.float16) for k, v in acts.items()}
        weights = ({k: v.detach().float().cpu().numpy().copy() for k, v in state_arrays(model).items()}
                   if cfg.archive.store_weights else {})
        g_mean, g_std = (grad_stats.result(layers) if grad_stats else
                         (np.full(len(layers), np.nan), np.full(len(layers), np.nan)))
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(), "generator": generator.get_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "epoch": epoch, "snapshot_index": index}, buffer)
        flush(index + 1, epoch, snapshot_index=index, activations=acts, weights=weights,
              grad_mean=g_mean, grad_std=g_std, checkpoint=buffer.getvalue())

    status, message = "finished", ""
    bar = tqdm(total=cfg.train.n_epochs, initial=start_epoch, position=position, leave=True,
               desc=f"{cfg.name} seed {seed}", unit="epoch", mininterval=2.0, dynamic_ncols=True)
    try:
        if start_epoch == 0 and not committed:
            add_history()
            if record and 0 in schedule_index:
                take_snapshot(0, None)
        for epoch in range(start_epoch + 1, cfg.train.n_epochs + 1):
            tracked = record and epoch in schedule_index
            grad_stats = GradientStats(model) if tracked else None
            batch_loss = train_one_epoch(model, optimizer, x_train, y_train, cfg.train.batch_size,
                                         generator, grad_stats)
            loss_train = add_history()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_train:.4f}", refresh=False)
            if not (math.isfinite(batch_loss) and math.isfinite(loss_train)):
                status = "diverged"
                message = (f"seed {seed} diverged: loss is {loss_train} at epoch {epoch}; "
                           "snapshots before it are kept. Lower train.lr or check the data.")
                break
            if tracked:
                take_snapshot(epoch, grad_stats)
        if record:
            last = epoch if status == "diverged" else cfg.train.n_epochs
            flush(writer_committed_after(schedule_index, last, status), last, status=status,
                  message=message)
    finally:
        bar.close()
        if background is not None:
            background.close()
        if trainer_lock is not None:
            os.close(trainer_lock)
    if status == "finished":
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # a finished seed never resumes
    return SeedResult(seed, status, message, time.perf_counter() - t0)


def writer_committed_after(schedule_index: dict[int, int], last_epoch: int, status: str) -> int:
    """Snapshots committed once training stopped after `last_epoch` (diverged: not that one)."""
    limit = last_epoch - 1 if status == "diverged" else last_epoch
    return sum(1 for e in schedule_index if e <= limit)


def _train_seed_process(args: tuple) -> SeedResult:
    cfg, seed, runs_dir, position, threads = args
    return train_seed(cfg, seed, runs_dir, position=position, threads=threads)


def prepare_archive(cfg: ExperimentConfig, runs_dir: str | Path, force: bool = False) -> Path:
    """Create the run's archive, or check that an existing one belongs to this config."""
    run_dir, archive_path, ckpt_root = run_paths(cfg, runs_dir)
    if force:
        shutil.rmtree(archive_path, ignore_errors=True)
        shutil.rmtree(ckpt_root, ignore_errors=True)
    if archive_path.exists():
        reader = ArchiveReader(archive_path)
        if reader.attrs["training_hash"] != cfg.training_hash():
            raise ArchiveError(
                f"{archive_path} was trained with another configuration (hash "
                f"{reader.attrs['training_hash']}, this config {cfg.training_hash()}): use "
                "--force to retrain it, or give the experiment another `name`"
            )
        _strip_consolidated(archive_path)
        return archive_path
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.n_classes)
    samples = choose_samples(data, cfg.archive.samples_per_split, cfg.archive.sample_seed)
    _, layers = model(torch.from_numpy(samples.inputs[:2]), record=True)
    create_archive(archive_path, cfg, samples,
                   {k: tuple(v.shape[1:]) for k, v in layers.items()},
                   {k: tuple(p.shape) for k, p in state_arrays(model).items()},
                   model.layer_parameters(), provenance())
    return archive_path


def _strip_consolidated(path: Path) -> None:
    """Drop consolidated metadata before writing: it would go stale as seeds commit."""
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    if meta.pop("consolidated_metadata", None) is not None:
        atomic_write(meta_path, json.dumps(meta, indent=2).encode())


def main(cfg: ExperimentConfig, runs_dir: str | Path = "data/runs", force: bool = False) -> int:
    """Train every seed of `cfg` not yet finished; returns a process exit code."""
    _, archive_path, _ = run_paths(cfg, runs_dir)
    if not cfg.archive.enabled:
        raise ValueError("archive.enabled = false is for benchmarks only: nothing would be written")
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {cfg.train.device!r} but this machine has no GPU: "
                          "add --set train.device='cpu' (slow for VGG-16) or run on a GPU machine")
    prepare_archive(cfg, runs_dir, force)
    reader = ArchiveReader(archive_path)
    done = {s: reader.seed_status(s)["status"] for s in reader.seeds}
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
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
            jobs = [(cfg, s, runs_dir, i % processes, threads) for i, s in enumerate(todo)]
            results = list(pool.map(_train_seed_process, jobs))
    consolidate(archive_path)
    failed = [r for r in results if r.status == "diverged"]
    for r in results:
        print(f"seed {r.seed}: {r.status} in {r.seconds:.1f}s {r.message}".rstrip())
    return 1 if failed else 0
