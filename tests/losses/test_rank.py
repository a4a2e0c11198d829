"""Kendall tau-b (paper B Eq. 3) against scipy, and the selection helpers (Eq. 4)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

import cmkd_cli.losses.rank as rank
from cmkd_cli.losses.rank import (
    cosine_rows,
    kendall_tau_b,
    pearson_rows,
    random_mask_like,
    selection_mask,
)


def scipy_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array([kendalltau(a[i], b[i]).statistic for i in range(a.shape[0])])


def assert_matches_scipy(a: np.ndarray, b: np.ndarray) -> None:
    ours = kendall_tau_b(torch.from_numpy(a), torch.from_numpy(b)).double().numpy()
    ref = scipy_rows(a, b)
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0, equal_nan=True)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))


@pytest.mark.parametrize(
    ("batch", "classes", "low", "high"),
    [
        (1, 2, 0, 2),
        (3, 3, 0, 2),
        (5, 7, -2, 3),
        (16, 28, 0, 4),
        (9, 50, -3, 4),
        (64, 309, 0, 10),
        (4, 309, -1000, 1000),
        (6, 601, -30, 30),
        (2, 64, 0, 2),
    ],
)
def test_equals_scipy_with_ties(batch, classes, low, high):
    rng = np.random.default_rng(batch * 1000 + classes)
    a = rng.integers(low, high, (batch, classes)).astype(np.float32)
    b = rng.integers(low, high, (batch, classes)).astype(np.float32)
    assert_matches_scipy(a, b)


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.int64, np.int32, np.float16, np.int16]
)
def test_equals_scipy_for_dtypes(dtype):
    rng = np.random.default_rng(7)
    a = rng.integers(-5, 6, (12, 40)).astype(dtype)
    b = rng.integers(-5, 6, (12, 40)).astype(dtype)
    b[3] = a[3]
    b[4] = -a[4]
    assert_matches_scipy(a, b)


@pytest.mark.parametrize("numpy_sort", [True, False])
def test_both_sort_paths_equal_scipy(monkeypatch, numpy_sort):
    monkeypatch.setattr(rank, "_NUMPY_SORT_ON_CPU", numpy_sort)
    rng = np.random.default_rng(11)
    a = rng.integers(0, 3, (20, 45)).astype(np.float32)  # many joint ties
    b = rng.integers(0, 3, (20, 45)).astype(np.float32)
    b[:5] = a[:5]
    assert_matches_scipy(a, b)


def test_equals_scipy_on_continuous_logits():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((32, 309)).astype(np.float32)
    b = (0.5 * a + rng.standard_normal((32, 309))).astype(np.float32)
    assert_matches_scipy(a, b)


def test_constant_rows_and_nan_give_nan():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, (6, 20)).astype(np.float32)
    b = rng.integers(0, 3, (6, 20)).astype(np.float32)
    a[0] = 2.0  # constant a
    b[1] = -1.0  # constant b
    a[2] = 0.0
    b[2] = 0.0  # both constant
    a[3, 4] = np.nan  # NaN propagates
    assert_matches_scipy(a, b)
    out = kendall_tau_b(torch.from_numpy(a), torch.from_numpy(b))
    assert torch.isnan(out[:4]).all() and not torch.isnan(out[4:]).any()


def test_fewer_than_two_classes_is_nan():
    assert torch.isnan(kendall_tau_b(torch.ones(3, 1), torch.ones(3, 1))).all()
    assert kendall_tau_b(torch.ones(0, 5), torch.ones(0, 5)).shape == (0,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_equal_but_for_the_lowest_bits(dtype):
    # consecutive floats share every bit but the last few: the coarse first sort of
    # _min_ranks sees them as equal, the second sort must order them exactly
    rng = np.random.default_rng(9)
    base = np.array(1.5, dtype=dtype)
    steps = np.arange(300, dtype=dtype)
    ladder = base + steps * np.spacing(base)  # 300 consecutive representable values
    assert len(np.unique(ladder)) == 300
    a = np.stack([rng.permutation(ladder) for _ in range(6)])
    b = np.stack([rng.permutation(ladder) for _ in range(6)])
    b[0], b[1] = a[0], -a[1]
    b[2, :150] = b[2, 150:]  # ties on top of near-equal values
    assert_matches_scipy(a, b)
    np.testing.assert_allclose(kendall_tau_b(torch.from_numpy(a), torch.from_numpy(b))[:2], [1, -1])


def test_signed_zeros_are_ties():
    a = np.array([[-0.0, 0.0, 1.0, -1.0, 0.0, 2.0]], dtype=np.float32)
    b = np.array([[1.0, 2.0, 3.0, 0.5, -0.0, 0.0]], dtype=np.float32)
    assert_matches_scipy(a, b)


def test_self_is_one_and_reverse_is_minus_one():
    x = torch.randn(8, 309)
    torch.testing.assert_close(kendall_tau_b(x, x), torch.ones(8))
    torch.testing.assert_close(kendall_tau_b(x, -x), -torch.ones(8))
    rev = torch.arange(10.0).flip(0).expand(2, 10)
    torch.testing.assert_close(kendall_tau_b(torch.arange(10.0).expand(2, 10), rev), -torch.ones(2))


def test_hand_value_with_ties():
    # a = [1, 2, 2, 3], b = [1, 3, 2, 2]: pairs (i<j) concordant 3, discordant 1, tied in a 1,
    # tied in b 1, tied in both 0 -> tau_b = (3 - 1) / sqrt((6 - 1) (6 - 1)) = 0.4
    a = torch.tensor([[1.0, 2.0, 2.0, 3.0]])
    b = torch.tensor([[1.0, 3.0, 2.0, 2.0]])
    assert kendall_tau_b(a, b).item() == pytest.approx(0.4, abs=1e-7)


def test_chunked_rows_and_large_class_count(monkeypatch):
    rng = np.random.default_rng(3)
    monkeypatch.setattr(rank, "_CHUNK_ELEMENTS", 1000)  # forces many row chunks
    a = rng.integers(0, 6, (7, 123)).astype(np.float32)
    b = rng.integers(0, 6, (7, 123)).astype(np.float32)
    assert_matches_scipy(a, b)
    monkeypatch.undo()
    a = rng.integers(0, 50, (2, 5000)).astype(np.float32)  # int64 packed keys (3 w > 31)
    b = rng.integers(0, 50, (2, 5000)).astype(np.float32)
    assert_matches_scipy(a, b)
    a = rng.standard_normal((1, 20000)).astype(np.float32)  # more grid cells than int16 holds
    assert_matches_scipy(a, (a + rng.standard_normal((1, 20000))).astype(np.float32))
    a = rng.standard_normal((1, 40000)).astype(np.float32)  # int32 positions
    assert_matches_scipy(a, (a + rng.standard_normal((1, 40000))).astype(np.float32))


def test_result_is_detached_and_float32():
    a = torch.randn(4, 10, requires_grad=True)
    out = kendall_tau_b(a, torch.randn(4, 10))
    assert out.dtype == torch.float32 and not out.requires_grad
    assert kendall_tau_b(a.double(), a.double()).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_host_sync():
    rng = np.random.default_rng(5)
    a = torch.from_numpy(rng.integers(0, 8, (64, 309)).astype(np.float32))
    b = torch.from_numpy(rng.integers(0, 8, (64, 309)).astype(np.float32))
    a_cuda, b_cuda = a.cuda(), b.cuda()
    kendall_tau_b(a_cuda, b_cuda)  # warm-up (constant caches)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = kendall_tau_b(a_cuda, b_cuda)
        mask = random_mask_like(selection_mask(out, 0.0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.cpu(), kendall_tau_b(a, b))
    assert mask.device.type == "cuda"


def test_pearson_and_cosine_rows_by_hand():
    a = np.array([[1.0, 2.0, 3.0, 5.0], [0.0, -1.0, 4.0, 2.0]])
    b = np.array([[2.0, 1.0, 4.0, 4.0], [1.0, 1.0, -2.0, 3.0]])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    pea = np.array([np.corrcoef(a[i], b[i])[0, 1] for i in range(2)])
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    np.testing.assert_allclose(cosine_rows(ta, tb).numpy(), cos, rtol=1e-7)
    np.testing.assert_allclose(pearson_rows(ta, tb).numpy(), pea, rtol=1e-7)
    assert pearson_rows(torch.ones(1, 4), tb[:1]).item() == 0.0  # constant row: 0, not NaN


def test_selection_mask_is_strict_and_drops_nan():
    score = torch.tensor([0.5, 0.0, -0.2, float("nan"), 1.0])
    torch.testing.assert_close(selection_mask(score, 0.0), torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(selection_mask(score, 0.5), torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]))
    assert selection_mask(score.double(), 0.0).dtype == torch.float64


def test_random_mask_keeps_the_same_count():
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    seen = set()
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        out = random_mask_like(mask, gen)
        assert out.sum().item() == 4 and set(out.tolist()) <= {0.0, 1.0}
        seen.add(tuple(out.tolist()))
    assert len(seen) > 1  # it is random
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(random_mask_like(mask, gen_a), random_mask_like(mask, gen_b))
    assert random_mask_like(torch.zeros(5)).sum().item() == 0
    assert random_mask_like(torch.ones(5)).sum().item() == 5
    assert math.isclose(random_mask_like(mask.bool().float()).sum().item(), 4)
