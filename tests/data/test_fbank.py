"""Kaldi fbank features and the sharded memory-mapped store, on real speech."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.fbank import (
    CONFIG,
    INDEX,
    FbankConfig,
    FbankStore,
    check_config,
    compute_fbank,
    finished_entries,
    n_frames,
    plan_shards,
    shard_name,
    write_index,
    write_shard,
)
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.io import atomic_write_json, atomic_write_jsonl
from tests.fixtures_layouts import shared_data


def _speech(name: str = "1688-142285-0002.flac") -> tuple[Path, np.ndarray]:
    path = shared_data("librispeech-test-other", name.split("-")[0], name)
    return path, load_audio(path)[0]


def test_shape_and_values_equal_kaldi_fbank_called_directly() -> None:
    _, x = _speech()
    cfg = FbankConfig(cmn=False)
    feats = compute_fbank(x, cfg)
    assert feats.shape == (1 + (len(x) - 400) // 160, 40) == (n_frames(len(x), cfg), 40)
    # KaldiFbank computes in float64: equal to torchaudio's fbank of the float64 signal
    wave64 = torch.from_numpy(x.astype(np.float64) * 32768.0)[None]
    direct = kaldi.fbank(wave64, num_mel_bins=40).float().numpy()
    np.testing.assert_allclose(feats, direct, rtol=0, atol=1e-5)
    # torchaudio's float32 FFT is off in rare low-energy bins; on average they agree closely
    direct32 = kaldi.fbank(torch.from_numpy(x * 32768.0)[None], num_mel_bins=40).numpy()
    assert np.abs(feats - direct32).max() < 5e-3 and np.abs(feats - direct32).mean() < 1e-4
    cmn = compute_fbank(x, FbankConfig(cmn=True))
    np.testing.assert_allclose(cmn, direct - direct.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(cmn.mean(axis=0), 0.0, atol=1e-4)


def test_dither_is_seeded_by_the_utterance_id() -> None:
    _, x = _speech()
    cfg = FbankConfig(dither=1.0)
    torch.manual_seed(0)
    a = compute_fbank(x[:16000], cfg, "spk/a")
    after = torch.rand(1)
    torch.manual_seed(0)
    np.testing.assert_array_equal(a, compute_fbank(x[:16000], cfg, "spk/a"))
    assert torch.equal(after, torch.rand(1))  # the global RNG is left untouched
    assert not np.array_equal(a, compute_fbank(x[:16000], cfg, "spk/b"))
    assert not np.array_equal(a, compute_fbank(x[:16000], FbankConfig(dither=0.0), "spk/a"))


def test_shorter_than_one_frame_is_a_data_error() -> None:
    with pytest.raises(DataError, match="399 samples are fewer than one 25.0 ms frame"):
        compute_fbank(np.zeros(399, dtype=np.float32), FbankConfig())


def _build_store(out: Path, items: list[tuple[str, str]], shard_size: int) -> FbankConfig:
    cfg = FbankConfig()
    check_config(out, cfg, overwrite=False)
    for job in plan_shards(items, out, cfg, shard_size, first=0):
        write_shard(job)
    write_index(out, [i for i, _ in items], finished_entries(out))
    return cfg


def test_store_round_trip_crop_and_wrap_padding(tmp_path: Path) -> None:
    names = ["1688-142285-0002.flac", "1688-142285-0009.flac", "1998-15444-0008.flac"]
    paths = [_speech(n)[0] for n in names]
    items = [(f"utt{k}", str(p)) for k, p in enumerate(paths)]
    cfg = _build_store(tmp_path, items, shard_size=2)
    assert sorted(p.name for p in tmp_path.glob("shard-*.npy")) == [
        "shard-00000.npy",
        "shard-00001.npy",
    ]
    store = FbankStore(tmp_path)
    assert len(store) == 3 and "utt2" in store and "nope" not in store
    for uid, path in items:
        expected = compute_fbank(load_audio(path)[0], cfg).astype(np.float16)
        got = store[uid]
        assert isinstance(got.base, np.memmap) or isinstance(got, np.memmap)
        assert got.shape == expected.shape and store.n_frames(uid) == len(expected)
        np.testing.assert_array_equal(got, expected)
    rng = np.random.default_rng(0)
    crop = store.crop("utt1", 200, rng)
    full = np.asarray(store["utt1"], dtype=np.float32)
    assert crop.shape == (200, 40) and crop.dtype == np.float32
    starts = [s for s in range(len(full) - 199) if np.array_equal(full[s : s + 200], crop)]
    assert starts  # a real window of the utterance
    total = store.n_frames("utt0")
    padded = store.crop("utt0", total + 25, rng)
    np.testing.assert_array_equal(padded[:total], store["utt0"])
    np.testing.assert_array_equal(padded[total:], store["utt0"][:25])
    again = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(again["utt2"], store["utt2"])
    with pytest.raises(KeyError, match="nope"):
        store["nope"]


def test_store_index_lookups_are_those_of_an_id_dict(tmp_path: Path) -> None:
    """The columnar index answers as `{id: (shard, offset, n_frames)}` of index.jsonl did:
    a repeated id reads its last entry; ids are unicode; unknown ids are KeyErrors."""
    rows = [("zoë/1", 0, 0, 4), ("a/1", 0, 4, 3), ("b/22", 1, 0, 5), ("a/1", 1, 5, 2)]
    atomic_write_json(tmp_path / CONFIG, FbankConfig().model_dump())
    for number in (0, 1):
        np.save(tmp_path / shard_name(number), np.arange(7 * 40).reshape(7, 40) + 1000 * number)
    atomic_write_jsonl(
        tmp_path / INDEX,
        [{"id": u, "shard": shard_name(s), "offset": o, "n_frames": n} for u, s, o, n in rows],
    )
    store = FbankStore(tmp_path)
    assert len(store) == 3 and store.ids == ["a/1", "b/22", "zoë/1"]
    assert store.n_frames("a/1") == 2 and store["a/1"][0, 0] == 1000 + 5 * 40  # the last entry
    assert store.n_frames("zoë/1") == 4 and store["zoë/1"][3, 0] == 3 * 40
    assert store.n_frames("b/22") == 5 and store["b/22"][0, 0] == 1000
    assert "b/22" in store and "b/2" not in store and "b/222222" not in store and 3 not in store
    asked = np.array([b"a/1", b"b/2", "zo\u00eb/1".encode(), b"zz", b"b/22-longer"])
    assert store.isin(asked).tolist() == [True, False, True, False, False]
    with pytest.raises(KeyError, match="'b/2' is not in .*index.jsonl"):
        store["b/2"]
    (tmp_path / INDEX).write_text("")
    empty = FbankStore(tmp_path)
    assert len(empty) == 0 and "a" not in empty and not empty.isin(asked).any()


def test_a_changed_config_is_refused_unless_overwrite(tmp_path: Path) -> None:
    check_config(tmp_path, FbankConfig(), overwrite=False)
    (tmp_path / "shard-00000.npy").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"config.json: .*n_mels 40 -> 80.*--overwrite"):
        check_config(tmp_path, FbankConfig(n_mels=80), overwrite=False)
    check_config(tmp_path, FbankConfig(n_mels=80), overwrite=True)
    assert not (tmp_path / "shard-00000.npy").exists()
    assert FbankConfig.model_validate_json((tmp_path / "config.json").read_text()).n_mels == 80


def test_store_without_index_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{INDEX} does not exist .*extract-fbank"):
        FbankStore(tmp_path)
