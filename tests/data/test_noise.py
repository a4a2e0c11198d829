"""MUSAN mixing at a requested SNR (paper A Eq. 13) and reproducible per-utterance noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.noise import NoiseBank, loop_to_length, mix_at_snr, power
from cmkd_cli.errors import DataError
from tests.fixtures_layouts import musan_tree, shared_data


def _measured_snr(speech: np.ndarray, mixed: np.ndarray) -> float:
    return 10 * np.log10(power(speech) / power(mixed.astype(np.float64) - speech))


@pytest.mark.parametrize("snr_db", [15.0, 10.0, 5.0, 0.0, -3.0])
def test_mixed_signal_has_the_requested_snr(snr_db: float) -> None:
    speech, _ = load_audio(shared_data("librispeech-test-other", "1688", "1688-142285-0002.flac"))
    noise, _ = load_audio(shared_data("musan-mini", "noise", "free-sound", "2-100648-A-43.wav"))
    noise = noise[:16000]  # 1 s of noise under 2.8 s of speech: it must be looped
    mixed = mix_at_snr(speech, noise, snr_db)
    assert mixed.dtype == np.float32 and mixed.shape == speech.shape
    assert _measured_snr(speech, mixed) == pytest.approx(snr_db, abs=1e-3)


def test_loop_to_length_wraps_from_the_offset() -> None:
    noise = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(loop_to_length(noise, 7, offset=3), [3, 4, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(loop_to_length(noise, 2), [0, 1])


def test_silent_noise_is_an_error() -> None:
    with pytest.raises(DataError, match="silent"):
        mix_at_snr(np.ones(100, dtype=np.float32), np.zeros(10, dtype=np.float32), 5.0)


def test_noise_bank_segments_are_seeded_by_utterance_id(tmp_path: Path) -> None:
    root = musan_tree(tmp_path / "musan")
    bank = NoiseBank(root, categories=("noise",), seed=7)
    assert [Path(f).parent.name for f in bank.files] == ["free-sound", "free-sound"]
    ids = [f"id10270/vid/{k:05d}" for k in range(8)]
    segments = [bank.segment(i, 16000) for i in ids]
    assert len({choice for _, choice in segments}) == len(ids)  # different ids, different segments
    # 1-100032-A-0 (a dog bark) is silent for most of its 5 s: no silent segment is handed out
    assert min(power(seg) for seg, _ in segments) > 1e-6
    seg, choice = bank.segment(ids[0], 100000)  # longer than the 5 s clips: looped
    fresh = NoiseBank(root, categories=("noise",), seed=7)
    seg2, choice2 = fresh.segment(ids[0], 100000)
    assert choice == choice2 and len(seg) == 100000
    assert choice.key.startswith("noise/free-sound/") and not choice.key.endswith(".wav")
    np.testing.assert_array_equal(seg, seg2)
    assert NoiseBank(root, categories=("noise",), seed=8).segment(ids[0], 100000)[1] != choice
    speech, _ = load_audio(shared_data("librispeech-test-other", "1688", "1688-142285-0002.flac"))
    mixed = bank.mix(speech, ids[0], 10.0)
    np.testing.assert_array_equal(mixed, fresh.mix(speech, ids[0], 10.0))
    assert _measured_snr(speech, mixed) == pytest.approx(10.0, abs=1e-3)


def test_noise_bank_reads_a_prepared_musan_manifest(tmp_path: Path) -> None:
    from data_prep.musan import MusanOptions, prepare_musan

    root = musan_tree(tmp_path / "musan")
    prepare_musan(MusanOptions(root=root, out=tmp_path / "out", workers=1, categories=["noise"]))
    bank = NoiseBank(tmp_path / "out", categories=("noise",))
    assert [Path(f).name for f in bank.files] == ["1-100032-A-0.wav", "2-100648-A-43.wav"]
    assert all(str(tmp_path / "out" / "wav") in f for f in bank.files)  # the 16 kHz copies
    with pytest.raises(DataError, match="no noise files of categories"):
        NoiseBank(tmp_path / "out", categories=("music",))


def test_noise_is_the_same_however_musan_is_given(tmp_path: Path, monkeypatch) -> None:
    """Root, absolute manifest, relative manifest: one file and offset per utterance.

    musan-mini's noise/ holds 16 kHz files (used in place: absolute paths in the manifest)
    and 44.1 kHz ESC-50 clips (converted: paths relative to the manifest), so ordering the
    files by the path they are read from would put them in another order for each spelling.
    """
    from data_prep.musan import MusanOptions, prepare_musan

    root = shared_data("musan-mini")
    out = tmp_path / "musan"
    prepare_musan(MusanOptions(root=root, out=out, workers=1, categories=["noise"]))
    monkeypatch.chdir(tmp_path)
    banks = [
        NoiseBank(root),
        NoiseBank(out / "manifest.jsonl"),
        NoiseBank(Path("musan") / "manifest.jsonl"),
    ]
    assert not Path(banks[2].files[0]).is_absolute() or not Path(banks[2].files[-1]).is_absolute()
    assert banks[0].keys == banks[1].keys == banks[2].keys
    assert banks[0].keys[0] == "noise/free-sound/1-100032-A-0"
    ids = [f"id10270/vid/{k:05d}" for k in range(24)]
    for uid in ids:
        (a, ca), (b, cb), (c, cc) = (bank.segment(uid, 8000) for bank in banks)
        assert (ca.key, ca.offset) == (cb.key, cb.offset) == (cc.key, cc.offset), uid
        np.testing.assert_array_equal(b, c)  # the same prepared file
        np.testing.assert_allclose(np.clip(a, -1, 1), b, atol=1e-4)  # 16-bit wav: rounded, clipped
    assert len({bank.segment(uid, 8000)[1].key for uid in ids for bank in banks[:1]}) > 3
