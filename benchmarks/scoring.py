"""Trial scoring speed and memory: `score_trials` + EER/minDCF vs a per-trial Python loop.

VoxCeleb1-H size: 550,000 random trials over 5,000 utterances, 256-dim embeddings, with one
embedding per utterance and with 10 crops per utterance (paper A's 10 x 10 crop pairs). The
naive loop scores a 5,000-trial subset one trial at a time in numpy (all K x K crop cosines
per trial); the ratio compares time per trial. Peak memory is the rise of the process's
resident set while scoring, sampled every millisecond (torch allocations are invisible to
tracemalloc), and the tracemalloc peak of the EER/minDCF step (pure numpy). With 10 crops
the `distance` score (voxceleb_trainer's minus mean crop-pair distance) is timed too, and
compared with the mean cosine: Kendall tau between the two score lists, EER difference.

    .venv/bin/python benchmarks/scoring.py [--trials 550000] [--utts 5000] [--dim 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmkd_cli.metrics.trials import Trials, score_trials  # noqa: E402
from cmkd_cli.metrics.verification import compute_eer, compute_min_dcf  # noqa: E402

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


class PeakRss:
    """Highest resident set size above the starting one, sampled by a background thread."""

    def __enter__(self):
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def rise_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def naive_scores(trials: Trials, emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float32)
    for n, r in enumerate(rows):
        i, j = trials.pairs[r]
        a, b = emb[i], emb[j]  # [K, D] each
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        out[n] = (a @ b.T).mean()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=550_000)
    ap.add_argument("--utts", type=int, default=5_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--naive", type=int, default=5_000, help="trials scored by the naive loop")
    args = ap.parse_args()

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    rng = np.random.default_rng(0)
    spk = rng.integers(0, args.utts // 10, args.utts)
    pairs = rng.integers(0, args.utts, (args.trials, 2))
    labels = (spk[pairs[:, 0]] == spk[pairs[:, 1]]).astype(np.int8)
    labels[:2] = [0, 1]
    trials = Trials([f"u{i}" for i in range(args.utts)], pairs, labels)
    print(f"{args.trials:,} trials over {args.utts:,} utterances, dim {args.dim}")

    def subset(n: int) -> Trials:
        return Trials(trials.utterances, pairs[:n], labels[:n])

    for k in (1, 10):
        centre = rng.normal(size=(args.utts // 10, args.dim)).astype(np.float32)
        noise = rng.normal(size=(args.utts, k, args.dim)).astype(np.float32)
        emb = centre[spk][:, None, :] + 1.5 * noise
        score_trials(subset(1000), emb)  # warm-up: torch's lazy initialisation is not scoring
        rises = {}
        for n in (args.trials // 10, args.trials):
            with PeakRss() as mem:
                t0 = time.perf_counter()
                scores = score_trials(subset(n), emb)
                t_score = time.perf_counter() - t0
            rises[n] = mem.rise_mib
        tracemalloc.start()
        t0 = time.perf_counter()
        eer, _ = compute_eer(scores, labels)
        dcf, _ = compute_min_dcf(scores, labels)
        t_metrics = time.perf_counter() - t0
        _, tm_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        rows = rng.choice(args.trials, args.naive, replace=False)
        t0 = time.perf_counter()
        ref = naive_scores(trials, emb, rows)
        t_naive = time.perf_counter() - t0
        assert np.allclose(ref, scores[rows], atol=1e-5), "vectorised and naive scores differ"

        per_fast = t_score / args.trials
        per_naive = t_naive / args.naive
        mem_txt = ", ".join(f"{n:,} trials +{r:.0f}" for n, r in rises.items())
        print(
            f"K={k:2d} crops (embeddings {emb.nbytes / 2**20:.0f} MiB):\n"
            f"  score_trials   {t_score:.2f} s = {per_fast * 1e6:.2f} us/trial; "
            f"peak RSS rise (MiB): {mem_txt}\n"
            f"  naive loop     {per_naive * 1e6:.1f} us/trial over {args.naive:,} trials; "
            f"ratio naive/vectorised per trial: {per_naive / per_fast:.0f}x\n"
            f"  EER + minDCF   {t_metrics:.2f} s on {args.trials:,} scores, tracemalloc peak "
            f"{tm_peak / 2**20:.0f} MiB (EER {eer:.2%}, minDCF {dcf:.3f})"
        )
        if k > 1:
            compare_distance(trials, emb, scores, t_score)


def compare_distance(trials: Trials, emb: np.ndarray, cosine: np.ndarray, t_cos: float) -> None:
    """Time the `distance` score on the same trials; how far its ranking is from cosine's."""
    from scipy.stats import kendalltau

    with PeakRss() as mem:
        t0 = time.perf_counter()
        dist = score_trials(trials, emb, score="distance")
        t_dist = time.perf_counter() - t0
    tau = kendalltau(cosine, dist).statistic
    eers = [compute_eer(s, trials.labels)[0] for s in (cosine, dist)]
    print(
        f"  distance       {t_dist:.2f} s = {t_dist / len(trials) * 1e6:.2f} us/trial "
        f"({t_dist / t_cos:.0f}x cosine), peak RSS rise +{mem.rise_mib:.0f} MiB; Kendall tau "
        f"vs cosine {tau:.4f}; EER {eers[1]:.3%} vs {eers[0]:.3%} "
        f"({100 * abs(eers[1] - eers[0]):.3f} points)"
    )


if __name__ == "__main__":
    main()
