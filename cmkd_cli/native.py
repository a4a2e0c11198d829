"""The native stack: load every compiled piece the project uses, and explain a load failure.

`cmkd doctor` and the first test of the suite run `run_checks()`; `cli.main` passes any
exception of a stage through `explain_load_error()`, so a torchaudio built for another torch
reads "torchaudio 2.11.1 was built for another torch ..." instead of a bare OSError.

Each check imports what it checks inside its function, so a broken piece fails its own
check and no other, and `cli.py` (which imports this module) loads none of them.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

# The packages whose compiled parts must agree with each other (and with requirements.lock).
TORCH_FAMILY = ("torch", "torchaudio", "torchvision")
FIX = "install the versions in requirements.lock (`make venv`, or pip install -r requirements.lock)"
_NATIVE_HINT = re.compile(
    r"undefined symbol|cannot open shared object|Could not load this library|"
    r"DLL load failed|incompatible library version|\.so[:.\s]|operator \S+ does not exist",
)


@dataclass
class Check:
    """One native piece: its name, whether it loaded, what it reported, how long it took."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)


def version_of(dist: str) -> str | None:
    """The installed version of distribution `dist`, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def locked_versions(lock: Path | None = None) -> dict[str, str]:
    """Exact pins of requirements.lock (`name==version` lines) when the lock is at hand."""
    lock = lock or Path(__file__).resolve().parent.parent / "requirements.lock"
    if not lock.is_file():
        return {}
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", lock.read_text(), flags=re.M)
    return {name.lower(): version for name, version in pins}


def explain_load_error(exc: BaseException) -> str | None:
    """One sentence naming the broken native piece and its likely cause, or None when `exc`
    is not a failure to load compiled code (also when a wrapper, e.g. transformers importing
    torchaudio, re-raised it with the loader's message inside)."""
    text = str(exc)
    if not _NATIVE_HINT.search(text):
        return None
    culprit = next(
        (p for p in ("torchaudio", "torchvision", "av", "soundfile", "onnxruntime") if p in text),
        None,
    )
    if culprit is None and "symbol" in text:
        culprit = "torchaudio" if "libtorchaudio" in text else None
    torch_v = version_of("torch")
    first = text.strip().splitlines()[0][:200]
    if culprit in ("torchaudio", "torchvision"):
        have = version_of(culprit)
        want = locked_versions().get(culprit)
        pin = f" (the lock pins {culprit} {want})" if want and want != have else ""
        return (
            f"{culprit} {have} was built for another torch than the installed torch {torch_v}"
            f"{pin}: {FIX} [{first}]"
        )
    if culprit:
        return f"{culprit}'s compiled library does not load ({first}): {FIX}"
    return f"a compiled library does not load ({first}): {FIX}"


def _timed(name: str, fn: Callable[[], str]) -> Check:
    start = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as exc:  # noqa: BLE001 - each failure is reported, never raised
        detail = explain_load_error(exc) or f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        ok = False
    return Check(name, ok, detail, time.perf_counter() - start)


def _torch() -> str:
    import torch

    from cmkd_cli.engine.precision import cpu_native_formats

    x = torch.arange(6.0).reshape(2, 3)
    if float((x @ x.T).sum()) != 83.0:
        raise RuntimeError("a 2x3 matrix product gave a wrong value")
    parts = [f"torch {torch.__version__}", f"threads {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
        parts.append(
            f"CUDA {torch.version.cuda} on {torch.cuda.device_count()}x {', '.join(names)}"
        )
        parts.append(f"cuDNN {torch.backends.cudnn.version()}")
    else:
        parts.append(f"CPU only (built with CUDA {torch.version.cuda or 'none'})")
    native = cpu_native_formats()
    parts.append(f"CPU train.amp: {'/'.join(native) + ' native' if native else 'fp32 only'}")
    return ", ".join(parts)


def _write_test_wav(folder: Path) -> Path:
    """A 1 s, 16 kHz vowel-like tone written through soundfile (libsndfile)."""
    import numpy as np
    import soundfile as sf

    t = np.arange(16000) / 16000.0
    wave = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((220.0, 440.0, 660.0), 1))
    path = folder / "doctor.wav"
    sf.write(path, (0.2 * wave).astype(np.float32), 16000, subtype="PCM_16")
    return path


def _soundfile(folder: Path) -> Callable[[], str]:
    def run() -> str:
        import soundfile as sf

        data, rate = sf.read(_write_test_wav(folder), dtype="float32")
        if rate != 16000 or data.shape != (16000,):
            raise RuntimeError(f"read back {data.shape} at {rate} Hz, wrote (16000,) at 16000 Hz")
        return f"soundfile {sf.__version__}, libsndfile {sf.__libsndfile_version__}"

    return run


def _torchaudio_fbank(wav: Path | None, folder: Path) -> Callable[[], str]:
    def run() -> str:
        import soundfile as sf
        import torch
        import torchaudio
        import torchaudio.compliance.kaldi as kaldi

        path = wav or _write_test_wav(folder)
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        feats = kaldi.fbank(
            torch.from_numpy(data.mean(1)).unsqueeze(0) * 32768,
            num_mel_bins=40,
            sample_frequency=rate,
        )
        if feats.ndim != 2 or feats.shape[1] != 40 or not torch.isfinite(feats).all():
            raise RuntimeError(f"Kaldi fbank gave {tuple(feats.shape)} or non-finite values")
        return (
            f"torchaudio {torchaudio.__version__}: Kaldi fbank {tuple(feats.shape)} of {path.name}"
        )

    return run


def _torchvision() -> str:
    import torch
    import torchvision
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    if keep.tolist() != [0, 2]:
        raise RuntimeError(f"ops.nms kept {keep.tolist()}, expected [0, 2]")
    return f"torchvision {torchvision.__version__}: ops.nms"


def _pyav(folder: Path) -> Callable[[], str]:
    def run() -> str:
        import av
        import numpy as np

        path = folder / "doctor.mp4"
        with av.open(str(path), "w") as out:
            video = out.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            audio = out.add_stream("aac", rate=16000)
            for i in range(5):
                img = np.full((48, 64, 3), 40 * i, dtype=np.uint8)
                out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(video.encode())
            tone = np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
            frame.sample_rate = 16000
            out.mux(audio.encode(frame))
            out.mux(audio.encode())
        with av.open(str(path)) as inp:
            frames = sum(1 for _ in inp.decode(video=0))
        with av.open(str(path)) as inp:
            samples = sum(f.samples for f in inp.decode(audio=0))
        if frames != 5 or samples == 0:
            raise RuntimeError(f"decoded {frames} of 5 video frames and {samples} audio samples")
        return f"av {av.__version__} (FFmpeg {av.ffmpeg_version_info}): mpeg4 + aac encode, decode"

    return run


def _mtcnn() -> str:
    import numpy as np
    from facenet_pytorch import MTCNN
    from PIL import Image

    mtcnn = MTCNN(keep_all=True, device="cpu")
    boxes, _ = mtcnn.detect(Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)))
    if boxes is not None:  # a black image has no face; the three nets ran
        raise RuntimeError(f"MTCNN found {len(boxes)} face(s) in a black image")
    return f"facenet-pytorch {version_of('facenet-pytorch')}: MTCNN weights loaded, detect ran"


def _minilm() -> str:
    from cmkd_cli.hf_local import MINILM_DISTRIBUTION, minilm_path
    from cmkd_cli.models.text import TextEncoder

    encoder = TextEncoder(minilm_path())
    emb = encoder.encode(["a photo of the number seven", "a photo of the number one"])
    if emb.shape != (2, encoder.dim) or not emb.isfinite().all():
        raise RuntimeError(f"MiniLM gave embeddings of shape {tuple(emb.shape)}")
    return f"{MINILM_DISTRIBUTION} {version_of(MINILM_DISTRIBUTION)}: {encoder.dim}-d embeddings"


def run_checks(wav: Path | None = None) -> list[Check]:
    """Load and exercise every native piece; `wav` is a real recording for the fbank check."""
    checks = []
    with tempfile.TemporaryDirectory(prefix="cmkd-doctor-") as tmp:
        folder = Path(tmp)
        steps: list[tuple[str, Callable[[], str]]] = [
            ("torch", _torch),
            ("soundfile", _soundfile(folder)),
            ("torchaudio", _torchaudio_fbank(wav, folder)),
            ("torchvision", _torchvision),
            ("pyav", _pyav(folder)),
            ("mtcnn", _mtcnn),
            ("minilm", _minilm),
        ]
        for name, fn in steps:
            checks.append(_timed(name, fn))
    family = {d: version_of(d) or "missing" for d in TORCH_FAMILY}
    lock = locked_versions()
    drift = {d: (v, lock[d]) for d, v in family.items() if d in lock and lock[d] != v}
    detail = ", ".join(f"{d} {v}" for d, v in family.items())
    if drift:
        detail += "; differs from requirements.lock: " + ", ".join(
            f"{d} {have} (lock {want})" for d, (have, want) in drift.items()
        )
        detail += f": {FIX}"
    checks.insert(0, Check("versions", not drift, detail, versions=family))
    return checks
