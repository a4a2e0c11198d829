"""student.pt and the Python API on the quickstart's digits student."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd_cli.errors import CmkdError, DataError, RunError, UsageError


def _test_split() -> tuple[torch.Tensor, np.ndarray]:
    """The digits test split as the dataset gives it: `[N, 1, 8, 8]` in [0, 1], labels."""
    from cmkd_cli.data.digits import digits

    test = digits(labelled_fraction=0.25, split_seed=0).test
    return test.images, test.labels.numpy()


def eval_split_of(student):
    """The evaluation (test) split of the data in the student's stored recipe."""
    from cmkd_cli.data.datasets import build_data
    from cmkd_cli.schema import DataConfig

    return build_data(DataConfig.model_validate(student.package["recipe"]["data"])).test


def assert_api_is_the_dataset_view(student, split, n: int) -> None:
    """`Student.embed` of the first `n` raw inputs of an evaluation split equals the network
    on the split's own items: the stored preprocessing is the dataset's evaluation view."""
    raws = [split.raw_input(i) for i in range(n)]
    xs = torch.stack([split[i]["x"] for i in range(n)])
    with torch.no_grad():
        ref = student.model(xs.to(student.device)).embedding.float().cpu().numpy()
    got = student.embed(raws)
    np.testing.assert_allclose(got, ref.reshape(got.shape), rtol=0, atol=1e-5)


def test_every_run_writes_a_self_contained_weights_only_student(digits_run: Path) -> None:
    from cmkd_cli.data.digits import DIGIT_NAMES

    pkg = torch.load(digits_run / "student.pt", weights_only=True)
    assert pkg["format"] == "cmkd-student" and pkg["version"] == 1
    assert pkg["task"] == "classification" and pkg["class_names"] == DIGIT_NAMES
    assert pkg["model"] == {"name": "digits_cnn", "params": {"width": 16}}
    assert pkg["input"]["kind"] == "image"
    assert pkg["input"]["image"]["size"] == 8 and pkg["input"]["image"]["channels"] == 1
    assert pkg["input"]["image"]["mean"] == [0.0] and pkg["input"]["image"]["std"] == [1.0]
    assert pkg["source"]["method"] == "soft_feature" and pkg["source"]["metric"] == "accuracy"
    best = torch.load(digits_run / "best.pt", weights_only=True)
    assert pkg["source"]["epoch"] == best["epoch"]
    for k, v in best["student"].items():  # the best epoch's weights, nothing else
        assert torch.equal(pkg["weights"][k], v)
    assert set(pkg["weights"]) == set(best["student"])


def test_best_pt_holds_what_eval_needs_and_last_pt_resumes(digits_run: Path) -> None:
    best = torch.load(digits_run / "best.pt", weights_only=True)
    last = torch.load(digits_run / "last.pt", weights_only=True)
    resume_only = {"optimizer", "scheduler", "scaler", "rng"}
    assert resume_only <= set(last) and not resume_only & set(best)
    assert {"student", "method", "recipe", "data_spec", "epoch", "best"} <= set(best)
    # the quickstart's best.pt was 892 KB with 583 KB of optimizer state
    assert (digits_run / "best.pt").stat().st_size < 0.5 * (digits_run / "last.pt").stat().st_size


def test_embed_and_predict_are_the_evaluation_path(digits_run: Path, cli) -> None:
    from cmkd_cli import load

    student = load(digits_run / "student.pt", device="cpu")
    images, labels = _test_split()
    with torch.no_grad():
        ref = student.model(images)
    emb = student.embed(list(images[:, 0].numpy()))
    assert emb.shape == (len(labels), 16 * 8) and emb.dtype == np.float32
    # batches of 16 here, the whole split there: equal up to float summation order
    np.testing.assert_allclose(emb, ref.embedding.numpy(), rtol=0, atol=1e-5)
    one = student.embed(images[0, 0].numpy())
    assert one.shape == (128,)
    np.testing.assert_allclose(one, emb[0], rtol=0, atol=1e-5)
    preds = student.predict(list(images[:, 0].numpy()))
    assert [p.index for p in preds] == ref.logits.argmax(-1).tolist()
    assert all(abs(sum(p.probs.values()) - 1) < 1e-5 and p.label in p.probs for p in preds)
    accuracy = float(np.mean([p.index for p in preds] == labels))
    ev = cli("--json", "eval", "--checkpoint", digits_run / "student.pt")
    assert ev.code == 0, ev.stderr
    assert abs(ev.json()["metrics"]["accuracy"] - accuracy) < 1e-6
    ev_best = cli("--json", "eval", "--checkpoint", digits_run / "best.pt")
    assert ev_best.json()["metrics"] == ev.json()["metrics"]


def test_eval_of_an_empty_test_split_says_so(digits_run: Path, cli, monkeypatch) -> None:
    """An evaluation left with no sample exits 1 naming the split (issue 11 item 8)."""
    import dataclasses

    from torch.utils.data import Subset

    from cmkd_cli.stages import evaluate

    real = evaluate.build_data

    def emptied(cfg):
        bundle = real(cfg)
        return dataclasses.replace(bundle, test=Subset(bundle.test, []))

    monkeypatch.setattr(evaluate, "build_data", emptied)
    res = cli("eval", "--checkpoint", digits_run / "best.pt")
    assert res.code == 1, res.stderr
    assert "best.pt: the recipe's test split (digits) holds no samples" in res.stderr


def test_image_paths_and_pil_images_are_decoded_like_arrays(digits_run: Path, tmp_path) -> None:
    from PIL import Image

    from cmkd_cli import load

    student = load(digits_run / "student.pt")
    images, _ = _test_split()
    pixels = (images[:4, 0].numpy() * 255).round().astype(np.uint8)
    paths = []
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    from_arrays = student.embed(list(pixels))
    np.testing.assert_array_equal(student.embed(paths), from_arrays)
    np.testing.assert_array_equal(student.embed([Image.open(p) for p in paths]), from_arrays)
    # an RGB photo of another size is converted to grey and resized to 8x8
    big = Image.fromarray(np.repeat(np.kron(pixels[0], np.ones((4, 4), np.uint8))[..., None], 3, 2))
    assert student.predict(big).label in student.class_names
    score = student.score(paths[0], paths[0])
    assert abs(score - 1.0) < 1e-5


def test_load_accepts_best_pt_and_runs_on_cuda_when_present(digits_run: Path) -> None:
    from cmkd_cli import load

    images, _ = _test_split()
    x = list(images[:8, 0].numpy())
    ref = load(digits_run / "student.pt", device="cpu").embed(x)
    np.testing.assert_array_equal(load(digits_run / "best.pt", device="cpu").embed(x), ref)
    if torch.cuda.is_available():
        cuda = load(digits_run / "student.pt", device="cuda")
        assert next(cuda.model.parameters()).is_cuda
        np.testing.assert_allclose(cuda.embed(x), ref, atol=1e-4)


def test_a_checkpoint_from_before_student_pt_gets_its_preprocessing_from_its_data(
    digits_run: Path, tmp_path
) -> None:
    from cmkd_cli import load

    old = torch.load(digits_run / "best.pt", weights_only=True)
    del old["data_spec"]["student_input"]
    torch.save(old, tmp_path / "old.pt")
    assert load(tmp_path / "old.pt").input == load(digits_run / "student.pt").input
    old["recipe"]["data"] = {"name": "manifest", "params": {"manifest": str(tmp_path / "gone")}}
    torch.save(old, tmp_path / "gone.pt")
    with pytest.raises(RunError, match=r"gone\.pt predates student\.pt .*gone"):
        load(tmp_path / "gone.pt")


def test_bad_inputs_are_one_line_errors_naming_the_culprit(digits_run: Path, tmp_path) -> None:
    from cmkd_cli import load

    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(RunError, match=r"notes\.txt cannot be read"):
        load(tmp_path / "notes.txt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(UsageError, match=r"other\.pt is neither a student\.pt nor"):
        load(tmp_path / "other.pt")
    student = load(digits_run / "student.pt")
    shutil.copy(digits_run / "config.yaml", tmp_path / "fake.png")
    with pytest.raises(DataError, match=r"fake\.png: not a readable image"):
        student.embed(tmp_path / "fake.png")
    with pytest.raises(CmkdError, match="an empty list"):
        student.embed([])
    with pytest.raises(UsageError, match="speaker students"):
        student.features(tmp_path / "fake.png")
