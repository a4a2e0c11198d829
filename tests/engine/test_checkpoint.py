"""Checkpoints are written atomically and read back with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmkd_cli.engine import checkpoint as ck
from cmkd_cli.errors import RunError


def test_killed_write_leaves_previous_checkpoint_valid(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    ck.save_checkpoint(path, {"student": {"w": torch.ones(3)}, "epoch": 1})
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")  # the bytes a killed writer leaves
        raise KeyboardInterrupt  # as if the process was stopped mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, {"student": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    state = ck.load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["student"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_rng_round_trip_through_weights_only_load(tmp_path: Path) -> None:
    import random

    import numpy as np

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    ck.save_checkpoint(tmp_path / "r.pt", {"rng": ck.capture_rng()})
    expected = (torch.rand(2), random.random(), np.random.rand())
    ck.restore_rng(ck.load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_unreadable_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match=r"checkpoint .*last\.pt cannot be read"):
        ck.load_checkpoint(bad)
    with pytest.raises(RunError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_full_disk_names_the_file(tmp_path: Path, monkeypatch) -> None:
    """Writing to /dev/full fails as a full disk does (ENOSPC): not torch's enforce-fail."""
    import builtins

    import cmkd_cli.io as cio

    def full_disk(path, mode="r", *args, **kwargs):
        return builtins.open("/dev/full", mode, *args, **kwargs)

    monkeypatch.setattr(cio, "open", full_disk, raising=False)
    with pytest.raises(RunError, match=r"^no space left on device writing .*last\.pt$"):
        ck.save_checkpoint(tmp_path / "last.pt", {"student": {"w": torch.zeros(100_000)}})
    with pytest.raises(RunError, match=r"no space left on device writing .*final\.json"):
        cio.atomic_write_json(tmp_path / "final.json", {"x": "y" * 100_000})
    assert list(tmp_path.iterdir()) == []  # no temporary left behind
