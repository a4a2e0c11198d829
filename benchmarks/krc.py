"""Speed of the batched Kendall tau-b (paper B's KRC filter) against a per-sample scipy loop.

Not a test. Prints the time per call of ``cmkd_cli.losses.rank.kendall_tau_b`` and of the
released C2KD code's way (``scipy.stats.kendalltau`` on each row, on the host) at B=64,
C=309 (VGGSound's class count), and their ratio. Each timing is the best of several repeats,
so a busy machine inflates both sides less. On CPU it times torch at its default thread count
and at one thread: on a shared 2-core machine, torch's two OpenMP threads lose badly whenever
another process holds a core, while scipy (single-threaded) does not.
Run: ``python benchmarks/krc.py [--device cuda] [--ties]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import kendalltau

from cmkd_cli.losses.rank import kendall_tau_b


def best_time(fn, number: int, repeat: int, sync=lambda: None) -> float:
    """Seconds per call: the best mean over ``repeat`` runs of ``number`` calls."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def logits(batch: int, classes: int, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded ``[batch, classes]`` logit matrices: correlated Gaussians, or integer
    logits in [0, 10) (many ties)."""
    gen = torch.Generator().manual_seed(0)
    shape = (batch, classes)
    if ties:
        return (
            torch.randint(0, 10, shape, generator=gen).float(),
            torch.randint(0, 10, shape, generator=gen).float(),
        )
    a = torch.randn(shape, generator=gen)
    return a, 0.5 * a + torch.randn(shape, generator=gen)


def compare(
    a: torch.Tensor, b: torch.Tensor, device: str, repeat: int, threads: list[int]
) -> tuple[float, dict[int, float], float]:
    """(seconds per call of the per-sample scipy loop, {torch threads: seconds per call of
    ``kendall_tau_b`` on ``device``}, max |difference|), all timed in this one run."""
    a_np, b_np = a.numpy(), b.numpy()
    a_dev, b_dev = a.to(device), b.to(device)
    sync = torch.cuda.synchronize if a_dev.is_cuda else (lambda: None)

    def scipy_loop() -> np.ndarray:
        return np.array([kendalltau(a_np[i], b_np[i]).statistic for i in range(len(a_np))])

    max_err = float(np.nanmax(np.abs(kendall_tau_b(a_dev, b_dev).cpu().numpy() - scipy_loop())))
    t_scipy = best_time(scipy_loop, number=5, repeat=repeat)
    default_threads = torch.get_num_threads()
    ours = {}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        ours[n_threads] = best_time(lambda: kendall_tau_b(a_dev, b_dev), 50, repeat, sync)
    torch.set_num_threads(default_threads)
    return t_scipy, ours, max_err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=309)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--ties", action="store_true", help="integer logits in [0, 10): many ties")
    args = parser.parse_args()

    a, b = logits(args.batch, args.classes, args.ties)
    threads = [torch.get_num_threads()]
    if args.device == "cpu" and threads[0] > 1:
        threads.append(1)
    t_scipy, ours, max_err = compare(a, b, args.device, args.repeat, threads)
    print(f"B={args.batch} C={args.classes} device={args.device} ties={args.ties}")
    print(f"scipy.stats.kendalltau per-sample loop:     {t_scipy * 1e3:8.3f} ms/call")
    for n_threads, t_ours in ours.items():
        print(
            f"kendall_tau_b ({args.device}, {n_threads} torch thread(s)): "
            f"{t_ours * 1e3:8.3f} ms/call   speed-up {t_scipy / t_ours:5.1f}x"
        )
    print(f"max |kendall_tau_b - scipy| = {max_err:.2e}")


if __name__ == "__main__":
    main()
