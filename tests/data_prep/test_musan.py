"""MUSAN reader on musan-mini arranged in MUSAN's layout (mixed rates, channels, containers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from cmkd_cli.data.manifest import read_manifest, resolve
from cmkd_cli.errors import UsageError
from data_prep.musan import MusanOptions, prepare_musan
from tests.fixtures_layouts import musan_tree, skip_reasons, write_text


def test_categories_conversions_and_skips(tmp_path: Path) -> None:
    root = musan_tree(tmp_path / "musan")
    write_text(root / "noise" / "free-sound" / "broken.wav")
    out = tmp_path / "out"
    res = prepare_musan(MusanOptions(root=root, out=out, workers=1))
    records = {r.id: r for r in read_manifest(out)}
    assert sorted(records) == [
        "music/fma/147793__setuniman__sweet-waltz-0i-22mi.hq",
        "noise/free-sound/1-100032-A-0",
        "noise/free-sound/2-100648-A-43",
        "speech/librivox/103-1240-0000",
    ]
    music = records["music/fma/147793__setuniman__sweet-waltz-0i-22mi.hq"]
    assert (music.category, music.source, music.label) == ("music", "fma", "music")
    assert music.notes == ["resampled 44100->16000 Hz", "downmixed 2 channels to mono"]
    info = sf.info(str(resolve(out, music.audio)))
    assert (info.samplerate, info.channels) == (16000, 1)
    assert music.duration == pytest.approx(49.2, abs=0.05)
    speech = records["speech/librivox/103-1240-0000"]
    assert speech.category == "speech" and Path(speech.audio).is_absolute()  # 16 kHz flac in place
    assert res.notes == {"downmixed 2 channels to mono": 1, "resampled 44100->16000 Hz": 3}
    skipped = [
        (Path(path).name, reason.split(" (")[0]) for path, reason in skip_reasons(out).items()
    ]
    # ANNOTATIONS and LICENSE are not audio files: ignored, not skipped
    assert skipped == [("broken.wav", "not a readable audio file")]

    again = prepare_musan(MusanOptions(root=root, out=out, workers=1))
    assert (again.decoded, again.reused, again.records) == (0, 5, 4)


def test_same_name_in_two_formats_skips_one_and_keeps_the_rest(tmp_path: Path) -> None:
    root = musan_tree(tmp_path / "musan")
    (wav,) = [p for p in (root / "noise" / "free-sound").glob("1-*.wav")]
    samples, rate = sf.read(str(wav))
    sf.write(str(wav.with_suffix(".flac")), samples, rate)  # x.wav and x.flac side by side
    out = tmp_path / "out"
    res = prepare_musan(MusanOptions(root=root, out=out, workers=1))
    assert res.records == 4 and "noise/free-sound/" + wav.stem in {r.id for r in read_manifest(out)}
    reasons = skip_reasons(out)
    (dup,) = [p for p in reasons if reasons[p].startswith("duplicate")]
    assert Path(dup).suffix in (".flac", ".wav") and "which is kept" in reasons[dup]


def test_non_finite_audio_is_skipped_not_prepared(tmp_path: Path) -> None:
    import numpy as np

    root = musan_tree(tmp_path / "musan")
    nan = root / "noise" / "free-sound" / "nan.wav"
    sf.write(str(nan), np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "out"
    res = prepare_musan(MusanOptions(root=root, out=out, workers=1))
    assert res.records == 4 and "noise/free-sound/nan" not in {r.id for r in read_manifest(out)}
    assert skip_reasons(out)[str(nan)] == "non-finite samples: 16000 of 16000 are NaN or Inf"


def test_category_option(tmp_path: Path) -> None:
    root = musan_tree(tmp_path / "musan")
    res = prepare_musan(
        MusanOptions(root=root, out=tmp_path / "o", workers=1, categories=["speech"])
    )
    assert res.records == 1 and [r.category for r in read_manifest(tmp_path / "o")] == ["speech"]
    with pytest.raises(UsageError, match=r"--categories: unknown \['babble'\]"):
        prepare_musan(MusanOptions(root=root, out=tmp_path / "o", categories=["babble"]))
