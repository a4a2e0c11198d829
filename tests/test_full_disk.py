"""A full disk is one line naming the file (`no space left on device writing FILE`), exit 1,
and nothing already written is lost: the stage run again on a disk with room continues."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd_cli import io as cio
from cmkd_cli.data.fbank import FbankStore, finished_entries
from cmkd_cli.engine import lock
from cmkd_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from cmkd_cli.engine.logging import MetricsLogger
from cmkd_cli.errors import RunError
from tests.fixtures_layouts import librispeech_files
from tests.small_disk import disk_kind, run_cmkd_on_small_disk

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def test_torch_hiding_the_oserror_in_a_runtimeerror_still_names_the_file(
    tmp_path: Path, monkeypatch
) -> None:
    """torch 2.11's zip writer turns the write's OSError into `[enforce fail at
    inline_container.cc] unexpected pos`, the OSError only its `__context__`."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def full(obj, fh, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904

    monkeypatch.setattr(torch, "save", full)
    expected = rf"^no space left on device writing {re.escape(str(path))}$"
    with pytest.raises(RunError, match=expected):
        save_checkpoint(path, {"epoch": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary, the old one kept
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_numpy_short_write_quota_and_size_limit_are_named(tmp_path: Path, monkeypatch) -> None:
    def short(fh):
        raise OSError("159640 requested and 38848 written")  # numpy's tofile, no errno

    with pytest.raises(RunError, match=r"^no space left on device writing .*shard-00000\.npy$"):
        cio.atomic_write(tmp_path / "shard-00000.npy", short, mode="wb")
    for code, words in ((errno.EDQUOT, "disk quota exceeded"), (errno.EFBIG, "file too large")):

        def fail(fh, code=code):
            raise OSError(code, "full")

        with pytest.raises(RunError, match=rf"^{words}.* writing .*a\.json$"):
            cio.atomic_write(tmp_path / "a.json", fail)
    with pytest.raises(OSError, match="Permission"):  # any other error passes unchanged
        with cio.writing(tmp_path / "x"):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_lock_file_metrics_log_and_memory_maps_name_their_file(tmp_path: Path, monkeypatch) -> None:
    def no_room(*args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(lock.os, "pwrite", no_room)
    with pytest.raises(RunError, match=r"^no space left on device writing .*run/\.lock$"):
        with lock.run_lock(tmp_path / "run"):
            pass
    monkeypatch.undo()
    with lock.run_lock(tmp_path / "run"):  # the descriptor was closed: the lock is free again
        pass

    logger = MetricsLogger(tmp_path / "run", tensorboard=False)
    if Path("/dev/full").exists():  # appending there fails as on a full disk (ENOSPC)
        logger.path = Path("/dev/full")
        with pytest.raises(RunError, match=r"^no space left on device writing /dev/full$"):
            logger.log({"kind": "step", "x": "y" * 10_000})

    monkeypatch.setattr(cio.os, "posix_fallocate", no_room)
    target = tmp_path / "teacher.r0.npy"
    with pytest.raises(RunError, match=r"^no space left on device writing .*teacher\.r0\.npy$"):
        cio.allocated_memmap(target, np.float32, (1000, 16))
    assert not target.exists()  # a sparse file would SIGBUS when its pages are written


def test_allocated_memmap_is_a_normal_writable_array(tmp_path: Path) -> None:
    a = cio.allocated_memmap(tmp_path / "a.npy", np.float32, (3, 2))
    a[:] = np.arange(6).reshape(3, 2)
    a.flush()
    assert np.load(tmp_path / "a.npy").tolist() == [[0, 1], [2, 3], [4, 5]]
    assert (tmp_path / "a.npy").stat().st_blocks * 512 >= 24  # allocated, not sparse


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr and "enforce fail" not in stderr, stderr
    return errors[0]


def test_distill_on_a_full_disk_names_the_file_and_resumes(
    cli, tmp_path: Path, shared_data_or_none
) -> None:
    """The run root on a 2 MB disk: the teacher (small) finishes, the student's checkpoint of
    the second epoch does not fit (or, under a file-size limit, its first)."""
    disk, keep = tmp_path / "disk", tmp_path / "kept"
    args = [
        "distill", "--recipe", "zoo/kd", "--set", "train.epochs=2", "--set", "train.threads=1",
        "--set", "train.max_steps_per_epoch=3", "--set", "teacher.pretrain.epochs=1",
        "--set", f"output.root={disk / 'runs'}",
    ]  # fmt: skip
    kind = disk_kind(tmp_path)
    # fsize is per file: the teacher's files fit, the student's last.pt does not
    size = 2_000_000 if kind == "tmpfs" else 500_000
    out = run_cmkd_on_small_disk(args, disk, size, tmp_path, keep, kind)
    assert out.code == 1, out.stderr
    line = _one_error_line(out.stderr)
    assert re.fullmatch(rf"error: {out.message}.* writing {re.escape(str(disk))}/runs/kd/\S+", line)
    run = keep / "runs" / "kd"
    assert not list(run.rglob(".*.tmp")), "a temporary was left on the full disk"
    (teacher,) = run.glob("teacher-*")
    assert load_checkpoint(teacher / "teacher.pt")["model"]
    if (run / "last.pt").exists():  # the checkpoint before the one that did not fit
        assert load_checkpoint(run / "last.pt")["epochs_done"] == 1

    teacher_log = (teacher / "metrics.jsonl").read_text()
    again = cli("--json", "distill", "--resume", run)  # the same run, on a disk with room
    assert again.code == 0, again.stderr
    assert again.json()["runs"][0]["status"] == "resumed"
    assert (teacher / "metrics.jsonl").read_text() == teacher_log  # the teacher is not redone
    epochs = [r["epoch"] for r in cio.read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == [1, 2]


def test_extract_fbank_on_a_full_disk_keeps_finished_shards(cli, tmp_path: Path) -> None:
    flacs = [f for files in librispeech_files(2, 4).values() for f in files]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": f"s/{f.stem}", "audio": str(f)}) + "\n" for f in flacs)
    )
    disk, keep = tmp_path / "disk", tmp_path / "kept"
    args = ["extract-fbank", "--manifest", manifest, "--out", disk / "fb", "--workers", "1"]
    kind = disk_kind(tmp_path)
    size = 300_000 if kind == "tmpfs" else 100_000  # fsize: per file, a shard is ~130 kB
    out = run_cmkd_on_small_disk([*args, "--shard-size", "2"], disk, size, tmp_path, keep, kind)
    assert out.code == 1, out.stderr
    line = _one_error_line(out.stderr)
    assert re.fullmatch(rf"error: {out.message}.* writing {re.escape(str(disk))}/fb/\S+", line)
    store = keep / "fb"
    assert not list(store.glob(".*.tmp"))
    done = finished_entries(store)
    assert len(done) < len(flacs)

    again = cli(
        "--json", "extract-fbank", "--manifest", manifest, "--out", store, "--shard-size", "2"
    )
    assert again.code == 0, again.stderr
    assert again.json()["computed"] == len(flacs) - len(done)  # finished shards are kept
    assert len(FbankStore(store)) == len(flacs)
