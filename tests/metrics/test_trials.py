"""Trial-list parsing, its error messages, and cosine / distance scoring with K crops."""

import numpy as np
import pytest
import torch

from cmkd_cli.errors import DataError
from cmkd_cli.metrics.trials import (
    Trials,
    read_cnceleb_trials,
    read_trial_pairs,
    read_trials,
    score_trials,
)

VOX = """\
1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav
0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav
1 id10309/0cYFdtyWVds/00005.wav id10309/Y2Gr1I2DO7M/00001.wav
"""


def write(tmp_path, text, name="trials.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_voxceleb_trials(tmp_path):
    t = read_trials(write(tmp_path, VOX))
    assert len(t) == 3 and t.num_target == 2
    assert t.utterances == sorted(t.utterances) and len(set(t.utterances)) == 5
    assert t.labels.dtype == np.int8 and t.labels.tolist() == [1, 0, 1]
    assert t.pairs.shape == (3, 2)
    lines = [ln.split() for ln in VOX.splitlines()]
    for (_, a, b), (i, j) in zip(lines, t.pairs, strict=True):
        assert (t.utterances[i], t.utterances[j]) == (a, b)


def test_known_utterances_accepted(tmp_path):
    names = {u for ln in VOX.splitlines() for u in ln.split()[1:]} | {"extra.wav"}
    assert len(read_trials(write(tmp_path, VOX), known_utterances=sorted(names))) == 3


def test_read_cnceleb_trials(tmp_path):
    text = (
        "id00800-enroll.wav id00800/singing-01-001.wav 1\n"
        "id00800-enroll.wav id00801/vlog-02-003.wav nontarget\n"
        "id00801-enroll.wav id00801/vlog-02-003.wav target\n"
        "id00801-enroll.wav id00800/singing-01-001.wav 0\n"
    )
    t = read_cnceleb_trials(write(tmp_path, text, "trials.lst"))
    assert t.labels.tolist() == [1, 0, 1, 0]
    assert t.utterances[t.pairs[1, 0]] == "id00800-enroll.wav"
    assert t.utterances[t.pairs[1, 1]] == "id00801/vlog-02-003.wav"


@pytest.mark.parametrize(
    "text, match",
    [
        (VOX.replace("0 id10270", "2 id10270"), r"trials\.txt:2: label '2' is not '1' or '0'"),
        (VOX.replace("1 id10309", "yes id10309"), r"trials\.txt:3: label 'yes'"),
        (VOX.replace(" id10300/ize_eiCFEg0/00003.wav", ""), r"trials\.txt:2: expected 3 fields"),
        (VOX + "1 a.wav b.wav c.wav\n", r"trials\.txt:4: expected 3 fields .* found 4"),
    ],
)
def test_malformed_voxceleb_lines_name_the_line(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        read_trials(write(tmp_path, text))


def test_blank_and_comment_lines_are_ignored(tmp_path):
    plain = read_trials(write(tmp_path, VOX))
    noted = read_trials(write(tmp_path, "# VoxCeleb1-O (cleaned)\n" + VOX.replace("\n", "\n\n", 1)))
    assert noted.utterances == plain.utterances and noted.labels.tolist() == plain.labels.tolist()
    # `cmkd score`'s lists tell the layout from the first trial, not from a comment or blank
    labelled = read_trial_pairs(write(tmp_path, "\n# label utt1 utt2: x y\n" + VOX))
    assert labelled.labels.tolist() == plain.labels.tolist()
    pairs = "".join(" ".join(ln.split()[1:]) + "\n" for ln in VOX.splitlines())
    unlabelled = read_trial_pairs(write(tmp_path, "\n# two columns\n" + pairs))
    assert unlabelled.labels.tolist() == [-1, -1, -1]


def test_cnceleb_bad_label_names_the_line(tmp_path):
    path = write(tmp_path, "e1.wav t1.wav target\ne1.wav t2.wav maybe\n", "trials.lst")
    with pytest.raises(DataError, match=r"trials\.lst:2: label 'maybe'"):
        read_cnceleb_trials(path)


def test_unknown_utterance_is_named_with_its_line(tmp_path):
    known = [u for ln in VOX.splitlines() for u in ln.split()[1:]]
    known.remove("id10309/Y2Gr1I2DO7M/00001.wav")
    with pytest.raises(DataError) as err:
        read_trials(write(tmp_path, VOX), known_utterances=known)
    assert "utterance id10309/Y2Gr1I2DO7M/00001.wav (line 3) is not in the embedding set" in str(
        err.value
    )
    assert "trials.txt" in str(err.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_trials(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="has no trials"):
        read_trials(write(tmp_path, ""))


def random_trials(rng, n_utt, n_trials):
    utts = [f"spk{i // 4:03d}/utt{i:04d}.wav" for i in range(n_utt)]
    pairs = rng.integers(0, n_utt, (n_trials, 2))
    labels = (pairs[:, 0] // 4 == pairs[:, 1] // 4).astype(np.int8)
    return Trials(utts, pairs, labels)


def test_score_trials_single_embedding_is_cosine():
    rng = np.random.default_rng(0)
    t = random_trials(rng, 30, 200)
    emb = rng.normal(size=(30, 16)).astype(np.float32)
    got = score_trials(t, emb, batch=7)  # several chunks, last one partial
    a, b = emb[t.pairs[:, 0]], emb[t.pairs[:, 1]]
    want = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert got.dtype == np.float32 and got.shape == (200,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_score_trials_with_crops_is_mean_of_all_crop_pairs():
    rng = np.random.default_rng(1)
    k = 10
    t = random_trials(rng, 12, 40)
    emb = torch.from_numpy(rng.normal(size=(12, k, 8)) + rng.normal(size=(12, 1, 8)))
    got = score_trials(t, emb, batch=16)
    want = []
    for i, j in t.pairs:  # brute force: the 10 x 10 = 100 crop-pair cosines, averaged
        cos = [
            torch.nn.functional.cosine_similarity(emb[i, p], emb[j, q], dim=0).item()
            for p in range(k)
            for q in range(k)
        ]
        want.append(np.mean(cos))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the mean of pair cosines is not the cosine of the crop means
    naive = score_trials(t, emb.mean(dim=1))
    assert not np.allclose(naive, want, atol=1e-3)


def test_distance_score_is_minus_the_mean_crop_pair_distance():
    """voxceleb_trainer: L2-normalise each crop, cdist of the two [K, D] crop sets, -mean."""
    rng = np.random.default_rng(3)
    k = 10
    t = random_trials(rng, 12, 40)
    emb = rng.normal(size=(12, k, 8)) + 2 * rng.normal(size=(12, 1, 8))
    emb[3, 4] = 0.0  # a zero crop stays zero after normalising
    got = score_trials(t, emb.astype(np.float32), batch=35, score="distance")  # 3 per chunk
    n = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    want = [
        -np.mean([np.linalg.norm(n[i, p] - n[j, q]) for p in range(k) for q in range(k)])
        for i, j in t.pairs
    ]
    assert got.dtype == np.float32 and got.shape == (40,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # close to the mean-cosine ranking, yet not the same order: another score
    cos = score_trials(t, emb.astype(np.float32))
    assert not np.array_equal(np.argsort(got), np.argsort(cos))
    assert np.corrcoef(got, cos)[0, 1] > 0.95
    # one embedding per utterance: -sqrt(2 - 2 cos), the same order as the cosine (atol: the
    # list pairs some utterances with themselves, where sqrt(2 - 2 cos) amplifies rounding)
    one = emb[:, 0].astype(np.float32)
    np.testing.assert_allclose(
        score_trials(t, one, score="distance"),
        -np.sqrt(np.maximum(2 - 2 * score_trials(t, one), 0)),
        atol=1e-3,
    )
    with pytest.raises(ValueError, match="score must be one of cosine, distance"):
        score_trials(t, emb, score="euclid")


def test_score_trials_checks_the_embedding_rows():
    t = random_trials(np.random.default_rng(2), 10, 5)
    with pytest.raises(DataError, match="9 rows but the trial list names 10 utterances"):
        score_trials(t, np.zeros((9, 4), dtype=np.float32))


def test_read_then_score_then_eer(tmp_path):
    from cmkd_cli.metrics.verification import compute_eer

    t = read_trials(write(tmp_path, VOX))
    emb = np.eye(len(t.utterances), 8, dtype=np.float32)
    for i, u in enumerate(t.utterances):  # one direction per speaker
        emb[i] = np.eye(8)[int(u[2:7]) % 8]
    scores = score_trials(t, emb)
    assert scores.tolist() == [1.0, 0.0, 1.0]
    assert compute_eer(scores, t.labels)[0] == 0.0


def log_spectrum_crops(path, k):
    """A crude real 'speaker embedding': mean log power spectrum of each of k equal crops."""
    import soundfile as sf

    x, _ = sf.read(path, dtype="float32")
    frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
    logspec = np.log(np.abs(np.fft.rfft(frames)) ** 2 + 1e-8)
    return np.stack([c.mean(0) for c in np.array_split(logspec, k)])


def test_real_librispeech_trials_end_to_end(shared_data, tmp_path):
    """All pairs of 100 real utterances of 10 speakers, in the VoxCeleb format, scored with
    4 crops per utterance: the pipeline separates the speakers far better than chance."""
    from itertools import combinations

    from cmkd_cli.metrics.verification import compute_eer, compute_min_dcf

    root = shared_data / "librispeech-test-other"
    names = sorted(str(p.relative_to(root)) for p in root.glob("*/*.flac"))
    assert len(names) >= 50
    lines = [
        f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n" for a, b in combinations(names, 2)
    ]
    t = read_trials(write(tmp_path, "".join(lines), "veri_test.txt"), known_utterances=names)
    assert t.utterances == names and len(t) == len(lines)
    emb = np.stack([log_spectrum_crops(root / u, 4) for u in t.utterances])
    emb -= emb.mean(axis=(0, 1))  # centre, as a cosine back-end would
    scores = score_trials(t, emb)
    i, j = t.pairs[0]
    a = emb[i] / np.linalg.norm(emb[i], axis=1, keepdims=True)
    b = emb[j] / np.linalg.norm(emb[j], axis=1, keepdims=True)
    assert scores[0] == pytest.approx((a @ b.T).mean(), abs=1e-5)
    eer, _ = compute_eer(scores, t.labels)
    assert 0.0 < eer < 0.25
    assert compute_min_dcf(scores, t.labels)[0] < 1.0
