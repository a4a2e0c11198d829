"""The `cmkd` command line: one thin function per stage; the work lives in `cmkd_cli.stages`.

Each function builds its stage's options model and calls `stage.run(options)`. It imports
its stage when it runs: the stages bring torch, numpy, the plug-ins and the recipe schema
(pydantic builds its models at import, ~0.1 s), which `cmkd --help` and the other commands
do not need (`cmkd --help` took 2.0 s with them, 1.2 s without; see the README's layout).

Exit codes: 0 success, 1 the run failed, 2 bad usage or an invalid recipe.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from cmkd_cli import __version__, cligen, console, interrupts

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer
    from click import ClickException
from cmkd_cli.errors import CmkdError, RunError, UsageError
from cmkd_cli.io import disk_full, no_space
from cmkd_cli.native import explain_load_error
from cmkd_cli.stages import prepare

#: the stages' commands, each generated from its options model when first used
STAGES, RECIPES = cligen.LazyCommands(), cligen.LazyCommands()

app = typer.Typer(
    name="cmkd",
    help="Cross-modal knowledge distillation: prepare data, train teachers, distill, evaluate.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=STAGES.group,
)
recipes_app = typer.Typer(
    help="List and show the bundled recipes.", no_args_is_help=True, cls=RECIPES.group
)
app.add_typer(recipes_app, name="recipes")


def stage(
    group: cligen.LazyCommands,
    name: str,
    model: str,
    module: str,
    *,
    run: str = "run",
    render: str = "render",
    check: str | None = None,
    hidden: bool = False,
) -> None:
    """`cmkd NAME`, generated from its options model (`cmkd_cli.options.MODEL`, "module:Class")
    when first used: runs `cmkd_cli.stages.MODULE.run` (imported only then: see the module
    docstring), prints the result, and exits 1 with the message `check(result)` gives."""

    def action(options) -> None:
        stage_module = importlib.import_module(f"cmkd_cli.stages.{module}")
        result = getattr(stage_module, run)(options)
        console.emit(result, getattr(stage_module, render)(result))
        problem = check and getattr(stage_module, check)(result)
        if problem:
            raise RunError(problem)

    group.add(name, f"cmkd_cli.options.{model}", action, hidden=hidden)


prepare_app = prepare.lazy_app()  # `cmkd prepare NAME`, one sub-command per data_prep reader
app.add_typer(prepare_app, name="prepare")
app.add_typer(prepare_app, name="prepare-data", hidden=True)

RecipeOpt = Annotated[
    str | None, typer.Option("--recipe", "-r", help="recipe name (see `cmkd recipes list`) or path")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a field: --set method.T=4 (repeatable)"),
]
VarOpt = Annotated[
    list[str] | None,
    typer.Option("--var", help="path variable for ${name} in recipes: --var data_root=/data"),
]


def parse_vars(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--var {item!r}: expected NAME=VALUE")
        k, _, v = item.partition("=")
        out[k.strip()] = v
    return out


# Global flags, accepted before or after the stage (`cmkd --json distill` = `cmkd distill --json`).
GLOBAL_FLAGS = ("--json", "--debug", "--quiet", "-q")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Move the global flags typed after the stage name to the front (up to a `--`)."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in argv[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + argv[end:]


def _print_version(value: bool) -> None:
    if value:
        console.stdout.print(f"cmkd {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    json_out: Annotated[
        bool, typer.Option("--json", help="print the result as JSON on stdout")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="no progress or log lines (the result is still printed)"
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_print_version, is_eager=True, help="print the version"
        ),
    ] = False,
) -> None:
    console.configure(json=json_out, debug=debug, quiet=quiet)


@app.command()
def distill(
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    var: VarOpt = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="comma-separated seeds, e.g. 1,2,3")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue the run or study in this directory")
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            help="run only these compare variants (names or shell-style patterns: a2v-*)",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="replace run directories that hold another recipe"),
    ] = False,
) -> None:
    """Train a student with a distillation method (reads a recipe; writes runs/NAME/).

    Reads: the recipe (+ its data and teacher checkpoint). Writes: runs/NAME/{config.yaml,
    metrics.jsonl, last.pt, best.pt, final.json, events.*} per run, and for studies with
    several seeds or `compare:` variants one sub-directory per run plus results.json.
    A run directory of the same recipe is skipped when finished and resumed when not; one
    of another recipe is refused (exit 2) unless --overwrite. SIGINT/SIGTERM finish the
    current step, write last.pt and exit 130/143; --resume DIR continues.
    """
    from cmkd_cli.stages import distill as stage  # start-up: see the docstring

    options = stage.DistillOptions(
        recipe=recipe,
        sets=set_ or [],
        variables=parse_vars(var),
        seeds=stage.parse_seeds(seeds),
        resume=resume,
        variants=variant or [],
        overwrite=overwrite,
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


@app.command("train-teacher")
def train_teacher(
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    var: VarOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="output directory (default runs/NAME/teacher)")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an OUT that holds another teacher")
    ] = False,
) -> None:
    """Train the recipe's teacher on its own modality (reads a recipe; writes teacher.pt).

    Writes OUT/{config.yaml, metrics.jsonl, last.pt, best.pt, teacher.pt, final.json}; a
    later `distill` of the same recipe finds teacher.pt and does not train it again.
    """
    from cmkd_cli.stages import train_teacher as stage  # start-up: see the docstring

    options = stage.TeacherOptions(
        recipe=recipe, sets=set_ or [], variables=parse_vars(var), out=out, overwrite=overwrite
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


stage(STAGES, "report", "runs:ReportOptions", "report")


@app.command("extract-fbank")
def extract_fbank(
    manifest: Annotated[
        Path, typer.Option("--manifest", help="manifest.jsonl (or its folder) from `cmkd prepare`")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder of the feature store")],
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="processes (default min(4, CPUs))")
    ] = None,
    frontend: Annotated[
        str,
        typer.Option(
            "--frontend",
            help="kaldi (compute-fbank-feats) or voxceleb_trainer (ResNetSE34V2's "
            "MelSpectrogram: pre-emphasis, hamming, centred frames, log(x+1e-6))",
        ),
    ] = "kaldi",
    n_mels: Annotated[int, typer.Option("--n-mels", min=1, help="mel bands")] = 40,
    cmn: Annotated[
        bool | None,
        typer.Option(
            "--cmn/--no-cmn",
            help="per-utterance mean normalisation (default: on for kaldi, off for "
            "voxceleb_trainer)",
            show_default=False,
        ),
    ] = None,
    dither: Annotated[float, typer.Option("--dither", min=0, help="Kaldi dither")] = 0.0,
    dtype: Annotated[str, typer.Option("--dtype", help="float16 or float32")] = "float16",
    shard_size: Annotated[int, typer.Option("--shard-size", help="utterances per shard")] = 1000,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="recompute a store made with another config")
    ] = False,
) -> None:
    """Compute log-mel fbanks (25 ms window, 10 ms step) of every manifest record.

    Reads the manifest's audio. Writes OUT/shard-NNNNN.npy (frames of many utterances),
    OUT/shard-NNNNN.jsonl, OUT/index.jsonl (id -> shard, offset, n_frames), OUT/config.json
    and OUT/skipped.jsonl. Resumable: finished shards are kept and only missing ids computed.
    """
    from cmkd_cli.stages import extract_fbank as stage  # start-up: see the docstring

    if dtype not in ("float16", "float32"):
        raise UsageError(f"--dtype {dtype!r}: choose float16 or float32")
    options = stage.ExtractOptions(
        manifest=manifest,
        out=out,
        workers=workers,
        n_mels=n_mels,
        cmn=cmn,
        dither=dither,
        dtype=dtype,  # type: ignore[arg-type]
        shard_size=shard_size,
        overwrite=overwrite,
        frontend=frontend,
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


TrialsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--trials",
        help="voxceleb1-o, voxceleb1-e, voxceleb1-h, cnceleb or a trial file (repeatable)",
    ),
]
ManifestOpt = Annotated[
    Path | None, typer.Option("--manifest", help="manifest of the test utterances (prepare)")
]
EvalManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help="the test data: speaker checkpoints, the manifest of the test utterances; "
        "classification and segmentation, the prepared dataset (default: the run's)",
    ),
]
FbankOpt = Annotated[
    Path | None, typer.Option("--fbank", help="fbank store of the test utterances (clean only)")
]
ListsOpt = Annotated[Path | None, typer.Option("--lists", help="folder of the trial lists")]
OriginalOpt = Annotated[
    bool, typer.Option("--original", help="the original VoxCeleb lists instead of the cleaned")
]
MusanOpt = Annotated[Path | None, typer.Option("--musan", help="MUSAN root or its manifest")]
DetOpt = Annotated[
    Path | None,
    typer.Option(
        "--det", help="DET curve PNG (several lists/levels: PATH-<list>[-snrN].png beside it)"
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto|cpu|cuda")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="utterances per forward pass")]
CropsOpt = Annotated[
    int | None,
    typer.Option("--crops", min=1, help="evenly spaced crops per utterance (default: stored)"),
]
CropSecondsOpt = Annotated[
    float | None,
    typer.Option("--crop-seconds", min=0.01, help="length of each crop (default: stored)"),
]
ScoreOpt = Annotated[
    str | None,
    typer.Option(
        "--score",
        help="cosine (mean crop-pair cosine) or distance (minus the mean distance of the "
        "normalised crops, voxceleb_trainer's); default: the recipe's task_params.score",
        show_default=False,
    ),
]
PTargetOpt = Annotated[
    float | None,
    typer.Option("--p-target", help="minDCF target prior (default: the recipe's, else 0.01)"),
]
CMissOpt = Annotated[
    float | None, typer.Option("--c-miss", help="minDCF cost of a miss (default 1)")
]
CFaOpt = Annotated[
    float | None, typer.Option("--c-fa", help="minDCF cost of a false alarm (default 1)")
]


def _eval(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", "-c", help="student.pt or a run's best.pt/last.pt")
    ],
    trials: TrialsOpt = None,
    manifest: EvalManifestOpt = None,
    var: Annotated[
        list[str] | None,
        typer.Option(
            "--var",
            help="point a path variable of the run elsewhere: --var data_root=/new/place",
        ),
    ] = None,
    fbank: FbankOpt = None,
    lists: ListsOpt = None,
    original: OriginalOpt = False,
    musan: MusanOpt = None,
    musan_snr: Annotated[
        float | None, typer.Option("--musan-snr", help="mix MUSAN noise at this SNR (dB)")
    ] = None,
    det: DetOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8,
    crops: CropsOpt = None,
    crop_seconds: CropSecondsOpt = None,
    score: ScoreOpt = None,
    p_target: PTargetOpt = None,
    c_miss: CMissOpt = None,
    c_fa: CFaOpt = None,
    scores_out: Annotated[
        Path | None,
        typer.Option("--scores-out", help="write `utt1 utt2 score label` per trial here"),
    ] = None,
) -> None:
    """Evaluate a student (student.pt, or a run's best.pt) without its teacher.

    Speaker checkpoints: reads the trial list(s), the test manifest and fbank store (or
    decodes the audio, e.g. to mix MUSAN noise at --musan-snr dB); prints EER and minDCF.
    Classification and segmentation checkpoints: the metrics on the test split of the data
    the run read (its paths are recorded absolute), or of --manifest, or with --var
    NAME=PATH when the data moved. Writes only the DET PNG asked for with --det and the
    scores asked for with --scores-out (one file per trial list and noise level:
    FILE-LIST[-snrN].txt when there are several); --json prints the result.
    """
    from cmkd_cli.stages import evaluate as stage  # start-up: see the docstring

    options = stage.EvalOptions(
        checkpoint=checkpoint,
        trials=trials or [],
        manifest=manifest,
        variables=parse_vars(var),
        fbank=fbank,
        lists=lists,
        original=original,
        musan=musan,
        snrs=[musan_snr],
        det=det,
        device=device,
        batch_size=batch_size,
        crops=crops,
        crop_seconds=crop_seconds,
        score=score,
        p_target=p_target,
        c_miss=c_miss,
        c_fa=c_fa,
        scores_out=scores_out,
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


app.command("eval")(_eval)
app.command("evaluate", hidden=True)(_eval)


@app.command("noise-test")
def noise_test(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="a run's best.pt")],
    musan: Annotated[Path, typer.Option("--musan", help="MUSAN root or its manifest")],
    snr: Annotated[
        list[float] | None, typer.Option("--snr", help="SNR levels in dB: --snr 15 10 5")
    ] = None,
    more_snr: Annotated[list[float] | None, typer.Argument(hidden=True)] = None,
    trials: TrialsOpt = None,
    manifest: ManifestOpt = None,
    lists: ListsOpt = None,
    original: OriginalOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8,
    crops: CropsOpt = None,
    crop_seconds: CropSecondsOpt = None,
    score: ScoreOpt = None,
    p_target: PTargetOpt = None,
    c_miss: CMissOpt = None,
    c_fa: CFaOpt = None,
) -> None:
    """EER per noise level (paper A Table 1): clean, then MUSAN noise at each --snr.

    Reads the checkpoint, trial list(s), test manifest and MUSAN; noise is seeded per
    utterance. Prints one row per trial list and level; --json prints the result.
    """
    from cmkd_cli.stages import evaluate as stage  # start-up: see the docstring

    levels = [*(snr or []), *(more_snr or [])] or [15.0, 10.0, 5.0]
    options = stage.EvalOptions(
        checkpoint=checkpoint,
        trials=trials or [],
        manifest=manifest,
        lists=lists,
        original=original,
        musan=musan,
        snrs=[None, *levels],
        device=device,
        batch_size=batch_size,
        crops=crops,
        crop_seconds=crop_seconds,
        score=score,
        p_target=p_target,
        c_miss=c_miss,
        c_fa=c_fa,
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


StudentOpt = Annotated[
    Path, typer.Option("--checkpoint", "-c", help="student.pt or a run's best.pt/last.pt")
]


@app.command()
def embed(
    checkpoint: StudentOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
    files: Annotated[list[Path] | None, typer.Argument(help="input files")] = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="embed a manifest's records instead")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="only the manifest records of this split")
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="inputs a pass")] = 16,
    crops: CropsOpt = None,
    crop_seconds: CropSecondsOpt = None,
) -> None:
    """Embed files (or a manifest's records) with a student, as the Python API does.

    Reads the checkpoint and the inputs (wav/flac/m4a for audio students, images, text
    files). Writes OUT/embeddings.npy [N, D] with OUT/ids.txt (one id a line: the path, or
    the record id), OUT/crops.npy [N, K, D] for speaker students, OUT/embed.json and
    OUT/skipped.jsonl. Streamed and resumable: a killed run continues where it stopped.
    """
    from cmkd_cli.stages import embed as stage  # start-up: see the docstring

    options = stage.EmbedFilesOptions(
        checkpoint=checkpoint,
        files=files or [],
        manifest=manifest,
        split=split,
        out=out,
        device=device,
        batch_size=batch_size,
        crops=crops,
        crop_seconds=crop_seconds,
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


@app.command()
def score(
    trials: Annotated[Path, typer.Option("--trials", help="trial list (label utt1 utt2)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="score file to write")],
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="student.pt or a run's best.pt")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="trial names are this manifest's ids")
    ] = None,
    fbank: FbankOpt = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="trial names are files under this folder")
    ] = None,
    embeddings: Annotated[
        Path | None, typer.Option("--embeddings", help="a `cmkd embed` output folder")
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8,
    crops: CropsOpt = None,
    crop_seconds: CropSecondsOpt = None,
    score_: ScoreOpt = None,
    p_target: PTargetOpt = None,
    c_miss: CMissOpt = None,
    c_fa: CFaOpt = None,
) -> None:
    """Score every trial of a list: one `utt1 utt2 score [label]` line each (Kaldi style).

    Reads the trial list and the student with the utterances (--manifest [--fbank], --root)
    or the embeddings `cmkd embed` wrote (--embeddings). Speaker students are scored as
    `cmkd eval` scores (mean cosine over the crop pairs). Writes OUT; prints EER and minDCF
    when the list has labels.
    """
    from cmkd_cli.stages import score as stage  # start-up: see the docstring

    options = stage.ScoreOptions(
        checkpoint=checkpoint,
        trials=trials,
        out=out,
        manifest=manifest,
        fbank=fbank,
        root=root,
        embeddings=embeddings,
        device=device,
        batch_size=batch_size,
        crops=crops,
        crop_seconds=crop_seconds,
        score=score_,
        p_target=p_target,
        c_miss=c_miss,
        c_fa=c_fa,
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


@app.command("export")
def export_(
    checkpoint: StudentOpt,
    fmt: Annotated[str, typer.Option("--format", "-f", help="torchscript or onnx")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
    inputs: Annotated[
        list[Path] | None,
        typer.Option("--input", "-i", help="a real input to verify on (repeatable)"),
    ] = None,
    examples: Annotated[
        int, typer.Option("--examples", min=1, help="test samples used without --input")
    ] = 4,
    atol: Annotated[
        float, typer.Option("--atol", min=0.0, help="largest allowed difference from eager")
    ] = 1e-4,
) -> None:
    """Export a student with its front-end (fbank, spectrogram, normalisation) to TorchScript
    (scripted) or ONNX (torch.export), then check it against eager PyTorch on real inputs.

    Reads the checkpoint and the --input files (else the run's first test samples). Writes
    OUT/model.ts or OUT/model.onnx, OUT/model.json and OUT/README.md (inputs, outputs,
    preprocessing left outside the graph), only when every output matches within --atol;
    exit 1 otherwise. ONNX needs the `export` extra (onnx, onnxruntime, onnxscript).
    """
    from cmkd_cli.stages import export as stage  # start-up: see the docstring

    if fmt not in ("torchscript", "onnx"):
        raise UsageError(f"--format {fmt!r}: choose torchscript or onnx")
    options = stage.ExportOptions(
        checkpoint=checkpoint,
        format=fmt,  # type: ignore[arg-type]
        out=out,
        inputs=inputs or [],
        examples=examples,
        atol=atol,
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


@app.command()
def average(
    run: Annotated[Path, typer.Option("--run", help="a run directory (train.keep_last set)")],
    last: Annotated[int, typer.Option("--last", min=1, help="average the last K epochs")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="default RUN/student-avg.pt")
    ] = None,
    bn_batches: Annotated[
        int,
        typer.Option(
            "--bn-batches", min=0, help="training batches to recompute BatchNorm on (0: keep)"
        ),
    ] = 100,
    device: DeviceOpt = "auto",
) -> None:
    """Average the weights of a run's last K epochs into one student.pt (wespeaker avg_model).

    Reads RUN/epochs/epoch-NNNN.pt (kept when the recipe sets `train.keep_last: K`) and,
    to recompute the BatchNorm statistics of the averaged network, the run's training data.
    Writes OUT, a student.pt for eval, embed, score, export and `cmkd_cli.load`.
    """
    from cmkd_cli.stages import average as stage  # start-up: see the docstring

    options = stage.AverageOptions(
        run=run, last=last, out=out, bn_batches=bn_batches, device=device
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


@app.command("cross-match")
def cross_match(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="a run's best.pt")],
    manifest: ManifestOpt = None,
    fbank: FbankOpt = None,
    triplets: Annotated[int, typer.Option("--triplets", help="triplets per protocol")] = 10000,
    hard: Annotated[bool, typer.Option("--hard", help="both options of the same gender")] = False,
    seed: Annotated[int, typer.Option("--seed", help="seed of the triplet draw")] = 0,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8,
    crops: CropsOpt = None,
    crop_seconds: CropSecondsOpt = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            help="records to draw from (default: the held-out split, the recipe's "
            "face_eval_split or test; `all` for every record)",
        ),
    ] = None,
) -> None:
    """Cross-modal matching with student and projected teacher embeddings (paper A).

    Speaker checkpoints: reads a manifest with audio and aligned faces (align-faces) and
    scores audio -> 2 faces and face -> 2 audios triplets drawn from the records of one
    split (held-out speakers by default). Classification checkpoints: each sample of the
    split against every class's teacher embedding. Prints accuracy, chance and the number
    of distinct records the trials used.
    """
    from cmkd_cli.stages import cross_match as stage  # start-up: see the docstring

    options = stage.CrossMatchOptions(
        checkpoint=checkpoint,
        manifest=manifest,
        fbank=fbank,
        triplets=triplets,
        hard=hard,
        seed=seed,
        device=device,
        batch_size=batch_size,
        crops=crops,
        crop_seconds=crop_seconds,
        split=split,
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


@app.command()
def analyze(
    run_dirs: Annotated[list[Path], typer.Argument(help="run or study directories")],
    kept: Annotated[bool, typer.Option("--kept", help="OFSD kept fraction per epoch")] = False,
    krc: Annotated[bool, typer.Option("--krc", help="KRC of teacher vs student logits")] = False,
    cka: Annotated[bool, typer.Option("--cka", help="linear CKA of the features")] = False,
    embeddings: Annotated[
        bool, typer.Option("--embeddings", help="2-D plot of teacher/projected/student")
    ] = False,
    cost: Annotated[bool, typer.Option("--cost", help="time per epoch, peak memory")] = False,
    all_: Annotated[bool, typer.Option("--all", help="every analysis that applies")] = False,
    split: Annotated[str, typer.Option("--split", help="train|val|test")] = "test",
    max_samples: Annotated[
        int, typer.Option("--max-samples", help="samples of the split used (seeded draw)")
    ] = 2000,
    tsne: Annotated[bool, typer.Option("--tsne", help="t-SNE instead of PCA")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="output folder (default RUN_DIR/analysis)")
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Analyses of a run or study: --kept (C2KD Fig. 3), --krc (Fig. 1b), --cka (Fig. 6),
    --embeddings (soft CMKD Fig. 8), --cost (C2KD appendix E).

    Reads metrics.jsonl, config.yaml and best.pt of each run (each VARIANT/seed-S/ of a
    study). Writes OUT/{kept,krc,cost}.png, OUT/cka-RUN.png, OUT/embeddings-RUN.png and
    OUT/analysis.json. Without flags (or --all): every analysis that applies; a flag asked
    for that cannot be done is an error.
    """
    from cmkd_cli.stages import analyze as stage  # start-up: see the docstring

    flags = {"kept": kept, "krc": krc, "cka": cka, "embeddings": embeddings, "cost": cost}
    asked = None if all_ or not any(flags.values()) else [k for k, v in flags.items() if v]
    options = stage.AnalyzeOptions(
        roots=run_dirs,
        analyses=asked,
        split=split,
        max_samples=max_samples,
        tsne=tsne,
        out=out,
        device=device,
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


@app.command("align-faces")
def align_faces(
    manifest: Annotated[Path, typer.Option("--manifest", help="manifest with `frames` (prepare)")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per MTCNN batch")] = 16,
    device: DeviceOpt = "auto",
    min_prob: Annotated[float, typer.Option("--min-prob", help="least face probability")] = 0.9,
    max_side: Annotated[
        int, typer.Option("--max-side", help="downscale frames to this size for detection")
    ] = 640,
) -> None:
    """Detect (MTCNN) and align (5-point similarity to the 112x112 ArcFace template) faces.

    Reads each record's `frames` (relative to the manifest's folder).
    Writes OUT/faces/ID/K.png (112x112: the largest face with probability
    >= --min-prob), OUT/manifest.jsonl (the records with `faces` added) and
    OUT/skipped.jsonl (records without a face: none detected, not an image).
    Resumable: faces on disk and the OUT/faces/ID/K.noface.txt markers of
    failed frames are not redone.
    """
    from cmkd_cli.stages import align_faces as stage  # start-up: see the docstring

    options = stage.AlignFacesOptions(
        manifest=manifest,
        out=out,
        batch_size=batch_size,
        device=device,
        min_prob=min_prob,
        max_side=max_side,
    )
    result = stage.run(options)
    console.emit(result, stage.render(result))


stage(STAGES, "doctor", "tools:DoctorOptions", "doctor", check="failure")


stage(RECIPES, "list", "tools:ListOptions", "recipes", run="list_all", render="render_list")
stage(RECIPES, "show", "tools:ShowOptions", "recipes", run="show", render="render_show")


def _reflow_help(*apps: typer.Typer) -> None:
    """Every command's help (its `help=` or docstring) reflowed."""
    for each in apps:
        for info in each.registered_commands:
            doc = info.help or inspect.getdoc(info.callback)
            if doc:
                info.help = cligen.reflow(doc)


_reflow_help(app, recipes_app)


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before exiting (gloo's threads otherwise
    abort the interpreter at shutdown)."""
    if "torch.distributed" in sys.modules:
        from cmkd_cli.engine.distributed import cleanup  # loads torch: only when it is loaded

        cleanup()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn errors into one sentence and an exit code."""
    argv = hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    try:
        with interrupts.handle_signals():
            code = app(args=argv, prog_name="cmkd", standalone_mode=False)
        _leave_process_group()
        if isinstance(code, int) and code:  # click returns (not raises) Exit codes here
            if code == 130:  # a Ctrl-C that reached click as KeyboardInterrupt
                console.stderr.print("interrupted")
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.stderr.print("aborted")
        sys.exit(130)
    except interrupts.Interrupted as exc:
        console.stderr.print(str(exc), markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except interrupts.StopNow as stop:
        console.stderr.print(
            f"interrupted ({stop}); what was finished is kept: run the same command again "
            "to continue",
            markup=False,
            highlight=False,
        )
        sys.exit(interrupts.exit_code(stop.signum))
    except ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code in (2, None) else exc.exit_code)
    except CmkdError as exc:
        if console.settings().debug:
            traceback.print_exc()
        console.stderr.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.stderr.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last resort: one line unless --debug
        full = disk_full(exc)  # a write no `writing()` guarded: the OSError's file, if any
        native = str(no_space(full.filename, full)) if full else explain_load_error(exc)
        if console.settings().debug:
            traceback.print_exc()
        if native:
            console.stderr.print(f"error: {native}", markup=False, highlight=False)
        elif not console.settings().debug:
            console.stderr.print(
                f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                markup=False,
                highlight=False,
            )
        sys.exit(1)
