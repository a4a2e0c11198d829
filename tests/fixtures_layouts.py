"""Dataset-layout fixture trees made in a temporary folder from the real files of ../shared/data.

Generic helpers (`shared_data`, `link_or_copy`, `fresh_path`, `encode_m4a`, `write_stereo`,
`write_wav_from`, `write_truncated`, `write_empty`, `write_text`, `skip_reasons`,
`fbank_store`) plus
builders for the speaker-verification layouts (VoxCeleb1/2, CN-Celeb, MUSAN). Every builder
returns the tree's root; bad files are added on request. Writers never write through a link
into ../shared/data (see `fresh_path`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep.av_digits import AVDigitsOptions, prepare_av_digits

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def skip_reasons(out: Path) -> dict[str, str]:
    """path -> reason, from the OUT/skipped.jsonl a `prepare` reader or stage wrote."""
    rows = map(json.loads, (Path(out) / "skipped.jsonl").read_text().splitlines())
    return {row["path"]: row["reason"] for row in rows}


def shared_data(*parts: str) -> Path:
    """A path inside ../shared/data; skips the test with the reason when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data not present: {path} is missing")
    return path


def prepared_av_digits(out: Path, takes: int) -> Path:
    """AV-digits prepared from ../shared/data into `out` (`takes` per speaker and digit,
    split by speaker); skips the test with the reason when the data is absent."""
    root = shared_data()
    prepare_av_digits(AVDigitsOptions(root=root, out=out, takes=takes, split="speaker", workers=1))
    return out


def fresh_path(dst: Path) -> Path:
    """Make `dst` safe to write: parents created, an existing file or link removed first.

    Fixture trees link to ../shared/data, so writing through an existing link would change
    the shared real data itself; a path that still resolves inside it is refused.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if dst.resolve().is_relative_to(DATA.resolve()):
        raise AssertionError(f"refusing to write {dst}: it is inside ../shared/data")
    return dst


def link_or_copy(src: Path, dst: Path) -> Path:
    """Symlink `dst` -> `src` (a copy where links are not allowed); parents are created."""
    fresh_path(dst)
    try:
        os.symlink(Path(src).resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def librispeech_files(speakers: int, per_speaker: int) -> dict[str, list[Path]]:
    """The first `per_speaker` flac files of the first `speakers` LibriSpeech speakers."""
    root = shared_data("librispeech-test-other")
    spk_dirs = sorted(d for d in root.iterdir() if d.is_dir())[:speakers]
    return {d.name: sorted(d.glob("*.flac"))[:per_speaker] for d in spk_dirs}


def fbank_store(out: Path, items: list[tuple[str, str]], cfg, shard_size: int = 100) -> str:
    """An fbank store of `(id, audio path)` items at `out`, written as extract-fbank does."""
    from cmkd_cli.data.fbank import (
        check_config,
        finished_entries,
        plan_shards,
        write_index,
        write_shard,
    )

    check_config(out, cfg, overwrite=False)
    for job in plan_shards(items, out, cfg, shard_size, first=0):
        write_shard(job)
    write_index(out, [i for i, _ in items], finished_entries(out))
    return str(out)


def encode_m4a(src: Path, dst: Path, seconds: float = 3.0, declare_priming: bool = True) -> Path:
    """The first `seconds` of a real recording as AAC in an .m4a, encoded with PyAV.

    With `declare_priming` (as the ffmpeg command line makes VoxCeleb2's files) the frames
    carry timestamps, so the encoder's 1,024 priming samples get negative times and the
    muxer declares them in the edit list (media time 1024); without, the edit list starts at
    0 and the priming is undeclared."""
    import av
    import soundfile as sf

    data, rate = sf.read(str(src), dtype="float32", always_2d=True)
    mono = np.ascontiguousarray(data[: int(seconds * rate), :1].T)
    fresh_path(dst)
    with av.open(str(dst), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(mono, format="fltp", layout="mono")
        frame.rate = rate
        if declare_priming:
            frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return dst


def write_stereo(src: Path, dst: Path, seconds: float = 2.0) -> Path:
    """A 2-channel wav made from a real mono recording (right = half the left)."""
    import soundfile as sf

    data, rate = sf.read(str(src), dtype="float32")
    data = data[: int(seconds * rate)]
    fresh_path(dst)
    sf.write(str(dst), np.stack([data, 0.5 * data], axis=1), rate, subtype="PCM_16")
    return dst


def write_wav_from(src: Path, dst: Path, seconds: float | None = None) -> Path:
    """A real recording (any format soundfile reads) rewritten as 16-bit wav at its own rate."""
    import soundfile as sf

    data, rate = sf.read(str(src), dtype="float32")
    data = data if seconds is None else data[: int(seconds * rate)]
    fresh_path(dst)
    sf.write(str(dst), data, rate, subtype="PCM_16")
    return dst


def write_truncated(src_wav: Path, dst: Path, keep: float = 0.5) -> Path:
    """A copy of a real wav cut to `keep` of its bytes (its header still declares the whole)."""
    blob = Path(src_wav).read_bytes()
    fresh_path(dst).write_bytes(blob[: int(len(blob) * keep)])
    return dst


def write_empty(dst: Path) -> Path:
    fresh_path(dst).write_bytes(b"")
    return dst


def write_text(dst: Path, text: str = "this is a text file, not audio\n") -> Path:
    fresh_path(dst).write_text(text)
    return dst


def voxceleb2_tree(root: Path, speakers: int = 2, per_speaker: int = 2) -> Path:
    """ROOT/{dev,test}/{aac,mp4}/idXXXXX/<video>/NNNNN.{m4a,mp4}: LibriSpeech speakers as
    identities (3 s of each utterance as AAC), faces/video.mp4 as every utterance's video.
    The last speaker goes to test/, the others to dev/."""
    video = shared_data("faces", "video.mp4")
    files = librispeech_files(speakers, per_speaker)
    for n, (spk, flacs) in enumerate(sorted(files.items())):
        split = "test" if n == len(files) - 1 and len(files) > 1 else "dev"
        for k, flac in enumerate(flacs, 1):
            rel = Path(f"id{int(spk):05d}") / f"vid{spk}" / f"{k:05d}"
            encode_m4a(flac, root / split / "aac" / rel.with_suffix(".m4a"))
            link_or_copy(video, root / split / "mp4" / rel.with_suffix(".mp4"))
    return root


def voxceleb1_tree(root: Path) -> Path:
    """ROOT/wav/idXXXXX/<video>/NNNNN.wav: two LibriSpeech speakers (16 kHz, one in the
    test-speaker range id10270..) and one FSDD speaker (8 kHz, so resampled)."""
    files = librispeech_files(2, 2)
    for spk_id, flacs in zip(("id10001", "id10270"), files.values(), strict=True):
        for k, flac in enumerate(flacs, 1):
            write_wav_from(flac, root / "wav" / spk_id / "libri" / f"{k:05d}.wav", seconds=2.0)
    fsdd = sorted(shared_data("fsdd", "recordings").glob("*_jackson_*.wav"))[:2]
    for k, wav in enumerate(fsdd, 1):
        link_or_copy(wav, root / "wav" / "id10002" / "fsdd" / f"{k:05d}.wav")
    return root


def add_bad_wavs(folder: Path, good_wav: Path, stereo_src: Path) -> dict[str, Path]:
    """A truncated wav, a zero-length file, a text file named .wav and a stereo wav in `folder`."""
    return {
        "truncated": write_truncated(good_wav, folder / "90001.wav"),
        "empty": write_empty(folder / "90002.wav"),
        "text": write_text(folder / "90003.wav"),
        "stereo": write_stereo(stereo_src, folder / "90004.wav"),
    }


def cnceleb_tree(root: Path) -> Path:
    """CN-Celeb_flac: ROOT/data/idXXXXX/<genre>-<video>-<utt>.flac, ROOT/dev/dev.lst, and
    ROOT/eval/{enroll,test}/*.flac with eval/lists/{enroll,trials}.lst in the real form:
    the lists name `.wav` files (`id00800-enroll enroll/id00800-enroll.wav`,
    `id00800-enroll test/id00800-singing-01-005.wav 1`) though the corpus ships `.flac`.
    LibriSpeech flac files stand in for the audio; one trial names a test file that is absent."""
    files = list(librispeech_files(3, 2).values())
    genres = ("interview", "singing")
    for spk, flacs in zip(("id00000", "id00001"), files[:2], strict=True):
        for genre, flac in zip(genres, flacs, strict=True):
            link_or_copy(flac, root / "data" / spk / f"{genre}-01-001.flac")
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "dev.lst").write_text("id00000\n")
    eval_spk = {"id00800": (files[2], "singing-01-005"), "id00801": (files[0], "vlog-02-003")}
    enroll, trials = [], []
    for spk, ((first, second), test) in eval_spk.items():
        link_or_copy(first, root / "eval" / "enroll" / f"{spk}-enroll.flac")
        link_or_copy(second, root / "eval" / "test" / f"{spk}-{test}.flac")
        enroll.append(f"{spk}-enroll enroll/{spk}-enroll.wav")
    for e in eval_spk:
        for t, (_, test) in eval_spk.items():
            trials.append(f"{e}-enroll test/{t}-{test}.wav {int(e == t)}")
    trials.append("id00800-enroll test/id00999-movie-01-001.wav 0")  # listed, file missing
    (root / "eval" / "lists").mkdir(parents=True)
    (root / "eval" / "lists" / "enroll.lst").write_text("\n".join(enroll) + "\n")
    (root / "eval" / "lists" / "trials.lst").write_text("\n".join(trials) + "\n")
    return root


def musan_tree(root: Path) -> Path:
    """musan-mini's noise/ (2 ESC-50 clips), music/ (1 ogg, 44.1 kHz stereo), speech/ (1 flac),
    plus MUSAN's companion files that are not audio (ANNOTATIONS, LICENSE)."""
    mini = shared_data("musan-mini")
    picks = sorted((mini / "noise" / "free-sound").glob("*-*-*-*.wav"))[:2]
    picks += sorted((mini / "music" / "fma").glob("*.ogg"))[:1]
    picks += sorted((mini / "speech" / "librivox").glob("*.flac"))[:1]
    for src in picks:
        link_or_copy(src, root / src.relative_to(mini))
    write_text(root / "music" / "fma" / "ANNOTATIONS", "pibble.hq none\n")
    write_text(root / "LICENSE", "licence text\n")
    return root


# ---------------------------------------------------------------- cross-modal classification


def remux(src: Path, dst: Path, fmt: str) -> Path:
    """A real video's packets copied unchanged into another container (e.g. flv), with PyAV."""
    import av

    fresh_path(dst)
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dst


def mnist_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` real MNIST test images `[n, 28, 28]` uint8 and their labels."""
    import gzip

    folder = shared_data("mnist")
    images = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    pixels = np.frombuffer(images, np.uint8, offset=16)[: n * 784].reshape(n, 28, 28)
    return pixels.copy(), np.frombuffer(labels, np.uint8, offset=8)[:n].copy()


def write_image(pixels: np.ndarray, dst: Path, size: int | None = None) -> Path:
    """A grey or RGB uint8 array saved as an image (format from the suffix), optionally
    resized to `size` x `size` and made RGB."""
    from PIL import Image

    img = Image.fromarray(pixels)
    if size is not None:
        img = img.convert("RGB").resize((size, size))
    fresh_path(dst)
    img.save(dst, format="JPEG" if dst.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    return dst


#: real lines of AVE's Annotations.txt (YapengTian/AVE-ECCV18 data/Annotations.txt), by split
AVE_LINES = {
    "trainSet.txt": [
        "Male speech, man speaking&0qvQIuQoODo&good&1&4",
        "Female speech, woman speaking&-TCDqe327us&good&0&4",  # two events of one video
        "Male speech, man speaking&-TCDqe327us&good&0&4",
        "Church bell&VWi2ENBuTbw&good&0&0",  # the official files' one empty segment
        "Church bell&2An2JMGMbbs&good&0&10",  # its mp4 is a text file here
    ],
    "valSet.txt": ["Church bell&Gavpgq1WWh4&good&0&2"],
    "testSet.txt": [
        "Bark&5KEPA_ORiVI&good&2&4",
        "Female speech, woman speaking&0qvQIuQoODo&good&1&4",  # its video is also in train
        "Bark&E_1Asfq8it4&good&0&3",  # listed, no file here
        "Bark&broken",  # malformed
    ],
}


def ave_tree(root: Path) -> Path:
    """AVE_Dataset: ROOT/{Annotations,trainSet,valSet,testSet}.txt holding real annotation
    lines (`AVE_LINES`: one video with two events in one split, one whose events are in two
    splits, the empty segment) and ROOT/AVE/<VideoID>.mp4, faces/video.mp4 (4.2 s, H.264 +
    AAC) standing in for every clip. Bad: 2An2JMGMbbs.mp4 is a text file, E_1Asfq8it4.mp4 is
    missing, one line is malformed."""
    video = shared_data("faces", "video.mp4")
    for vid in ("0qvQIuQoODo", "-TCDqe327us", "VWi2ENBuTbw", "Gavpgq1WWh4", "5KEPA_ORiVI"):
        link_or_copy(video, root / "AVE" / f"{vid}.mp4")
    write_text(root / "AVE" / "2An2JMGMbbs.mp4", "not a video\n")
    header = "Category&VideoID&Quality&StartTime&EndTime"
    every = [ln for rows in AVE_LINES.values() for ln in rows if ln.count("&") == 4]
    extra = "Frying (food)&AIs4gx9RVTs&good&6&10"  # a category with no clip here
    write_text(root / "Annotations.txt", "\n".join([header, *every, extra]) + "\n")
    for name, rows in AVE_LINES.items():
        write_text(root / name, "\n".join(rows) + "\n")
    return root


def crema_d_tree(root: Path) -> Path:
    """CREMA-D: ROOT/AudioWAV/<Actor>_<Sentence>_<Emotion>_<Level>.wav (FSDD recordings, 8 kHz)
    and ROOT/VideoFlash/<same>.flv (faces/video.mp4 remuxed into FLV). Bad: a truncated wav
    (1003_DFA_FEA_XX), a wav whose .flv is missing (1003_IEO_DIS_LO), a misnamed wav."""
    wavs = sorted(shared_data("fsdd", "recordings").glob("*_jackson_*.wav"))
    flv = remux(
        shared_data("faces", "video.mp4"), root / "VideoFlash" / "1001_DFA_ANG_XX.flv", "flv"
    )
    good = ["1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1002_DFA_SAD_XX", "1002_ITS_NEU_XX"]
    for name, wav in zip(good, wavs, strict=False):
        link_or_copy(wav, root / "AudioWAV" / f"{name}.wav")
        if name != flv.stem:
            link_or_copy(flv, root / "VideoFlash" / f"{name}.flv")
    write_truncated(wavs[5], root / "AudioWAV" / "1003_DFA_FEA_XX.wav")
    link_or_copy(flv, root / "VideoFlash" / "1003_DFA_FEA_XX.flv")
    link_or_copy(wavs[6], root / "AudioWAV" / "1003_IEO_DIS_LO.wav")  # no .flv
    link_or_copy(wavs[7], root / "AudioWAV" / "notes.wav")
    return root


def vggsound_tree(root: Path) -> Path:
    """VGGSound: ROOT/vggsound.csv (3 classes, one label with a comma) and
    ROOT/video/<ytid>_<start>.mp4 (faces/video.mp4). Bad: `bad` (text named .mp4), `gone`
    (listed, no file), a row with too few fields."""
    video = shared_data("faces", "video.mp4")
    rows = [
        ("aaa", 30, "dog barking", "train"),
        ("bbb", 0, "dog barking", "test"),
        ("ccc", 10, "people marching, slow", "train"),
        ("ddd", 5, "people marching, slow", "test"),
        ("eee", 20, "church bell ringing", "train"),
        ("bad", 0, "dog barking", "train"),
        ("gone", 0, "people marching, slow", "train"),
    ]
    for ytid, start, _, _ in rows:
        if ytid == "bad":
            write_text(root / "video" / f"{ytid}_{start:06d}.mp4", "not a video\n")
        elif ytid != "gone":
            name = f"{ytid}_{start:06d}.mp4" if ytid != "ccc" else f"{ytid}_{start}.mp4"
            link_or_copy(video, root / "video" / name)
    text = "".join(f'{y},{s},"{lab}",{sp}\n' for y, s, lab, sp in rows) + "fff,1\n"
    write_text(root / "vggsound.csv", text)
    return root


def crisismmd_tree(root: Path) -> Path:
    """CrisisMMD v2.0: ROOT/crisismmd_datasplit_agreed_label/task_humanitarian_text_img_
    agreed_lab_{train,dev,test}.tsv and ROOT/data_image/<event>/<date>/<id>.jpg. The images
    are the real face photos of faces/test_images_aligned (as JPEG); the tweet texts are
    written here by the test. Bad: an image that is a text file, a row whose image is absent."""
    from PIL import Image

    faces = sorted(shared_data("faces", "test_images_aligned").glob("*/1.png"))
    labels = ["affected_individuals", "rescue_volunteering_or_donation_effort"]
    texts = [
        "Families evacuated from their homes wait at the shelter tonight",
        "Volunteers are collecting water and blankets at the church, please donate",
        "Many people lost everything in the flood, thoughts with them",
        "Red Cross teams are handing out food to evacuees downtown",
        "Residents displaced by the fire are staying with relatives",
    ]
    folder = "data_image/hurricane_harvey/28_8_2017"

    def row(tweet: int, text: str, label: str) -> str:
        cells = ["hurricane_harvey", str(tweet), f"{tweet}_0", text, f"{folder}/{tweet}_0.jpg"]
        return "\t".join([*cells, label, label, label])

    rows: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    splits = ["train", "train", "train", "dev", "test"]
    for k, (face, text, split) in enumerate(zip(faces, texts, splits, strict=True)):
        dst = fresh_path(root / folder / f"{900 + k}_0.jpg")
        Image.open(face).convert("RGB").save(dst, format="JPEG")
        rows[split].append(row(900 + k, text, labels[k % 2]))
    write_text(root / folder / "990_0.jpg", "not an image\n")
    rows["train"].append(row(990, "broken picture", labels[0]))
    rows["test"].append(row(991, "lost picture", labels[1]))  # no such image
    header = "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\tlabel_text\tlabel_image"
    for split, lines in rows.items():
        name = f"task_humanitarian_text_img_agreed_lab_{split}.tsv"
        write_text(
            root / "crisismmd_datasplit_agreed_label" / name, "\n".join([header, *lines]) + "\n"
        )
    return root


def cifar100_archive(root: Path, train: int = 30, test: int = 10, drop: str = "") -> Path:
    """ROOT/cifar-100-python.tar.gz in the real "python version" format (pickles `train`,
    `test`, `meta` of dicts with bytes keys), its images real MNIST digits made 32x32 RGB and
    labelled with their digit. The last training row has label 100 (out of range); `drop`
    leaves one member out."""
    import io
    import pickle
    import tarfile

    from PIL import Image

    images, labels = mnist_digits(train + test)
    rgb = [np.asarray(Image.fromarray(im).convert("RGB").resize((32, 32))) for im in images]
    data = np.stack([im.transpose(2, 0, 1).reshape(-1) for im in rgb])  # RGB planes, as CIFAR
    fine = [int(v) for v in labels]
    fine[train - 1] = 100
    names = [f"class_{i:02d}".encode() for i in range(100)]
    parts = {
        "train": {b"data": data[:train], b"fine_labels": fine[:train]},
        "test": {b"data": data[train:], b"fine_labels": fine[train:]},
        "meta": {b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20},
    }
    archive = fresh_path(root / "cifar-100-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for name, obj in parts.items():
            if name == drop:
                continue
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return archive


def tiny_imagenet_tree(root: Path, per_class: int = 4) -> Path:
    """ROOT/tiny-imagenet-200/: wnids.txt, words.txt, train/<wnid>/images/<wnid>_K.JPEG and
    val/images/val_K.JPEG + val/val_annotations.txt, the images real MNIST digits (64x64 RGB
    JPEG), one class per digit 0-2. Bad: a text file named .JPEG in train, a val image
    listed but absent, a val row naming an unknown wnid."""
    wnids = ["n01443537", "n01629819", "n01641577"]
    base = root / "tiny-imagenet-200"
    write_text(base / "wnids.txt", "\n".join(wnids) + "\n")
    words = [
        "goldfish, Carassius auratus",
        "European fire salamander",
        "bullfrog, Rana catesbeiana",
    ]
    write_text(
        base / "words.txt", "".join(f"{w}\t{n}\n" for w, n in zip(wnids, words, strict=True))
    )
    images, labels = mnist_digits(300)
    ann, count = [], {w: 0 for w in wnids}
    for k, (im, lab) in enumerate(zip(images, labels, strict=True)):
        if lab > 2:
            continue
        wnid = wnids[lab]
        n = count[wnid]
        count[wnid] += 1
        if n < per_class:
            write_image(im, base / "train" / wnid / "images" / f"{wnid}_{n}.JPEG", size=64)
        elif n < per_class + 2:
            write_image(im, base / "val" / "images" / f"val_{k}.JPEG", size=64)
            ann.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    write_text(base / "train" / wnids[0] / "images" / f"{wnids[0]}_99.JPEG", "not an image\n")
    write_text(base / "train" / wnids[0] / f"{wnids[0]}_boxes.txt", "boxes\n")
    ann += ["val_9998.JPEG\tn01443537\t0\t0\t63\t63", "val_9999.JPEG\tn99999999\t0\t0\t63\t63"]
    write_text(base / "val" / "val_annotations.txt", "\n".join(ann) + "\n")
    return root


NYU_SIZE = (48, 64)  # (H, W) of the NYU-Depth V2 fixture images; the real ones are 480 x 640
MATLAB73_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: cmkd tests HDF5 schema 1.00 ."
)


def _matlab73(path: Path):
    """An h5py file for `path` with MATLAB v7.3's 512-byte user block (header written on close)."""
    import h5py

    fresh_path(path)
    return h5py.File(path, "w", userblock_size=512)


def _stamp_matlab73(path: Path) -> None:
    header = MATLAB73_HEADER.ljust(116) + b" " * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header)


def _h5_cellstr(f, name: str, strings: list[str], refs_in=None) -> None:
    """A MATLAB v7.3 1xK cell of char arrays: object references into `#refs#` (uint16) of the
    file (`refs_in`, when `f` is a group inside it)."""
    import h5py

    refs = (refs_in if refs_in is not None else f).require_group("#refs#")
    out = f.create_dataset(name, (len(strings), 1), dtype=h5py.ref_dtype)
    for k, text in enumerate(strings):
        d = refs.create_dataset(f"{name}_{k}", data=np.array([[ord(c)] for c in text], np.uint16))
        d.attrs["MATLAB_class"] = np.bytes_("char")
        d.attrs["MATLAB_int_decode"] = np.int32(2)
        out[k, 0] = d.ref
    out.attrs["MATLAB_class"] = np.bytes_("cell")


def nyu_photos(n: int) -> list[Path]:
    """`n` real photos of ../shared/data/faces (test_images, multiface, aligned faces)."""
    faces = shared_data("faces")
    photos = sorted(faces.glob("test_images/*/1.jpg")) + [faces / "multiface.jpg"]
    photos += sorted(faces.glob("test_images_aligned/*/1.png"))
    if len(photos) < n:
        pytest.skip(f"../shared/data/faces holds {len(photos)} photos, the fixture needs {n}")
    return photos[:n]


def nyu_raw_labels(index: int) -> np.ndarray:
    """MADE-UP raw NYU labels (1..894, 0 = unlabelled) of fixture image `index`, `[H, W]`:
    bands of 6 rows x 16 columns, each one raw class; the top band unlabelled."""
    h, w = NYU_SIZE
    rows, cols = np.mgrid[0:h, 0:w]
    raw = 1 + ((rows // 6) * 4 + cols // 16 + 5 * index) % 894
    raw[:6] = 0
    return raw.astype(np.uint16)


def nyu_mapping() -> tuple[np.ndarray, list[str]]:
    """A MADE-UP 894 -> 40 `mapClass` (raw class j -> j mod 40, 1-based; the last raw class
    unmapped) and the 40 names `className`."""
    from data_prep.nyu_depth_v2 import NYU40

    mapping = np.arange(894) % 40 + 1.0
    mapping[-1] = 0
    return mapping, list(NYU40)


#: the real class13Mapping.mat (struct `classMapping13`): NYU-40 class k -> 13-class number
NYU13_LABELS = (12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5)
NYU13_LABELS += (7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7)
NYU13_NAMES = (
    "bed books ceiling chair floor furniture objects picture sofa table tv wall window".split()
)


def write_class13_mapping(path: Path, v73: bool = False) -> Path:
    """class13Mapping.mat in its real structure: a struct `classMapping13` with `labels13`
    (1x40 uint8) and `classNames` (1x13 cell of char), MATLAB v5 as distributed (v7.3 on
    request: an HDF5 group)."""
    import scipy.io

    labels = np.array([NYU13_LABELS], dtype=np.uint8)
    if v73:
        with _matlab73(path) as f:
            group = f.create_group("classMapping13")
            group.attrs["MATLAB_class"] = np.bytes_("struct")
            group.create_dataset("labels13", data=labels.T).attrs["MATLAB_class"] = np.bytes_(
                "uint8"
            )
            _h5_cellstr(group, "classNames", list(NYU13_NAMES), refs_in=f)
        _stamp_matlab73(path)
        return path
    names = np.empty((1, len(NYU13_NAMES)), dtype=object)
    names[0, :] = NYU13_NAMES
    struct = {"labels13": labels, "classNames": names}
    scipy.io.savemat(fresh_path(path), {"classMapping13": struct})
    return path


def nyu_depth_v2_tree(
    root: Path,
    train: tuple[int, ...] = (1, 2, 3, 4),
    test: tuple[int, ...] = (5, 6),
    mapping_v73: bool = True,
    bad_label: int | None = None,
) -> Path:
    """ROOT/nyu_depth_v2_labeled.mat in the real MATLAB v7.3 structure (HDF5 behind a 512-byte
    MATLAB header; h5py axis order `images` [N, 3, W, H] uint8, `depths` [N, W, H] float32
    metres, `labels` [N, W, H] uint16) with N = len(train) + len(test) REAL photos of
    ../shared/data/faces resized to 64 x 48 as the RGB images; the depths (a ramp with a
    per-image offset) and the labels (`nyu_raw_labels`) are MADE UP, not NYU's. Also
    ROOT/splits.mat (MATLAB v5: `trainNdxs`, `testNdxs`, 1-based), ROOT/classMapping40.mat
    (`mapClass`, `className` of `nyu_mapping`; v7.3 unless `mapping_v73` is false, then v5)
    and ROOT/class13Mapping.mat (the real one, `write_class13_mapping`).
    `bad_label`: that image (1-based) gets a raw label 900, outside the mapping."""
    import scipy.io
    from PIL import Image

    h, w = NYU_SIZE
    n = len(train) + len(test)
    images = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((w, h)), np.uint8).transpose(2, 1, 0)
            for p in nyu_photos(n)
        ]
    )
    rows = np.arange(h, dtype=np.float32)[None, :]
    depths = np.stack([(1.0 + 3.0 * rows / h + 0.25 * i).repeat(w, 0) for i in range(n)])
    labels = np.stack([nyu_raw_labels(i).T for i in range(n)])
    if bad_label is not None:
        labels[bad_label - 1, 5, 20] = 900
    mat = root / "nyu_depth_v2_labeled.mat"
    with _matlab73(mat) as f:
        for name, data, cls in (
            ("images", images, "uint8"),
            ("depths", depths.astype(np.float32), "single"),
            ("labels", labels, "uint16"),
        ):
            f.create_dataset(name, data=data).attrs["MATLAB_class"] = np.bytes_(cls)
    _stamp_matlab73(mat)
    column = {
        "trainNdxs": np.array(train, float)[:, None],
        "testNdxs": np.array(test, float)[:, None],
    }
    scipy.io.savemat(fresh_path(root / "splits.mat"), column)
    mapping, names = nyu_mapping()
    map_path = root / "classMapping40.mat"
    if mapping_v73:
        with _matlab73(map_path) as f:
            f.create_dataset("mapClass", data=mapping[:, None]).attrs["MATLAB_class"] = np.bytes_(
                "double"
            )
            _h5_cellstr(f, "className", names)
        _stamp_matlab73(map_path)
    else:
        cells = np.empty((1, len(names)), dtype=object)
        cells[0, :] = names
        scipy.io.savemat(fresh_path(map_path), {"mapClass": mapping[None, :], "className": cells})
    write_class13_mapping(root / "class13Mapping.mat")
    return root
