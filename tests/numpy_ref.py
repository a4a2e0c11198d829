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
