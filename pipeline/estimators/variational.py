"""Variational lower bounds on MI with a neural critic: InfoNCE, NWJ and SMILE.

    from pipeline.estimators.variational import variational_mutual_information
    variational_mutual_information(a, b, bound="smile")      # bits; a 1-D integer b = labels

A separable critic f(a, b) = g(a) . h(b) (two small MLPs) scores every pair of a batch at once;
the diagonal holds the joint samples, the rest stand for the product of the marginals
(Poole et al. 2019):

- InfoNCE (van den Oord et al.): E[f(a_i, b_i) - log (1/B) sum_j exp f(a_i, b_j)]; at most
  log B, so it saturates above log2 of the batch size.
- NWJ (Nguyen, Wainwright & Jordan; MINE's f-divergence form): E_p[f] - e^-1 E_q[e^f].
- SMILE (Song & Ermon 2020): trained by the Jensen-Shannon bound, read out by the
  Donsker-Varadhan bound with e^f clipped to [e^-clip, e^clip], which bounds its variance.

The critic trains for at most `steps` steps on part of the samples, keeping the state that
scores best on a check fifth of them (early stopping), and the bound is evaluated on the
held-out rest (`holdout`), so it is not fitted to the pairs it scores. Seeded, on any
device; torch's global random state is left as it was. Returned in bits, clipped at 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.estimators._common import LOG2, adam, as_labels, as_samples, is_discrete, same_length

BOUNDS = ("smile", "infonce", "nwj")


def _mlp(d_in: int, hidden: int, d_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, d_out))


def _log_mean_exp_off_diagonal(scores: torch.Tensor) -> torch.Tensor:
    n = len(scores)
    off = scores.masked_fill(torch.eye(n, dtype=torch.bool, device=scores.device), -math.inf)
    return torch.logsumexp(off.flatten(), 0) - math.log(n * (n - 1))


def bound_value(scores: torch.Tensor, bound: str, clip: float = 5.0) -> torch.Tensor:
    """The bound in nats from a (B, B) critic matrix whose diagonal holds the joint pairs."""
    joint = scores.diagonal().mean()
    if bound == "infonce":
        return (scores.diagonal() - torch.logsumexp(scores, 1)).mean() + math.log(len(scores))
    if bound == "nwj":
        return joint - torch.exp(_log_mean_exp_off_diagonal(scores) - 1.0)
    if bound == "smile":
        return joint - _log_mean_exp_off_diagonal(scores.clamp(-clip, clip))
    raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")


def _training_loss(scores: torch.Tensor, bound: str, clip: float) -> torch.Tensor:
    """What the critic maximises: the bound itself, or for SMILE the Jensen-Shannon bound
    (its gradients are stable; the value is read out by the clipped DV bound)."""
    if bound != "smile":
        return -bound_value(scores, bound, clip)
    n = len(scores)
    off = scores[~torch.eye(n, dtype=torch.bool, device=scores.device)]
    js = -torch.nn.functional.softplus(-scores.diagonal()).mean() - torch.nn.functional.softplus(off).mean()
    return -js


def _prepare(v: np.ndarray, name: str, rows: np.ndarray) -> np.ndarray:
    """Standardised with the training rows' mean and spread; labels as one-hot rows."""
    if is_discrete(v):
        codes = as_labels(v, name)
        return np.eye(int(codes.max()) + 1)[codes]
    values = as_samples(v, name)
    mean, std = values[rows].mean(0), values[rows].std(0)
    return (values - mean) / np.where(std > 0, std, 1.0)


def variational_mutual_information(a: np.ndarray, b: np.ndarray, bound: str = "smile", steps: int = 2000,
                                   batch_size: int = 256, hidden: int = 128, embedding: int = 32,
                                   lr: float = 5e-4, clip: float = 5.0, holdout: float = 0.3,
                                   check_every: int = 100, seed: int = 0, device: str = "cpu") -> float:
    """A variational lower bound on I(A;B) in bits, evaluated on held-out samples.

    Parameters
    ----------
    a, b : (n, ...) arrays (or b (n,) integer labels, one-hot encoded)
    bound : {"smile", "infonce", "nwj"}
    steps, batch_size, lr : Adam steps on random batches of the training part (defaults of Song
        & Ermon's experiments, fixed for every input)
    hidden, embedding : widths of the two critic MLPs (two hidden layers each)
    clip : SMILE's clipping of the critic, tau (Song & Ermon: 5)
    holdout : share of the samples kept out of training, on which the bound is evaluated
    check_every : steps between evaluations of the critic on a fifth of the training samples
        held out of the fitting; the best state is kept (early stopping)
    seed : initialisation, batches and split; device : "cpu" or "cuda"
    """
    n = same_length(a=a, b=b)
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(2, int(round(holdout * n)))
    if n - n_test < 2:
        raise ValueError(f"{n} samples leave too few to train on with holdout={holdout}")
    test, train = order[:n_test], order[n_test:]
    # the last fifth of the training part checks the critic every `check_every` steps: the
    # state with the best bound there is kept (early stopping against overfitting)
    n_check = max(2, len(train) // 5)
    check, fit = train[:n_check], train[n_check:]
    xa = torch.as_tensor(_prepare(a, "a", fit), dtype=torch.float32, device=device)
    xb = torch.as_tensor(_prepare(b, "b", fit), dtype=torch.float32, device=device)
    size = min(batch_size, len(fit), n_check)
    with torch.random.fork_rng(devices=[] if device == "cpu" else [torch.device(device)]):
        torch.manual_seed(seed)
        g = _mlp(xa.shape[1], hidden, embedding).to(device)
        h = _mlp(xb.shape[1], hidden, embedding).to(device)
        optimiser = adam([*g.parameters(), *h.parameters()], lr)
        batches = np.random.default_rng(seed + 1)
        best, kept = -math.inf, None
        for step in range(1, steps + 1):
            rows = torch.as_tensor(batches.choice(fit, size, replace=False), device=device)
            loss = _training_loss(g(xa[rows]) @ h(xb[rows]).T, bound, clip)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % check_every == 0 or step == steps:
                with torch.no_grad():
                    score = _evaluate(g, h, xa[check], xb[check], bound, clip, size)
                if score > best:
                    best, kept = score, ([p.detach().clone() for p in g.parameters()],
                                         [p.detach().clone() for p in h.parameters()])
        with torch.no_grad():
            for net, saved in zip((g, h), kept, strict=True):
                for p, v in zip(net.parameters(), saved, strict=True):
                    p.copy_(v)
            value = _evaluate(g, h, xa[test], xb[test], bound, clip, size)
    return max(value, 0.0) / LOG2


def _evaluate(g, h, xa: torch.Tensor, xb: torch.Tensor, bound: str, clip: float, batch: int) -> float:
    """The bound on the held-out samples: InfoNCE in batches of the training size (its ceiling is
    log of the batch), the others on all held-out pairs at once."""
    if bound != "infonce":
        return float(bound_value(g(xa) @ h(xb).T, bound, clip))
    values = [float(bound_value(g(xa[i:i + batch]) @ h(xb[i:i + batch]).T, bound, clip))
              for i in range(0, len(xa) - batch + 1, batch)] or [
        float(bound_value(g(xa) @ h(xb).T, bound, clip))]
    return float(np.mean(values))


def variational_information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, **params) -> dict[str, float]:
    """I(X;T) and I(T;Y) in bits, each the same bound with its own critic."""
    return {"I_XT": variational_mutual_information(x, t, **params),
            "I_TY": variational_mutual_information(t, y, **params)}
