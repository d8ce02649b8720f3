"""Your own network, data and training loop -> an information plane, with infoplane's Recorder.

    python examples/own_network.py [--archive data/runs/own_network/archive.zarr] [--epochs 12]
                                   [--formats png,pdf]

A small residual CNN (nested submodules) learns which of four rows of a noisy 12x12 image is
brighter; a plain loop of its own trains it, the Recorder archives three layers at every epoch,
and the estimate and figures stages run on that archive as on any built-in run. Output: the
archive, `estimates.zarr` beside it, and `figures/own_network/index.html`. The stages take the
same archive from the command line: `python -m stages.estimate --archive PATH` (every
estimator) and `python -m stages.figures --archive PATH`.
"""

import torch
from torch import nn

from pipeline.estimate import estimate_archive
from pipeline.record import Recorder
from pipeline.report import report_archive


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return x + self.body(x)


def main(archive="data/runs/own_network/archive.zarr", epochs=12, figures="figures", formats="png,pdf"):
    torch.manual_seed(0)
    y = torch.randint(0, 4, (1024,))
    x = torch.rand(1024, 1, 12, 12) + 0.3 * nn.functional.one_hot(3 * y + 1, 12)[:, None, :, None]
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Residual(4), nn.Flatten(),
                          nn.Linear(576, 8), nn.Tanh(), nn.Linear(8, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with Recorder(archive, model, layers=["1", "4", "5"], inputs=x, labels=y,
                  splits={"train": range(768), "test": range(768, 1024)}, name="own_network") as rec:
        rec.snapshot(0)  # epoch 0: before training, as the figures' axes read it
        for epoch in range(1, epochs + 1):
            for batch in torch.randperm(768).split(128):
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            rec.snapshot(epoch, loss=loss.item())  # after `epoch` epochs of training
    # binning over each layer's own span: the residual and linear layers are unbounded, and the
    # default range, tanh's [-1, 1], would clip them (the stage flags such cells)
    estimate_archive(archive, estimators={"binning": {"method": "binning", "range": "layer"},
                                          "kde": {"method": "kde"}})
    report_archive(archive, figures, formats=formats)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default="data/runs/own_network/archive.zarr")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--figures", default="figures")
    parser.add_argument("--formats", default="png,pdf", help="each figure's files, e.g. png alone")
    args = parser.parse_args()
    main(args.archive, args.epochs, args.figures, args.formats)
