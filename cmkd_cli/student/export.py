"""Export a student with its front-end to TorchScript or ONNX, checked against eager PyTorch.

The exported graph is `ExportGraph`: the student's front-end module (`data.preprocess`:
Kaldi fbank + the evaluation crops for speakers, the log spectrogram for audio
classifiers, the normalisation for images) followed by the network, so it takes what
`Student.graph_inputs` gives (a waveform at the model's rate, resized pixels in [0, 1],
token ids) and returns what `Student.embed` / `predict` compute. What stays outside is
decoding and resampling audio, decoding and resizing images, and tokenising text (each
named in the written `model.json`).

TorchScript: `torch.jit.script` (the models are written to script: `ModelOutput` is a
scriptable NamedTuple; the front-ends use index arithmetic, no length-dependent branches),
so one file serves every input length and batch size. A model that cannot be scripted (a
transformers text encoder) is traced with `torch.jit.trace` instead (`model.json` says
which): tracing records the operations run on the example, which for a fixed-length token
input is the whole graph. ONNX: `torch.onnx.export(dynamo=True)` (torch.export) with
dynamic batch, sample and image-size axes, run with onnxruntime.

Before anything is written, the saved file is loaded back and run on real inputs, one by
one and as a batch; every output must equal the eager student's within `atol` (1e-4),
else `RunError` (exit 1) and nothing is written.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmkd_cli.data.preprocess import FbankInput, ImageInput, SceneInput, SpectrogramInput
from cmkd_cli.errors import RunError, UsageError
from cmkd_cli.io import atomic_write_json, atomic_write_text
from cmkd_cli.metrics.trials import utterance_vectors
from cmkd_cli.student.api import Student

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}


class SpeakerGraph(nn.Module):
    """Waveforms `[B, N]` -> (embedding `[B, D]`: the mean of the L2-normalised crop
    embeddings, whose dot products are `cmkd eval`'s trial scores; crops `[B, K, D]`)."""

    def __init__(self, frontend: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.frontend, self.model = frontend, model

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        crops = self.frontend(waveform)
        b, k = crops.shape[0], crops.shape[1]
        emb = self.model(crops.flatten(0, 1)).embedding.float()
        emb = emb.reshape(b, k, emb.shape[-1])
        return F.normalize(emb, dim=-1).sum(dim=1) / k, emb


class ClassifierGraph(nn.Module):
    """Inputs -> (embedding, logits): `[B, D]` and `[B, C]` (or maps for segmentation)."""

    def __init__(self, frontend: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.frontend, self.model = frontend, model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(self.frontend(x))
        logits = out.logits
        if logits is None:
            raise RuntimeError("the student has no classifier head")
        return out.embedding.float(), logits.float()


class EmbeddingGraph(nn.Module):
    """Inputs -> (embedding,) for students without a classifier head."""

    def __init__(self, frontend: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.frontend, self.model = frontend, model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(self.frontend(x)).embedding.float(),)


def export_graph(student: Student) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The graph to export and a description of each of its outputs."""
    frontend, model = student.input.frontend().eval(), student.model.cpu().eval()
    dim = getattr(model, "embed_dim", "D")
    if student.is_speaker:
        outputs = [
            _out(
                "embedding",
                ["batch", dim],
                "mean of the L2-normalised crop embeddings; the "
                "dot product of two is the trial score of `cmkd eval` (mean crop-pair cosine)",
            ),
            _out(
                "crops",
                ["batch", student.input.crops, dim],
                f"the embedding of each evenly spaced {student.input.crop_seconds:g} s crop",
            ),
        ]
        return SpeakerGraph(frontend, model).eval(), outputs
    dense = isinstance(student.input, SceneInput)
    if getattr(model, "head", True) is None:
        out = _out("embedding", ["batch", dim], "the student's embedding")
        return EmbeddingGraph(frontend, model).eval(), [out]
    n = len(student.class_names)
    logit_shape = ["batch", n, "height", "width"] if dense else ["batch", n]
    outputs = [
        _out("embedding", ["batch", dim], "the student's embedding")
        if not dense
        else _out("embedding", ["batch", "channels", "h", "w"], "the decoder's feature map"),
        _out(
            "logits",
            logit_shape,
            "class scores in the order of `class_names` (softmax: "
            "the probabilities `predict` reports)",
        ),
    ]
    return ClassifierGraph(frontend, model).eval(), outputs


def _out(name: str, shape: list[Any], meaning: str) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": "float32", "meaning": meaning}


def eager_outputs(student: Student, x: torch.Tensor) -> list[np.ndarray]:
    """What the API computes for graph input `x` (`Student.embed_decoded` / `forward`)."""
    if student.is_speaker:
        crops = student.embed_decoded(list(x[:, None]))
        return [utterance_vectors(crops).numpy(), crops.numpy()]
    with torch.no_grad():
        out = student.forward(student.frontend(x.to(student.device)))
    outs = [out.embedding.cpu().numpy()]
    if out.logits is not None:
        outs.append(out.logits.cpu().numpy())
    return outs


def dynamic_axes(student: Student) -> dict[int, tuple[str, int]]:
    """Axis index -> (name, least size) of the graph input's variable dimensions."""
    inp = student.input
    if isinstance(inp, FbankInput):
        return {0: ("batch", 2), 1: ("samples", inp.fbank.window)}
    if isinstance(inp, SpectrogramInput):
        return {0: ("batch", 2), 1: ("samples", 2)}
    if isinstance(inp, SceneInput):
        return {0: ("batch", 2), 2: ("height", 2), 3: ("width", 2)}
    return {0: ("batch", 2)}


def write_torchscript(graph: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Script the graph (trace it when it cannot be scripted); returns how."""
    try:
        module = torch.jit.script(graph)
        how = "torch.jit.script"
    except Exception as exc:  # noqa: BLE001 - any scripting failure: fall back to tracing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with torch.no_grad():
            module = torch.jit.trace(graph, (example,), check_trace=False)
        how = f"torch.jit.trace (not scriptable: {first[:120]})"
    module.save(str(path))
    return how


def write_onnx(
    graph: nn.Module,
    example: torch.Tensor,
    path: Path,
    axes: dict[int, tuple[str, int]],
    names: list[str],
    input_name: str,
) -> str:
    """torch.export-based ONNX export with the dynamic axes (name, least size); returns how."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not importlib.util.find_spec(m)]
    if missing:
        raise UsageError(
            f"--format onnx needs {', '.join(missing)}: install the `export` extra "
            "(pip install 'cmkd[export]')"
        )

    dims = {i: torch.export.Dim(name, min=least) for i, (name, least) in axes.items()}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            dynamic_shapes=(dims,),
            input_names=[input_name],
            output_names=names,
            verbose=False,
        )
        program.save(str(path))
    import onnx  # the optional `export` extra: only ONNX exports need it

    opset = {
        o.domain: o.version for o in onnx.load(str(path), load_external_data=False).opset_import
    }
    return f"torch.onnx.export(dynamo=True), opset {opset.get('', '?')}"


def run_exported(fmt: str, path: Path) -> Any:
    """A callable `x -> list of numpy outputs` for the saved file."""
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def call(x: torch.Tensor) -> list[np.ndarray]:
            with torch.no_grad():
                return [o.numpy() for o in module(x)]

        return call
    import onnxruntime as ort  # the optional `export` extra: only ONNX exports need it

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})


def verify(
    student: Student, call: Any, inputs: list[torch.Tensor], labels: list[str], atol: float
) -> dict[str, Any]:
    """Run the exported file on each input and on batches of same-shaped inputs; the largest
    absolute difference from the eager student per output. RunError when above `atol`."""
    worst: dict[str, Any] = {"max_abs_diff": 0.0, "input": None}
    cases = [(x, label) for x, label in zip(inputs, labels, strict=True)]
    batch = _batchable(inputs)
    if batch is not None:
        cases.append((batch, f"a batch of {len(batch)}"))
    for x, label in cases:
        got, want = call(x), eager_outputs(student, x)
        if len(got) != len(want):
            raise RunError(f"the export returns {len(got)} outputs, eager PyTorch {len(want)}")
        for g, w in zip(got, want, strict=True):
            if g.shape != w.shape:
                raise RunError(f"on {label}: the export's output is {g.shape}, eager {w.shape}")
            diff = float(np.abs(g - w).max())
            if diff > worst["max_abs_diff"]:
                worst = {"max_abs_diff": diff, "input": label}
            if not diff <= atol:
                raise RunError(
                    f"the export differs from eager PyTorch by {diff:.3g} on {label} (tolerance "
                    f"{atol:g}); nothing written"
                )
    return {**worst, "tolerance": atol, "inputs": labels, "batched": batch is not None}


def _batchable(inputs: list[torch.Tensor]) -> torch.Tensor | None:
    """Two or more inputs of one shape, batched (a batch of one exercises nothing new)."""
    same = [x for x in inputs if x.shape == inputs[0].shape]
    return torch.cat(same) if len(same) > 1 else None


def outside_the_graph(student: Student) -> list[str]:
    inp = student.input
    if isinstance(inp, FbankInput | SpectrogramInput):
        return [
            f"decode the audio to mono float32 in [-1, 1] at {inp.sample_rate} Hz "
            "(cmkd_cli.data.audio.load_audio resamples and downmixes)"
        ]
    if isinstance(inp, ImageInput):
        h, w = inp.image.hw
        return [
            f"decode the image, resize it to {h}x{w} "
            f"({inp.image.eval_mode}, antialiased) and divide its pixels by 255"
        ]
    if isinstance(inp, SceneInput):
        return ["decode the PNG (RGB / jet pixels divided by 255, mm16 depth as millimetres)"]
    return [
        f"tokenise the text ({inp.text.tokenizer or 'the bundled all-MiniLM-L6-v2'}, "
        f"max_length {inp.text.max_length}): row 0 input_ids, row 1 attention_mask"
    ]


def export_student(
    student: Student,
    fmt: Literal["torchscript", "onnx"],
    out: Path,
    examples: list[Any],
    labels: list[str],
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export, verify on `examples` (real inputs), then write OUT/{model.*, model.json,
    README.md}; returns the description written to model.json."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    student.to("cpu")
    inputs = student.graph_inputs(examples)
    graph, outputs = export_graph(student)
    example = _batchable(inputs)
    if example is None:
        example = torch.cat([inputs[0], inputs[0]])  # a batch of two keeps `batch` dynamic
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        path = Path(tmp) / FILES[fmt]
        if fmt == "torchscript":
            how = write_torchscript(graph, example, path)
        else:
            names = [o["name"] for o in outputs]
            input_name = student.input.describe()["name"]
            how = write_onnx(graph, example, path, dynamic_axes(student), names, input_name)
        checked = verify(student, run_exported(fmt, path), inputs, labels, atol)
        shutil.move(str(path), out / FILES[fmt])
    spec = {
        "format": fmt,
        "file": FILES[fmt],
        "how": how,
        "task": student.task,
        "inputs": [student.input.describe()],
        "outputs": outputs,
        "outside_the_graph": outside_the_graph(student),
        "class_names": student.class_names,
        "preprocessing": student.package["input"],
        "source": student.package["source"],
        "verified": {**checked, "runtime": _runtime(fmt)},
    }
    atomic_write_json(out / "model.json", spec)
    atomic_write_text(out / "README.md", readme(spec))
    return spec


def _runtime(fmt: str) -> str:
    if fmt == "torchscript":
        return f"torch {torch.__version__} (torch.jit.load)"
    import onnxruntime  # the optional `export` extra: only ONNX exports need it

    return f"onnxruntime {onnxruntime.__version__}"


def readme(spec: dict[str, Any]) -> str:
    """The human version of model.json."""
    inp = spec["inputs"][0]
    lines = [
        f"# {spec['source'].get('recipe')} student ({spec['task']}), {spec['format']}",
        "",
        f"`{spec['file']}`, written by `cmkd export` with {spec['how']}.",
        "",
        "## Input",
        "",
        f"- `{inp['name']}`: {inp['dtype']} {json.dumps(inp['shape'])}: {inp['meaning']}",
        "",
        "Before the graph: " + "; ".join(spec["outside_the_graph"]) + ".",
        "",
        "## Outputs",
        "",
        *[
            f"- `{o['name']}`: {o['dtype']} {json.dumps(o['shape'])}: {o['meaning']}"
            for o in spec["outputs"]
        ],
        "",
        f"Classes ({len(spec['class_names'])}): {', '.join(spec['class_names'][:20])}"
        + (" ..." if len(spec["class_names"]) > 20 else ""),
        "",
        "## Checked",
        "",
        f"Against eager PyTorch (`cmkd_cli.load`) on {len(spec['verified']['inputs'])} real "
        f"input(s){' and their batch' if spec['verified']['batched'] else ''} with "
        f"{spec['verified']['runtime']}: largest absolute difference "
        f"{spec['verified']['max_abs_diff']:.2g} (tolerance {spec['verified']['tolerance']:g}).",
        "",
    ]
    return "\n".join(lines)
