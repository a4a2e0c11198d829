"""Run logs: `metrics.jsonl` (one JSON object per step/epoch) and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cmkd_cli.io import atomic_write_jsonl, read_jsonl, writing


class MetricsLogger:
    """Appends rows to RUN/metrics.jsonl and scalars to TensorBoard (main process only)."""

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            # lazy: tensorboard takes seconds to import; only output.tensorboard runs need it
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir))

    def truncate_after(self, epoch: int, batch: int) -> None:
        """On resume at batch `batch` of `epoch`: drop the rows logged after that point by
        the stopped process (they will be redone), and a last line a kill cut short."""
        if self.enabled and self.path.exists():
            rows = [
                r
                for r in read_jsonl(self.path, growing=True)
                if r.get("epoch", 0) < epoch
                or (
                    r.get("epoch") == epoch
                    and r.get("kind") == "step"
                    and r.get("batch", 0) <= batch
                )
            ]
            atomic_write_jsonl(self.path, rows)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()
        }
        with writing(self.path), open(self.path, "a") as fh:
            fh.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            step = int(row.get("step", 0))
            prefix = row.get("kind", "step")
            for k, v in row.items():
                if k not in ("kind", "step", "epoch") and isinstance(v, int | float):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            with writing(self._tb.log_dir):  # its event file, flushed here
                self._tb.close()
