"""`cmkd extract-fbank` end to end: store files, resume, config change, unreadable audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.fbank import FbankConfig, FbankStore, compute_fbank
from tests.fixtures_layouts import librispeech_files, write_text


def _manifest(tmp_path: Path, n: int) -> Path:
    flacs = [f for files in librispeech_files(2, 2).values() for f in files][:n]
    rows = [{"id": f"spk/{f.stem}", "audio": str(f)} for f in flacs]
    rows.append({"id": "spk/broken", "audio": str(write_text(tmp_path / "broken.wav"))})
    path = tmp_path / "m" / "manifest.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_extract_resume_config_guard_and_skips(cli, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, 3)
    out = tmp_path / "fb"
    args = ["extract-fbank", "--manifest", manifest, "--out", out, "--workers", "1"]
    res = cli("--json", *args[:-2], "--workers", "2", "--shard-size", "2", "--no-cmn")
    assert res.code == 0, res.stderr
    first = res.json()
    assert (first["records"], first["indexed"], first["computed"], first["skipped"]) == (4, 3, 3, 1)
    assert first["shards_written"] == 2 and first["skip_reasons"] == {
        "not a readable audio file": 1
    }
    assert sorted(p.name for p in out.glob("shard-*.npy")) == ["shard-00000.npy", "shard-00001.npy"]
    store = FbankStore(out)
    assert store.config == FbankConfig(cmn=False) and len(store) == 3 and "spk/broken" not in store
    row = json.loads(manifest.read_text().splitlines()[0])
    expected = compute_fbank(load_audio(row["audio"])[0], FbankConfig(cmn=False))
    np.testing.assert_array_equal(store[row["id"]], expected.astype(np.float16))
    skipped = json.loads((out / "skipped.jsonl").read_text())
    assert skipped["path"].endswith("broken.wav") and skipped["reason"].startswith("not a readable")

    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    again = cli("--json", *args, "--no-cmn")
    assert again.code == 0 and (again.json()["computed"], again.json()["indexed"]) == (0, 3)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == before

    grown = _manifest(tmp_path / "more", 4)  # one new id: only it is computed, in a new shard
    more = cli(
        "--json", "extract-fbank", "--manifest", grown, "--out", out, "--workers", "1", "--no-cmn"
    )
    assert more.code == 0 and (more.json()["computed"], more.json()["indexed"]) == (1, 4)
    assert (out / "shard-00002.npy").is_file()

    changed = cli(*args, "--n-mels", "80", "--no-cmn")
    assert (
        changed.code == 2
        and "n_mels 40 -> 80" in changed.stderr
        and "--overwrite" in changed.stderr
    )
    redone = cli("--json", *args, "--n-mels", "80", "--overwrite")
    assert redone.code == 0 and redone.json()["computed"] == 3
    assert FbankStore(out)[row["id"]].shape == (len(expected), 80)


def test_voxceleb_trainer_frontend_store(cli, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, 2)
    out = tmp_path / "vt"
    args = ["--json", "extract-fbank", "--manifest", manifest, "--out", out, "--workers", "1"]
    res = cli(*args, "--frontend", "voxceleb_trainer", "--dtype", "float32")
    assert res.code == 0, res.stderr
    cfg = FbankConfig(frontend="voxceleb_trainer", dtype="float32")
    assert res.json()["config"] == cfg.model_dump() and cfg.cmn is False
    store = FbankStore(out)
    assert store.config == cfg
    row = json.loads(manifest.read_text().splitlines()[0])
    samples = load_audio(row["audio"])[0]
    assert store[row["id"]].shape == (1 + len(samples) // 160, 40)  # centred frames
    np.testing.assert_array_equal(store[row["id"]], compute_fbank(samples, cfg))
    kaldi = cli(*args, "--dtype", "float32")  # another front-end into the same folder
    assert kaldi.code == 2 and "frontend 'voxceleb_trainer' -> 'kaldi'" in kaldi.stderr
    bad = cli(*args, "--frontend", "voxceleb_trainer", "--dither", "1")
    assert bad.code == 2 and "no dither" in bad.stderr


def test_non_finite_audio_is_skipped_with_its_reason(cli, tmp_path: Path) -> None:
    import soundfile as sf

    manifest = _manifest(tmp_path, 1)
    nan_wav = tmp_path / "nan.wav"
    sf.write(str(nan_wav), np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    with open(manifest, "a") as fh:
        fh.write(json.dumps({"id": "spk/nan", "audio": str(nan_wav)}) + "\n")
    out = tmp_path / "fb"
    res = cli("--json", "extract-fbank", "--manifest", manifest, "--out", out, "--workers", "1")
    assert res.code == 0, res.stderr
    assert res.json()["skip_reasons"] == {"not a readable audio file": 1, "non-finite samples": 1}
    assert "spk/nan" not in FbankStore(out)
    reasons = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert {
        "path": str(nan_wav),
        "reason": "non-finite samples: 16000 of 16000 are NaN or Inf",
    } in reasons

    only_bad = tmp_path / "bad" / "manifest.jsonl"
    only_bad.parent.mkdir()
    only_bad.write_text(json.dumps({"id": "spk/nan", "audio": str(nan_wav)}) + "\n")
    none = cli("extract-fbank", "--manifest", only_bad, "--out", tmp_path / "fb2", "--workers", "1")
    assert none.code == 1 and "no utterance has features" in none.stderr
