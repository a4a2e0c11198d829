"""The av-digits-lowdata benchmark recipe end to end on a reduced AV-digits: `prepare
--unpaired`, then a slice of the study through `distill` (both directions, a grid chosen on
validation, paired rows), then `report`."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from cmkd_cli.engine.checkpoint import load_checkpoint
from cmkd_cli.io import read_jsonl
from data_prep.av_digits import load_mnist
from tests.fixtures_layouts import link_or_copy


def _idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_lowdata_slice_pairs_rows_and_trains_teachers_on_all_their_data(
    cli, tmp_path: Path, shared_data: Path
) -> None:
    root = tmp_path / "root"  # takes 0-11 (train: takes 10-11) and 1,500 MNIST images
    images, labels = load_mnist(shared_data / "mnist")
    _idx(root / "mnist" / "t10k-images-idx3-ubyte.gz", images[:1500], 0x0803)
    _idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", labels[:1500], 0x0801)
    for wav in (shared_data / "fsdd" / "recordings").glob("*.wav"):
        if int(wav.stem.split("_")[2]) < 12:
            link_or_copy(wav, root / "fsdd" / "recordings" / wav.name)
    prep = cli(
        "--json", "prepare", "av-digits", "--root", root, "--out", tmp_path / "av-digits",
        "--takes", "12", "--unpaired", "--workers", "1",
    )  # fmt: skip
    assert prep.code == 0, prep.stderr
    assert prep.json()["splits"] == {"test": 300, "train": 120, "unpaired": 780, "val": 300}

    rows = ["a2v-05-none", "a2v-05-soft-feature", "v2a-05-none", "v2a-05-kd"]
    res = cli(
        "--json", "distill", "--recipe", "av-digits-lowdata", "--var", f"data_root={tmp_path}",
        "--seeds", "1,2", "--set", "data.batch_size=4", "--set", "train.max_steps_per_epoch=1",
        "--set", "teacher.pretrain.epochs=1", *[f for r in rows for f in ("--variant", r)],
    )  # fmt: skip
    assert res.code == 0, res.stderr
    out = res.json()
    table = {row["variant"]: row for row in out["table"]}
    assert list(table) == rows
    assert table["a2v-05-soft-feature"]["baseline"] == "a2v-05-none"
    assert table["v2a-05-kd"]["baseline"] == "v2a-05-none"  # its own direction's no-KD row
    assert table["v2a-05-none"]["delta"] is None and table["v2a-05-kd"]["delta_seeds"] == [1, 2]
    assert set(out["selection"]) == {"a2v-05-soft-feature", "v2a-05-kd"}
    assert len(out["selection"]["v2a-05-kd"]["points"]) == 2

    study = tmp_path / "runs" / "av-digits-lowdata"
    # the margin binds: a share of the samples inside it, the rest pulled in
    steps = [
        r for r in read_jsonl(study / "a2v-05-soft-feature" / "seed-1" / "metrics.jsonl")
        if r.get("kind") == "step"
    ]  # fmt: skip
    inside = [r["stats/inside_margin"] for r in steps]
    assert 0 < np.mean(inside) < 1 and all(r["stats/margin"] > 0 for r in steps)
    # each teacher learnt from all it may have; the students from 5% of the labelled pairs
    student = load_checkpoint(study / "v2a-05-kd" / "seed-1" / "best.pt")
    assert student["data_spec"]["n_train"] == 10  # 5% of 120 pairs, one per digit
    teachers = [load_checkpoint(t / "last.pt") for t in study.glob("teacher-*")]
    assert sorted(c["data_spec"]["n_train"] for c in teachers) == [120, 120 + 780]

    rep = cli("report", study, "--no-plots")
    assert rep.code == 0 and "v2a-05-kd" in rep.stdout
