"""Independent numpy versions of the small functions the loss tests compare against."""

from __future__ import annotations

import numpy as np
import torch


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax by the log-sum-exp identity."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row KL(p || q) of two probability matrices."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def t(x) -> torch.Tensor:
    """A numpy array (or nested list) as a tensor of the same dtype."""
    return torch.from_numpy(np.asarray(x))


def released_ofsd(ps, pt, y, omega: float = 0.0, temp: float = 1.0):
    """C2KD's OFSD term as its released helper.py computes it, in numpy: scipy's kendalltau per
    sample, `ntkl` (target logit zeroed) in both directions, `mask * kl` averaged over the
    whole batch. Returns (loss, mask)."""
    import warnings

    from scipy.stats import kendalltau

    ps, pt, y = (np.asarray(a) for a in (ps, pt, y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        krc = np.array([kendalltau(pt[i], ps[i])[0] for i in range(len(y))])
    mask = (krc > omega).astype(float)  # NaN > omega is False
    gt = np.zeros_like(ps, dtype=bool)
    gt[np.arange(len(y)), y] = True
    p_s = softmax(np.where(gt, 0.0, ps) / temp)
    p_t = softmax(np.where(gt, 0.0, pt) / temp)
    s_from_t = (mask * kl(p_t, p_s)).mean()  # ntkl(stu, tea.detach()): mean over the full batch
    t_from_s = (mask * kl(p_s, p_t)).mean()
    return temp**2 * (s_from_t + t_from_s), mask
