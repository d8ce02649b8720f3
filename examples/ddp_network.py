"""A network trained with DistributedDataParallel, recorded by one rank.

    python examples/ddp_network.py [--archive data/runs/ddp_network/archive.zarr] [--ranks 2] [--epochs 6]
    torchrun --nproc-per-node 2 examples/ddp_network.py     # the same, the ranks started by torchrun

Every rank trains on its share of the training set (CPU ranks, the gloo backend; on GPUs use
"nccl" and move the model to the rank's device). Only rank 0 records: its Recorder runs the
probe pass through the module inside the DDP wrapper, so no collective starts there that the
other ranks would have to join (the wrapper's forward broadcasts the batch norm's buffers), and
the archive names layers and parameters as the unwrapped network does ("2", not "module.2").
The other ranks simply wait at the next step's gradient all-reduce while rank 0 records. Then:
`python -m stages.estimate --archive PATH` and `python -m stages.figures --archive PATH`.
"""

import contextlib
import os
import socket

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.record import Recorder


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Which of four rows of a noisy 12x12 image is brighter; the same on every rank."""
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (1024,), generator=generator)
    x = torch.rand(1024, 1, 12, 12, generator=generator)
    return x + 0.3 * nn.functional.one_hot(3 * y + 1, 12)[:, None, :, None], y


def network() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(576, 8), nn.Tanh(), nn.Linear(8, 4))


def train(rank: int, ranks: int, archive: str, epochs: int) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    torch.manual_seed(rank)  # DDP starts every rank from rank 0's weights
    x, y = data()
    ddp = DistributedDataParallel(network())
    optimizer = torch.optim.Adam(ddp.parameters(), lr=3e-3)
    shard = torch.arange(rank, 768, ranks)[: 768 // ranks]  # as many batches on every rank
    recorder = (Recorder(archive, ddp, layers=["2", "5", "6"], inputs=x, labels=y, weights=True,
                         splits={"train": range(768), "test": range(768, 1024)}, name="ddp_network")
                if rank == 0 else contextlib.nullcontext())
    with recorder as rec:
        if rank == 0:
            rec.snapshot(0)  # epoch 0: before training, as the figures' axes read it
        for epoch in range(1, epochs + 1):
            for batch in shard[torch.randperm(len(shard))].split(64):
                loss = nn.functional.cross_entropy(ddp(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()  # the all-reduce: every rank ends the step with the same weights
                optimizer.step()
            if rank == 0:
                rec.snapshot(epoch, loss=loss.item())
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default="data/runs/ddp_network/archive.zarr")
    parser.add_argument("--ranks", type=int, default=2, help="ranks to start (ignored under torchrun)")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    if "RANK" in os.environ:  # started by torchrun, which sets the rendezvous address
        train(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args.archive, args.epochs)
    else:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        torch.multiprocessing.spawn(train, (args.ranks, args.archive, args.epochs), nprocs=args.ranks)
