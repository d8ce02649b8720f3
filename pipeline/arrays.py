"""Arrays from what a researcher passes: numpy arrays, or torch tensors on any device and dtype."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def as_numpy(values: Any) -> np.ndarray:
    """`values` as a numpy array. A torch tensor is detached and copied to the CPU (a CUDA one
    too), and floats numpy has no type for (bfloat16, float8) become float32; anything else
    goes through `np.asarray`."""
    if isinstance(values, torch.Tensor):
        values = values.detach()
        if values.is_floating_point() and values.dtype not in NUMPY_FLOATS:
            values = values.float()
        return values.cpu().numpy()
    return np.asarray(values)
