"""CIFAR-100 (Krizhevsky 2009), paper A Sec. 4.2's first text -> image benchmark: 100 classes,
50,000 training and 10,000 test images of 32x32.

Layout: the "python version" as distributed: ROOT/cifar-100-python.tar.gz, or its unpacked
folder ROOT/cifar-100-python/ (or ROOT itself) holding the pickles `train`, `test` and
`meta` (`data` [N, 3072] uint8 in RGB planes, `fine_labels`, `fine_label_names`). Each image
is written as OUT/images/<split>/<index>.png; the record's label is its fine label name
(OUT/classes.txt keeps the archive's order). A validation split is carved from train
(`--val-fraction`, seeded) so that model selection never reads the test set; paper A
validates on the test set, which a recipe can ask for with `val_split: test`.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field

from cmkd_cli.data.manifest import write_classes
from cmkd_cli.errors import DataError
from cmkd_cli.io import atomic_path
from data_prep.common import (
    OfficialSize,
    Outcome,
    PrepareOptions,
    PrepareResult,
    Task,
    pick_seeded,
    prepare_tasks,
    register_reader,
    require_dir,
)

ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
PIXELS = 32 * 32 * 3


class CifarOptions(PrepareOptions):
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of train kept for validation")
    seed: int = Field(0, description="seed of the validation split")


def find_source(root: Path) -> Path:
    """The archive or the folder holding the pickles (ROOT/cifar-100-python[.tar.gz] or ROOT)."""
    for candidate in (root / ARCHIVE, root / FOLDER, root):
        if candidate.is_file() or (candidate / "meta").is_file():
            return candidate
    raise DataError(f"{root}: holds neither {ARCHIVE} nor {FOLDER}/{{train,test,meta}}")


#: every global the real pickles name: numpy arrays (numpy 1 and 2 module names) and the
#: bytes encoding of protocol-2 pickles written by Python 3
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _Refused(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Loads only the builtin and numpy types CIFAR's pickles hold; any other global (what
    a `__reduce__` payload needs to run code) is refused before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise _Refused(f"{module}.{name}")
        with warnings.catch_warnings():  # numpy 2 still reads numpy 1's `numpy.core` names
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _unpickle(blob: bytes, where: str) -> dict[bytes, Any]:
    try:
        obj = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except _Refused as exc:
        raise DataError(
            f"{where}: refused: the pickle asks for `{exc}`, which CIFAR files never hold "
            "(loading it could run code); nothing was executed"
        ) from None
    except Exception as exc:  # a damaged pickle raises anything from EOFError to KeyError
        raise DataError(f"{where}: not a readable CIFAR pickle ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: not a CIFAR pickle (a {type(obj).__name__}, not a dict)")
    return obj


@lru_cache(maxsize=3)
def load_part(source: str, part: str) -> dict[bytes, Any]:
    """The pickle `part` (train|test|meta) of the archive or folder `source`."""
    src = Path(source)
    where = f"{src}:{part}" if src.is_file() else str(src / part)
    if src.is_file():
        try:
            with tarfile.open(src, "r:gz") as tar:
                member = tar.extractfile(f"{FOLDER}/{part}")
                blob = member.read() if member else None
        except KeyError:
            blob = None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{src}: not a readable tar.gz archive ({exc})") from None
    else:
        blob = (src / part).read_bytes() if (src / part).is_file() else None
    if blob is None:
        raise DataError(f"{where}: the CIFAR-100 `{part}` file is missing")
    return _unpickle(blob, where)


def _column(d: dict[bytes, Any], key: bytes, where: str) -> Any:
    if key not in d:
        raise DataError(f"{where}: no `{key.decode()}` entry")
    return d[key]


def class_names(source: str) -> list[str]:
    """The 100 fine label names of the `meta` pickle, in label order."""
    meta = load_part(source, "meta")
    return [n.decode() for n in _column(meta, b"fine_label_names", f"{source}:meta")]


def _worker(task: Task) -> Outcome:
    p = task.params
    part = load_part(p["source"], p["part"])
    names = class_names(p["source"])
    where = f"{p['source']}:{p['part']}[{p['index']}]"
    row = np.asarray(_column(part, b"data", where)[p["index"]], dtype=np.uint8)
    label = int(_column(part, b"fine_labels", where)[p["index"]])
    if row.size != PIXELS:
        raise DataError(f"{where}: image has {row.size} values, not 32x32x3 = {PIXELS}")
    if not 0 <= label < len(names):
        raise DataError(f"{where}: fine label {label} is outside 0..{len(names) - 1}")
    out = Path(p["out"]) / p["png"]
    if not (out.is_file() and out.stat().st_size > 0):
        buf = io.BytesIO()
        Image.fromarray(row.reshape(3, 32, 32).transpose(1, 2, 0)).save(buf, format="PNG")
        with atomic_path(out) as tmp:
            tmp.write_bytes(buf.getvalue())
    record = {"id": task.key, "split": p["split"], "label": names[label], "image": p["png"]}
    return Outcome(key=task.key, record=record, outputs=[str(out)], decoded=1)


#: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009 (and the CIFAR
#: page): 100 classes, 50,000 training and 10,000 test images
CIFAR_SOURCE = "Krizhevsky 2009, CIFAR-100"
CIFAR_SIZES = (
    OfficialSize(50_000, CIFAR_SOURCE, ("train", "val"), name="train"),
    OfficialSize(10_000, CIFAR_SOURCE, ("test",)),
    OfficialSize(100, CIFAR_SOURCE, (), "classes"),
)


@register_reader(
    "cifar100",
    CifarOptions,
    "Read CIFAR-100 (ROOT/cifar-100-python.tar.gz or its unpacked folder); write "
    "OUT/images/{train,test}/*.png, OUT/manifest.jsonl, OUT/classes.txt, OUT/skipped.jsonl.",
)
def prepare_cifar100(opts: CifarOptions) -> PrepareResult:
    """CIFAR-100 -> manifest: one PNG and record per image; validation carved from train."""
    started = time.perf_counter()
    source = find_source(require_dir(opts.root, "--root"))
    names = class_names(str(source))
    tasks = []
    for part in ("train", "test"):
        count = len(_column(load_part(str(source), part), b"data", f"{source}:{part}"))
        keys = [f"{part}/{i:05d}" for i in range(count)]
        val = (
            pick_seeded(keys, round(count * opts.val_fraction), opts.seed)
            if part == "train"
            else set()
        )
        for i, key in enumerate(keys):
            params = {
                "source": str(source),
                "part": part,
                "index": i,
                "split": "val" if key in val else part,
                "png": f"images/{key}.png",
                "out": str(opts.out),
            }
            tasks.append(Task(key, (str(source if source.is_file() else source / part),), params))
    result = prepare_tasks("cifar100", opts, tasks, _worker, (), started, CIFAR_SIZES)
    write_classes(opts.out, [(n, n) for n in names])
    return result
