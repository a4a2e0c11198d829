"""Face detection (facenet-pytorch's MTCNN) and 5-point alignment to the ArcFace template.

Paper A Sec. 4.1.1: "we take 1 frame from each video, crop out the face part, then align
it, and finally scale it to 112 x 112". MTCNN (Zhang et al. 2016; weights ship inside the
facenet-pytorch package, nothing is downloaded) gives every face's box, probability and
five landmarks (left eye, right eye, nose, left and right mouth corner). Alignment
estimates the similarity transform (rotation, uniform scale, translation, never a
reflection; Umeyama 1991 least squares) mapping the landmarks onto insightface's 112x112
`arcface_src` template and warps the full-resolution image with it.

Detection runs on a copy downscaled to at most `max_side` pixels (MTCNN's image pyramid
makes a 2k-pixel photo ~10x slower than a 640-pixel one, for the same faces); boxes and
landmarks are mapped back to full resolution, so the warp loses no detail. A face smaller
than `min_face_size` pixels in the downscaled copy is not found.

Selection rule for the one face of a frame (`select_face`): drop boxes whose probability
is below `min_prob` (0.9: MTCNN's spurious boxes at photo edges score lower), then take the
largest box by area (the speaker in a VoxCeleb frame, the subject of a portrait), ties
going to the more probable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cmkd_cli.errors import DataError

#: insightface's `arcface_src`: the five landmarks of a 112x112 aligned face (x, y)
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
ALIGNED_SIZE = 112
MIN_PROB = 0.9
MAX_SIDE = 640
#: facenet-pytorch raises these on degenerate inputs (e.g. images under 12 pixels)
_DETECT_ERRORS = (RuntimeError, ValueError, IndexError)


@dataclass(frozen=True)
class Face:
    """One detection in full-resolution pixel coordinates (pixel centres at integers)."""

    box: np.ndarray  # [4]: x1, y1, x2, y2
    prob: float
    landmarks: np.ndarray  # [5, 2]: eyes, nose, mouth corners (x, y)

    @property
    def area(self) -> float:
        w, h = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return float(max(w, 0.0) * max(h, 0.0))


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The `[2, 3]` matrix `[sR | t]` minimising sum_i ||s R src_i + t - dst_i||^2.

    Umeyama (1991), Eqs. 40-42: R from the SVD of the cross-covariance with det(R) = +1
    (rotation, never a reflection), s = tr(D S) / var(src), t = mu_dst - s R mu_src.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    u, sing, vt = np.linalg.svd(dc.T @ sc / len(src))
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (sing * sign).sum() / ((sc**2).sum() / len(src))
    shift = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def warp_affine(image: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """`image` warped by the `[2, 3]` input->output `matrix` into a `size` x `size` image.

    Same geometry as OpenCV's `warpAffine` (pixel centres at integer coordinates, bilinear,
    black outside): PIL samples at output pixel centres `(x + 0.5, y + 0.5)` and expects the
    output->input map in that convention, so the inverse's offset is shifted accordingly.
    """
    inv = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    lin = inv[:, :2]
    offset = inv[:, 2] + 0.5 - lin @ np.array([0.5, 0.5])
    coeffs = (lin[0, 0], lin[0, 1], offset[0], lin[1, 0], lin[1, 1], offset[1])
    return image.transform(
        (size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR
    )


def align_face(image: Image.Image, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> Image.Image:
    """The `size` x `size` face whose five `landmarks` land on the ArcFace template."""
    template = ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)
    return warp_affine(image, similarity_transform(landmarks, template), size)


def select_face(faces: Sequence[Face], min_prob: float = MIN_PROB) -> Face | None:
    """The face of a frame: the largest of those with probability >= `min_prob`, or None."""
    confident = [f for f in faces if f.prob >= min_prob]
    return max(confident, key=lambda f: (f.area, f.prob)) if confident else None


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """An RGB image, turned upright by its EXIF orientation; DataError if not an image."""
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        reason = str(exc).replace(str(path), "").strip(" '\"") or type(exc).__name__
        raise DataError(f"{path} is not a readable image ({reason})") from None


def downscale(image: Image.Image, max_side: int) -> Image.Image:
    """`image` shrunk (antialiased) so its longer side is at most `max_side`; never enlarged."""
    scale = max_side / max(image.size)
    if scale >= 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


class FaceDetector:
    """MTCNN with `keep_all=True` on CPU or CUDA, batched over images of one (downscaled) size."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        max_side: int = MAX_SIDE,
        min_face_size: int = 20,
        batch_size: int = 16,
    ) -> None:
        from facenet_pytorch import MTCNN  # lazy: the slowest import here, only align-faces runs it

        self.device = torch.device(device)
        self.mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, device=self.device)
        self.mtcnn.eval()
        self.max_side, self.batch_size = max_side, batch_size

    def detect(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """Every face of each RGB image, in full-resolution coordinates, most probable first.

        Images are grouped by downscaled size and run `batch_size` at a time; an image on
        which MTCNN raises (a degenerate input) gets no face.
        """
        small = [downscale(im, self.max_side) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(small):
            groups.setdefault(im.size, []).append(i)
        out: list[list[Face]] = [[] for _ in images]
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                for i, faces in zip(
                    chunk, self._detect_batch([small[i] for i in chunk]), strict=True
                ):
                    sx = images[i].width / small[i].width
                    sy = images[i].height / small[i].height
                    out[i] = [_rescale(f, sx, sy) for f in faces]
        return out

    def _detect_batch(self, batch: list[Image.Image]) -> list[list[Face]]:
        arr = torch.from_numpy(np.stack([np.asarray(im) for im in batch]))
        try:
            boxes, probs, points = self.mtcnn.detect(arr, landmarks=True)
        except _DETECT_ERRORS:
            if len(batch) == 1:
                return [[]]
            return [faces for im in batch for faces in self._detect_batch([im])]
        result = []
        for b, p, m in zip(boxes, probs, points, strict=True):
            if b is None:
                result.append([])
                continue
            b, m = np.asarray(b, np.float64).reshape(-1, 4), np.asarray(m, np.float64)
            faces = [Face(b[k], float(p[k]), m.reshape(-1, 5, 2)[k]) for k in range(len(b))]
            result.append(sorted(faces, key=lambda f: -f.prob))
        return result


def _rescale(face: Face, sx: float, sy: float) -> Face:
    """`face` detected on a resized copy, in the original's pixels (centres at integers)."""
    if sx == 1.0 and sy == 1.0:
        return face
    scale, shift = np.array([sx, sy]), np.array([sx - 1.0, sy - 1.0]) / 2.0
    pts = face.landmarks * scale + shift
    box = face.box * np.tile(scale, 2) + np.tile(shift, 2)
    return Face(box, face.prob, pts)


def align_images(
    detector: FaceDetector, images: Sequence[Image.Image], min_prob: float = MIN_PROB
) -> list[Image.Image | None]:
    """The aligned 112x112 face of each image (`select_face`'s choice), None without one."""
    out: list[Image.Image | None] = []
    for image, faces in zip(images, detector.detect(images), strict=True):
        face = select_face(faces, min_prob)
        out.append(None if face is None else align_face(image, face.landmarks))
    return out
