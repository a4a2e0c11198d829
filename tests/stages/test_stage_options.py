"""Each CLI command builds one typed options model and hands it to its stage's `run`."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest

P = Path


def _cases():
    from cmkd_cli.stages import (
        align_faces,
        analyze,
        cross_match,
        distill,
        doctor,
        evaluate,
        export,
        extract_fbank,
        recipes,
        report,
        train_teacher,
    )
    from cmkd_cli.stages import average as average_stage
    from cmkd_cli.stages import embed as embed_stage
    from cmkd_cli.stages import score as score_stage

    embed = {"device": "cpu", "batch_size": 3, "crops": 2, "crop_seconds": 1.5}
    embed_flags = ["--device", "cpu", "--batch-size", "3", "--crops", "2", "--crop-seconds", "1.5"]
    return [
        (
            ["distill", "-r", "quickstart", "--set", "a.b=1", "--var", "root=/d"]
            + ["--seeds", "1,2", "--variant", "kd"],
            "distill",
            "run",
            distill.DistillOptions(
                recipe="quickstart",
                sets=["a.b=1"],
                variables={"root": "/d"},
                seeds=[1, 2],
                variants=["kd"],
            ),
        ),
        (
            ["distill", "--resume", "runs/x"],
            "distill",
            "run",
            distill.DistillOptions(resume=P("runs/x")),
        ),
        (
            ["train-teacher", "-r", "quickstart", "--out", "t"],
            "train_teacher",
            "run",
            train_teacher.TeacherOptions(recipe="quickstart", out=P("t")),
        ),
        (
            ["report", "runs/x", "--no-plots"],
            "report",
            "run",
            report.ReportOptions(run_dir=P("runs/x"), plots=False),
        ),
        (
            ["extract-fbank", "--manifest", "m", "--out", "o", "--workers", "2", "--n-mels", "80"]
            + ["--no-cmn", "--dither", "1", "--dtype", "float32", "--shard-size", "5"]
            + ["--overwrite", "--frontend", "voxceleb_trainer"],
            "extract_fbank",
            "run",
            extract_fbank.ExtractOptions(
                manifest=P("m"),
                out=P("o"),
                workers=2,
                n_mels=80,
                cmn=False,
                dither=1.0,
                dtype="float32",
                shard_size=5,
                overwrite=True,
                frontend="voxceleb_trainer",
            ),
        ),
        (
            ["eval", "-c", "best.pt", "--trials", "a", "--trials", "b", "--manifest", "m"]
            + ["--fbank", "f", "--lists", "l", "--original", "--musan", "mu"]
            + ["--musan-snr", "5", "--det", "d.png", *embed_flags]
            + ["--score", "distance", "--p-target", "0.05", "--c-miss", "2", "--c-fa", "3"]
            + ["--scores-out", "s.txt", "--var", "data_root=/d"],
            "evaluate",
            "run",
            evaluate.EvalOptions(
                checkpoint=P("best.pt"),
                trials=["a", "b"],
                manifest=P("m"),
                variables={"data_root": "/d"},
                fbank=P("f"),
                lists=P("l"),
                original=True,
                musan=P("mu"),
                snrs=[5.0],
                det=P("d.png"),
                score="distance",
                p_target=0.05,
                c_miss=2.0,
                c_fa=3.0,
                scores_out=P("s.txt"),
                **embed,
            ),
        ),
        (
            ["embed", "-c", "student.pt", "a.wav", "b.wav", "--out", "o", "--split", "test"]
            + ["--manifest", "m", *embed_flags],
            "embed",
            "run",
            embed_stage.EmbedFilesOptions(
                checkpoint=P("student.pt"),
                files=[P("a.wav"), P("b.wav")],
                manifest=P("m"),
                split="test",
                out=P("o"),
                **embed,
            ),
        ),
        (
            ["score", "-c", "s.pt", "--trials", "t", "-o", "o", "--manifest", "m", "--fbank", "f"]
            + ["--root", "r", "--embeddings", "e", "--score", "cosine", "--p-target", "0.05"]
            + ["--c-miss", "2", "--c-fa", "3", *embed_flags],
            "score",
            "run",
            score_stage.ScoreOptions(
                checkpoint=P("s.pt"),
                trials=P("t"),
                out=P("o"),
                manifest=P("m"),
                fbank=P("f"),
                root=P("r"),
                embeddings=P("e"),
                score="cosine",
                p_target=0.05,
                c_miss=2.0,
                c_fa=3.0,
                **embed,
            ),
        ),
        (
            ["export", "-c", "s.pt", "-f", "onnx", "-o", "o", "-i", "a.wav", "-i", "b.wav"]
            + ["--examples", "2", "--atol", "0.001"],
            "export",
            "run",
            export.ExportOptions(
                checkpoint=P("s.pt"),
                format="onnx",
                out=P("o"),
                inputs=[P("a.wav"), P("b.wav")],
                examples=2,
                atol=0.001,
            ),
        ),
        (
            ["average", "--run", "r", "--last", "3", "-o", "a.pt", "--bn-batches", "0"]
            + ["--device", "cpu"],
            "average",
            "run",
            average_stage.AverageOptions(
                run=P("r"), last=3, out=P("a.pt"), bn_batches=0, device="cpu"
            ),
        ),
        (
            ["noise-test", "-c", "best.pt", "--musan", "mu", "--snr", "5", "0", "--manifest", "m"],
            "evaluate",
            "run",
            evaluate.EvalOptions(
                checkpoint=P("best.pt"), musan=P("mu"), manifest=P("m"), snrs=[None, 5.0, 0.0]
            ),
        ),
        (
            ["cross-match", "-c", "best.pt", "--manifest", "m", "--fbank", "f"]
            + ["--triplets", "7", "--hard", "--seed", "4", "--split", "dev", *embed_flags],
            "cross_match",
            "run",
            cross_match.CrossMatchOptions(
                checkpoint=P("best.pt"),
                manifest=P("m"),
                fbank=P("f"),
                triplets=7,
                hard=True,
                seed=4,
                split="dev",
                **embed,
            ),
        ),
        (
            ["analyze", "r1", "r2", "--krc", "--cka", "--split", "val", "--max-samples", "9"]
            + ["--tsne", "--out", "o", "--device", "cpu"],
            "analyze",
            "run",
            analyze.AnalyzeOptions(
                roots=[P("r1"), P("r2")],
                analyses=["krc", "cka"],
                split="val",
                max_samples=9,
                tsne=True,
                out=P("o"),
                device="cpu",
            ),
        ),
        (
            ["analyze", "r1"],
            "analyze",
            "run",
            analyze.AnalyzeOptions(roots=[P("r1")]),
        ),
        (
            ["align-faces", "--manifest", "m", "--out", "o", "--batch-size", "4"]
            + ["--device", "cpu", "--min-prob", "0.5", "--max-side", "320"],
            "align_faces",
            "run",
            align_faces.AlignFacesOptions(
                manifest=P("m"), out=P("o"), batch_size=4, device="cpu", min_prob=0.5, max_side=320
            ),
        ),
        (["doctor", "--wav", "a.wav"], "doctor", "run", doctor.DoctorOptions(wav=P("a.wav"))),
        (
            ["recipes", "show", "quickstart", "--set", "a=1", "--var", "x=y"],
            "recipes",
            "show",
            recipes.ShowOptions(recipe="quickstart", sets=["a=1"], variables={"x": "y"}),
        ),
        (
            ["recipes", "list", "c2kd", "--all"],
            "recipes",
            "list_all",
            recipes.ListOptions(word="c2kd", bases=True),
        ),
    ]


@pytest.mark.parametrize("case", range(len(_cases())))
def test_each_flag_reaches_the_stage_in_its_options_model(cli, monkeypatch, case):
    argv, module, function, expected = _cases()[case]
    stage = importlib.import_module(f"cmkd_cli.stages.{module}")
    seen = []
    result = SimpleNamespace(yaml="")  # what cli.py prints of it is beside the point here
    monkeypatch.setattr(stage, function, lambda options: seen.append(options) or result)
    for name in ("render", "render_list", "failure"):
        if hasattr(stage, name):
            monkeypatch.setattr(stage, name, lambda result: None)
    res = cli(*argv)
    assert res.code == 0, res.stderr
    assert seen == [expected]


def test_train_teacher_without_a_recipe_is_a_usage_error(cli):
    res = cli("train-teacher")
    assert res.code == 2 and "--recipe is required" in res.stderr
