"""Rank and similarity measures between two logit vectors, and the sample filters built on them.

Paper B (C2KD, Huo et al., CVPR 2024), Eq. 3-4: the Kendall rank correlation (KRC) between the
teacher's and the student's logits of one sample, and the On-the-Fly Selection filter
``eta = 1[KRC(f_T, f_S) > omega]``. The released C2KD code computes KRC with
``scipy.stats.kendalltau`` one sample at a time on the host; :func:`kendall_tau_b` computes the
same numbers (tau-b, ties included) for a whole batch with tensor operations on the tensor's own
device, with no host synchronisation (measured by ``benchmarks/krc.py``).

Everything here is non-differentiable bookkeeping: the returned tensors never require grad.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "kendall_tau_b",
    "pearson_rows",
    "cosine_rows",
    "selection_mask",
    "random_mask_like",
]

_NUMPY_SORT_ON_CPU = True  # tests switch it off to exercise the torch.sort path
_CHUNK_ELEMENTS = 1 << 22  # cap on the pair tensor of _discordant_pairs, in elements
_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _arange(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``arange(n)`` in ``dtype`` on ``device``, made once (no host-to-device copy per call)."""
    key = ("arange", n, dtype, str(device))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.arange(n, dtype=dtype, device=device)
    return _CONSTANTS[key]


def _pairs_in_block(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The index pairs ``(u, v)``, ``u < v``, of a block of ``k`` positions."""
    key = ("pairs", k, str(device))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.triu_indices(k, k, 1, device=device)
    upper = _CONSTANTS[key]
    return upper[0], upper[1]


def _tile_offsets(n: int, lk: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(i >> lk) * nb`` for each position ``i``: the first grid cell of its tile row."""
    key = ("tiles", n, lk, dtype, str(device))
    if key not in _CONSTANTS:
        nb = -(-n // (1 << lk))
        _CONSTANTS[key] = ((torch.arange(n, device=device) >> lk) * nb).to(dtype)
    return _CONSTANTS[key]


def _order_key(x: torch.Tensor) -> torch.Tensor:
    """Integer keys that sort and compare like ``x`` row-wise, ``-0.0 == 0.0``: int32 for
    dtypes that float32 holds exactly (and small integers), int64 otherwise.

    A float's bits, with the magnitude bits of negatives flipped, order like the float; NaN
    gets some key (the caller masks NaN rows)."""
    if x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        i = (x.to(torch.float32) + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
        return i ^ ((i >> 31) & 0x7FFFFFFF)
    if x.dtype == torch.float64:
        i = (x + 0.0).view(torch.int64)
        return i ^ ((i >> 63) & 0x7FFFFFFFFFFFFFFF)
    if x.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32):
        return x.to(torch.int32)
    return x.to(torch.int64)


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of an integer matrix sorted ascending (values only). On CPU numpy's sort (the
    vectorised x86-simd-sort kernels: about 15x ``torch.sort`` on int32 rows here); the
    memory is shared, nothing is copied to or from another device. Elsewhere ``torch.sort``."""
    if x.device.type == "cpu" and _NUMPY_SORT_ON_CPU:
        return torch.from_numpy(np.sort(x.contiguous().numpy(), axis=1))
    return torch.sort(x, dim=1).values


def _run_starts(s: torch.Tensor) -> torch.Tensor:
    """For rows sorted ascending, columns ``1..n-1``: 1 where an element differs from the one
    before it, else 0 (``[R, n - 1]``; column 0 always starts a run, its rank is 0). A
    clamped difference: cheaper here than a boolean comparison."""
    return (s[:, 1:] - s[:, :-1]).clamp_(max=1)


def _min_ranks(key: torch.Tensor, w: int, packed: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Min rank of every element in its row (the number of strictly smaller elements), and
    the per-row sum of min ranks, which is ``n0 - n_tied`` (``n0 = C (C - 1) / 2``: every
    sorted position ``j`` exceeds its min rank by the number of equal elements before it).

    Two sorts of keys that fit in ``packed`` (32 bits when ``3 w <= 31``) instead of one
    64-bit sort of (key, index): numpy sorts int32 rows about 4x faster than int64 rows.
    Sort 1 orders by the key with its low ``w`` bits replaced by the element's index; the
    dense rank ``c`` of that coarse key (``w`` bits) then orders sort 2's
    ``(c, low w bits of the key, index)`` exactly like the key.
    """
    mask = (1 << w) - 1
    rows, n = key.shape
    pos = _arange(n, key.dtype, key.device)
    s = _sort_rows((key & ~mask) | pos)
    coarse = _run_starts(s >> w).cumsum(dim=1, dtype=packed)  # sorted positions 1..n-1
    zeros = torch.zeros(rows, n, dtype=packed, device=key.device)
    coarse = zeros.scatter_(1, (s[:, 1:] & mask).long(), coarse)
    pos = _arange(n, packed, key.device)
    s = _sort_rows((coarse << (2 * w)) | ((key & mask).to(packed) << w) | pos)
    first = (_run_starts(s >> w) * pos[1:]).cummax(dim=1).values
    ranks = torch.zeros_like(coarse).scatter_(1, (s[:, 1:] & mask).long(), first)
    return ranks, first.sum(dim=1, dtype=torch.int64)


def _orders(
    ranks: torch.Tensor, rows: int, w: int, small: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ranks = [r_a; r_b]`` (``[2B, C]`` min ranks) -> ``(q, p, joint_sums)``.

    ``P`` orders a row's elements by ``(a, b, index)``, ``Q`` by ``(b, a, index)``;
    ``q[i]`` is the Q-position of the element at P-position ``i`` and ``p`` its inverse
    (``[B, C]``, dtype ``small``); ``joint_sums`` per row is the sum of min ranks of the
    pairs ``(a, b)``: ``n0 - n_tied_both``. Two sorts of ``B`` rows packed in ``3 w`` / ``2 w``
    bits: ``P`` from ``(r_a, r_b, index)``; then ``Q`` as the P-positions sorted by
    ``(r_b, P-position)``: within equal ``b``, P-position orders by ``(a, index)`` already.
    That sort yields ``p`` itself; one scatter inverts it.
    """
    mask = (1 << w) - 1
    pos = _arange(ranks.shape[1], ranks.dtype, ranks.device)
    s = _sort_rows((ranks[:rows] << (2 * w)) | (ranks[rows:] << w) | pos)  # P order
    joint = _run_starts(s >> w) * pos[1:]
    joint_sums = joint.cummax(dim=1).values.sum(dim=1, dtype=torch.int64)
    s = _sort_rows((s & (mask << w)) | pos)  # (r_b at P-position j, j): Q order
    p = s & mask
    where = _arange(ranks.shape[1], small, ranks.device).expand(p.shape)
    q = torch.empty(p.shape, dtype=small, device=p.device).scatter_(1, p.long(), where)
    return q, p.to(small), joint_sums


def _discordant_pairs(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Inversions of each row of ``q`` (a permutation of ``0..n-1``; ``p`` is its inverse):
    the number of ``i < j`` with ``q[i] > q[j]``, int64 ``[rows]``.

    The ``n x n`` plane of points ``(i, q[i])`` is cut into ``k x k`` tiles (``k`` a power
    of two near ``sqrt(n)``). A pair in different tile rows *and* different tile columns is
    counted from the ``nb x nb`` grid of tile counts: ``sum(excl_cumsum_rows(G) *
    excl_cumsum_cols(G))`` (a 2-D dominance sum). A pair in the same tile row is compared
    directly, in blocks of ``k`` consecutive positions; a pair in the same tile column but
    different tile rows likewise, along ``p`` (comparing tile rows). O(n^1.5) elementwise
    work per row, in a fixed handful of batched operations, no loop over rows or positions;
    rows are processed in chunks that keep the pair tensor under ``_CHUNK_ELEMENTS``.
    Exact integer counts (int16 / int32 values, int32 / int64 sums).
    """
    rows, n = q.shape
    lk = max(1, min(6, round(math.log2(n) / 2)))
    k = 1 << lk
    nb = -(-n // k)
    per_row = nb * k * (k - 1) // 2
    chunk = max(1, _CHUNK_ELEMENTS // per_row)
    return torch.cat(
        [
            _near_pairs(q[i : i + chunk], p[i : i + chunk], lk) + _far_pairs(q[i : i + chunk], lk)
            for i in range(0, rows, chunk)
        ]
    )


def _near_pairs(q: torch.Tensor, p: torch.Tensor, lk: int) -> torch.Tensor:
    """Inversions among pairs in the same block of ``2**lk`` positions of ``q``, plus those
    among pairs in the same block of ``2**lk`` values in different blocks of positions (read
    along ``p``). Both sequences are padded to whole blocks with values above every real
    one, increasing: the padding adds no inversion."""
    rows, n = q.shape
    k = 1 << lk
    nb = -(-n // k)
    z = q.new_empty(2, rows, nb * k)
    z[0, :, :n] = q
    z[1, :, :n] = p >> lk
    z[:, :, n:] = _arange(nb * k, q.dtype, q.device)[n:]
    # [2, k, rows * nb]: the pairs of a block are rows of the matrix, whole rows are copied
    z = z.view(2, rows * nb, k).transpose(1, 2).contiguous()
    u, v = _pairs_in_block(k, q.device)
    count = torch.zeros(rows, dtype=torch.int64, device=q.device)
    for half in z:  # one half at a time: smaller temporaries
        inv = half.index_select(0, u).sub_(half.index_select(0, v)).clamp_(0, 1)
        count += inv.sum(dim=0, dtype=q.dtype).view(rows, nb).sum(dim=1)
    return count


def _far_pairs(q: torch.Tensor, lk: int) -> torch.Tensor:
    """Inversions among pairs in different blocks of ``2**lk`` positions *and* different
    blocks of ``2**lk`` values, from the grid of tile counts."""
    rows, n = q.shape
    nb = -(-n // (1 << lk))
    gtype = torch.int32 if n < 46341 else torch.int64  # products of counts stay exact
    cells = q.dtype if nb * nb <= torch.iinfo(q.dtype).max else torch.int64
    cell = (_tile_offsets(n, lk, cells, q.device) + (q >> lk).to(cells)).long()
    grid = torch.zeros(rows, nb * nb, dtype=gtype, device=q.device)
    one = torch.ones((), dtype=gtype, device=q.device).expand(rows, n)
    grid = grid.scatter_add_(1, cell, one).view(rows, nb, nb)
    before = grid.cumsum(dim=1, dtype=gtype) - grid  # same value tile, earlier position tiles
    below = grid.cumsum(dim=2, dtype=gtype) - grid  # same position tile, lower value tiles
    return (before * below).sum(dim=(1, 2), dtype=torch.int64)


def kendall_tau_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b between the rows of ``a`` and ``b`` (paper B Eq. 3, with ties).

    ``a, b: [B, C] -> [B]``; row ``i`` equals ``scipy.stats.kendalltau(a[i], b[i]).statistic``
    (its default ``variant="b"``, ``nan_policy="propagate"``), which the released C2KD code
    calls per sample:

        tau_b = (n_c - n_d) / sqrt((n0 - n_1) (n0 - n_2)),   n0 = C (C - 1) / 2,

    with ``n_1`` / ``n_2`` the pairs tied in ``a`` / in ``b``. Paper B writes Eq. 3 without the
    tie correction (tau-a); for logits, which are almost never tied, both agree, and we follow
    the released code. NaN where a row of ``a`` or ``b`` is constant (or ``C < 2``) or holds a
    NaN, as scipy.

    Knight's algorithm, batched over rows: with ``n_3`` the pairs tied in both,
    ``n_c - n_d = n0 - n_1 - n_2 + n_3 - 2 n_d``. Ties come from sums of min ranks
    (:func:`_min_ranks`, :func:`_orders`). Order each row by ``(a, b)`` (``P``) and by
    ``(b, a)`` (``Q``), joint ties by index in both: a pair is discordant exactly when ``P``
    and ``Q`` disagree (pairs tied in ``a`` or ``b`` are ordered alike by both), so ``n_d``
    is the inversion count of the permutation ``P -> Q`` (:func:`_discordant_pairs`). Row
    sorts of packed 32-bit keys (two of ``2B`` rows, two of ``B`` rows; 64-bit when
    ``C > 1024``), no loop over samples, no ``.item()``, no
    data-dependent shape: nothing waits for the host (on CPU the sort is numpy's, see
    :func:`_sort_rows`). Helpers keep their temporaries local so that they are freed as soon
    as a stage ends. Exact integer counting; the ratio is taken in float64 and returned as
    float64 for float64 input, float32 otherwise. KRC is piecewise constant: the result
    never requires grad.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"kendall_tau_b expects two [B, C] tensors, got {a.shape} and {b.shape}")
    rows, n = a.shape
    common = torch.promote_types(a.dtype, b.dtype)
    is_float = common.is_floating_point
    out_dtype = torch.promote_types(common, torch.float32) if is_float else torch.float32
    if rows == 0 or n < 2:
        return torch.full((rows,), float("nan"), dtype=out_dtype, device=a.device)
    x = torch.cat([a.detach().to(common), b.detach().to(common)])  # [2B, C]
    w = (n - 1).bit_length()  # bits of an index or a rank
    packed = torch.int32 if 3 * w <= 31 else torch.int64
    small = torch.int16 if n + (1 << 6) <= 32767 else torch.int32
    ranks, rank_sums = _min_ranks(_order_key(x), w, packed)
    q, p, joint_sums = _orders(ranks, rows, w, small)
    discordant = _discordant_pairs(q, p)
    not_tied_a, not_tied_b = rank_sums[:rows], rank_sums[rows:]  # n0 - n_1, n0 - n_2
    # a constant row makes the numerator 0 too: 0 / 0 = NaN, as scipy
    num = (not_tied_a + not_tied_b - joint_sums - 2 * discordant).to(torch.float64)
    tau = (num / (not_tied_a * not_tied_b).to(torch.float64).sqrt()).clamp(-1.0, 1.0)
    if is_float:
        has_nan = x.amax(dim=1).isnan()  # amax propagates NaN; +inf and -inf give no NaN
        tau = tau.masked_fill(has_nan[:rows] | has_nan[rows:], float("nan"))
    return tau.to(out_dtype)


def cosine_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of each row pair, ``[B, C] -> [B]``: ``<a, b> / (|a| |b| + eps)``.

    The ``+ eps`` form is DIST's (``cosine_similarity`` in the official DIST_KD code), so that
    :func:`pearson_rows` reproduces DIST exactly; paper B's "Cos" selector (Sec. 3.2, "Comparisons
    with other distance metrics") uses it on the two proxies' logits.
    """
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row pair, ``[B, C] -> [B]``: cosine of the row-centred rows.

    Same form as DIST's ``pearson_correlation`` (Huang et al., NeurIPS 2022, official code);
    paper B's "Pearson" selector. A constant row gives 0 (not NaN) because of ``eps``.
    """
    return cosine_rows(a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True), eps)


def selection_mask(score: torch.Tensor, omega: float) -> torch.Tensor:
    """Paper B Eq. 4: ``eta = 1`` where ``score > omega`` (strictly), else 0.

    A NaN score (constant logits, see :func:`kendall_tau_b`) is *not* kept, as in the released
    code (``torch.where(kendall > krc, 1, 0)``). Returns a float mask of ``score``'s shape
    (float32 for a non-float score), detached.
    """
    dtype = score.dtype if score.is_floating_point() else torch.get_default_dtype()
    return (score.detach() > omega).to(dtype)


def random_mask_like(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random 0/1 mask over the batch keeping as many samples as ``mask`` does.

    Paper B Table 2 "+Random": filter out the same number of samples as KRC, chosen at random.
    ``mask: [B]`` (0/1); returns a float mask on ``mask``'s device, drawn without host sync:
    the kept samples are the ``mask.sum()`` smallest of ``B`` uniform draws. ``generator`` must
    live on ``mask``'s device.
    """
    if mask.dim() != 1:
        raise ValueError(f"random_mask_like expects a [B] mask, got shape {tuple(mask.shape)}")
    draws = torch.rand(mask.shape[0], generator=generator, device=mask.device)
    order = draws.argsort()
    ranks = torch.empty_like(order).scatter_(
        0, order, torch.arange(order.numel(), device=order.device)
    )
    keep = ranks < mask.detach().sum()
    dtype = mask.dtype if mask.is_floating_point() else torch.get_default_dtype()
    return keep.to(dtype)
