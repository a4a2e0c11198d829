"""Audio decoding on real recordings: formats, resampling, downmixing, and bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from cmkd_cli.data.audio import (
    is_decoded_wav,
    load_audio,
    probe_audio,
    stable_seed,
    write_wav,
)
from cmkd_cli.errors import DataError
from tests.fixtures_layouts import (
    encode_m4a,
    shared_data,
    write_empty,
    write_stereo,
    write_text,
    write_truncated,
)


def _flac() -> Path:
    return shared_data("librispeech-test-other", "1688", "1688-142285-0002.flac")


def _fsdd() -> Path:
    return shared_data("fsdd", "recordings", "0_jackson_0.wav")


def test_flac_at_16k_is_returned_unchanged() -> None:
    samples, info = load_audio(_flac())
    ref, rate = sf.read(str(_flac()), dtype="float32")
    assert rate == 16000 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, ref)
    assert info.notes() == [] and info.duration == pytest.approx(len(ref) / 16000)


def test_8k_wav_is_resampled_with_torchaudio_and_reported() -> None:
    samples, info = load_audio(_fsdd())
    ref, rate = sf.read(str(_fsdd()), dtype="float32")
    assert rate == 8000 and len(samples) == 2 * len(ref)
    expected = AF.resample(torch.from_numpy(ref), 8000, 16000).numpy()
    np.testing.assert_allclose(samples, expected, atol=1e-6)
    assert info.notes() == ["resampled 8000->16000 Hz"]
    assert probe_audio(_fsdd(), 16000).notes() == ["resampled 8000->16000 Hz"]


def test_stereo_is_downmixed_to_the_channel_mean(tmp_path: Path) -> None:
    stereo = write_stereo(_flac(), tmp_path / "s.wav", seconds=1.0)
    samples, info = load_audio(stereo)
    both, _ = sf.read(str(stereo), dtype="float32")
    np.testing.assert_allclose(samples, both.mean(axis=1), atol=1e-7)
    assert info.source_channels == 2 and info.notes() == ["downmixed 2 channels to mono"]


def _lag(decoded: np.ndarray, ref: np.ndarray, most: int = 1200) -> int:
    """The delay (samples) of `decoded` against `ref`: the best-correlating shift."""
    n = 16000
    return max(range(most), key=lambda k: float(np.dot(decoded[k : k + n], ref[:n])))


def test_aac_in_m4a_and_mp4_decode_with_pyav(tmp_path: Path) -> None:
    ref, _ = sf.read(str(_flac()), dtype="float32", frames=32000)
    # priming declared in the edit list (as ffmpeg writes VoxCeleb2's m4a): the 1024 priming
    # samples are dropped and the last frame's padding cut, so the audio is the source's
    # 2.000 s, aligned to the sample
    m4a = encode_m4a(_flac(), tmp_path / "a.m4a", seconds=2.0)
    samples, info = load_audio(m4a)
    assert info.source_rate == 16000 and len(samples) == 32000 and info.duration == 2.0
    assert probe_audio(m4a).duration == 2.0 and _lag(samples, ref) == 0
    assert np.corrcoef(samples, ref)[0, 1] > 0.95  # lossy, but the same signal
    # priming not declared (edit list from 0): nothing says how long it is, it stays
    bare = encode_m4a(_flac(), tmp_path / "b.m4a", seconds=2.0, declare_priming=False)
    samples, info = load_audio(bare)
    assert len(samples) == 32000 + 1024 and _lag(samples, ref) == 1024
    video_samples, video = load_audio(shared_data("faces", "video.mp4"))
    assert (video.source_rate, video.source_channels) == (48000, 2)
    assert video.notes() == ["resampled 48000->16000 Hz", "downmixed 2 channels to mono"]
    assert abs(len(video_samples) / 16000 - 4.2) < 0.05
    # its AAC track declares 201,728 samples at 48 kHz from 10 ms on (no priming trim)
    assert video.duration == pytest.approx(201728 / 48000, abs=1 / 16000)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: write_empty(d / "e.wav"), "empty file (0 bytes)"),
        (lambda d: write_text(d / "t.wav"), "not a readable audio file"),
        (lambda d: write_text(d / "t.m4a"), "not a readable audio file"),
        (lambda d: write_truncated(_fsdd(), d / "x.wav"), "truncated wav"),
        (lambda d: d / "missing.wav", "file does not exist"),
    ],
)
def test_bad_files_raise_one_data_error_naming_the_file(tmp_path: Path, make, reason) -> None:
    path = make(tmp_path)
    for fn in (load_audio, probe_audio):
        with pytest.raises(DataError) as err:
            fn(path)
        assert str(err.value).startswith(f"{path}: {reason}")
        assert "\n" not in str(err.value)


def test_write_wav_round_trip_and_reuse_check(tmp_path: Path) -> None:
    samples, _ = load_audio(_fsdd())
    out = tmp_path / "sub" / "o.wav"
    write_wav(out, samples)
    back, rate = sf.read(str(out), dtype="float32")
    assert rate == 16000 and sf.info(str(out)).subtype == "PCM_16"
    np.testing.assert_allclose(back, samples, atol=1 / 32768)
    assert is_decoded_wav(out) and not is_decoded_wav(_fsdd())  # 8 kHz is not reusable
    assert not is_decoded_wav(write_truncated(out, tmp_path / "cut.wav"))
    assert [p.name for p in out.parent.iterdir()] == ["o.wav"]  # no temporary left


def test_stable_seed_is_the_same_in_another_process() -> None:
    uid = "id10270/5r0dWxy17C8/00001"
    here = stable_seed(3, uid)
    code = f"from cmkd_cli.data.audio import stable_seed; print(stable_seed(3, {uid!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == here
    assert (
        stable_seed(3, "id10270/5r0dWxy17C8/00002")
        != here
        != stable_seed(4, "id10270/5r0dWxy17C8/00001")
    )
    assert 0 <= here < 2**63
