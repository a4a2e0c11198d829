"""Two trained runs shared by the shipping tests: a speaker student on real LibriSpeech
speech and the quickstart's digits student, each trained once per session through the CLI."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures_layouts import librispeech_files, write_wav_from

KEEP = 2  # epochs kept for `cmkd average`


def run_cli(*args: object) -> None:
    """`cmkd ARGS` in-process; fails the fixture on a non-zero exit."""
    from cmkd_cli.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert not exc.code, f"cmkd {' '.join(map(str, args[:2]))} exited {exc.code}"


@dataclass(frozen=True)
class SpeakerRun:
    run: Path
    manifest: Path
    fbank: Path
    trials: Path
    test_wavs: dict[str, Path]  # trial name -> wav

    @property
    def data_args(self) -> list[object]:
        """The eval / score arguments naming the trial list, manifest and feature store."""
        return ["--trials", self.trials, "--manifest", self.manifest, "--fbank", self.fbank]


@pytest.fixture(scope="session")
def speaker_run(tmp_path_factory) -> SpeakerRun:
    """vox2-baseline shrunk: 6 LibriSpeech speakers x 4 utterances to train (3 s each),
    4 other speakers x 3 utterances to test (66 trials), 2 epochs of a quarter-width
    ResNet34-ASP, 2 crops of 2 s, the last two epochs kept; the recipe's voxceleb_trainer
    front-end and mean-distance trial score."""
    from cmkd_cli.data.manifest import Record, write_manifest

    root = tmp_path_factory.mktemp("speaker-run")
    files = list(librispeech_files(10, 4).items())
    records, test_wavs = [], {}
    for n, (spk, flacs) in enumerate(files):
        split = "dev" if n < 6 else "test"
        for k, flac in enumerate(flacs[: 4 if split == "dev" else 3]):
            name = f"id{spk}/{k:05d}"
            wav = write_wav_from(flac, root / "wav" / f"{name}.wav", seconds=3.0)
            records.append(Record(id=name, speaker=spk, audio=str(wav), split=split))
            if split == "test":
                test_wavs[f"{name}.wav"] = wav
    write_manifest(root / "data", records)
    manifest = root / "data" / "manifest.jsonl"
    trials = root / "trials.txt"
    spk = lambda name: name.split("/")[0]  # noqa: E731
    trials.write_text(
        "".join(
            f"{int(spk(a) == spk(b))} {a} {b}\n"
            for a, b in itertools.combinations(sorted(test_wavs), 2)
        )
    )
    fbank = root / "fbank"
    run_cli(
        "--quiet",
        "extract-fbank",
        "--manifest",
        manifest,
        "--out",
        fbank,
        "--workers",
        1,
        "--frontend",
        "voxceleb_trainer",
    )
    sets = {
        "data.params.train_manifest": manifest,
        "data.params.train_fbank": fbank,
        "data.params.val_manifest": manifest,
        "data.params.val_fbank": fbank,
        "data.params.val_trials": trials,
        "data.params.eval_crops": 2,
        "data.params.eval_seconds": 2.0,
        "data.batch_size": 4,
        "data.eval_batch_size": 4,
        "data.num_workers": 0,
        "student.params.width": "quarter",
        "student.params.embed_dim": 64,
        "train.epochs": 2,
        "train.amp": "none",
        "train.threads": 2,
        "train.keep_last": KEEP,
        "eval.every": 1,
        "output.root": root / "runs",
    }
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    run_cli("--quiet", "distill", "--recipe", "vox2-baseline", "--var", f"work={root}", *args)
    return SpeakerRun(root / "runs" / "vox2-baseline", manifest, fbank, trials, test_wavs)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """The quickstart's paper A feature method, one seed, 3 epochs, the last two kept."""
    root = tmp_path_factory.mktemp("digits-run")
    run_cli(
        "--quiet",
        "distill",
        "--recipe",
        "quickstart",
        "--seeds",
        "1",
        "--variant",
        "soft-feature",
        "--set",
        "train.epochs=3",
        "--set",
        f"train.keep_last={KEEP}",
        "--set",
        f"output.root={root}",
    )
    return root / "quickstart" / "soft-feature" / "seed-1"
