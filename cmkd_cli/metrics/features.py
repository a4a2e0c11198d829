"""Student and teacher features of a trained method on a dataset, and their 2-D views.

`extract` runs both networks once over a dataset (labels, logits, every stage's output
global-average-pooled to `[N, C]`, then the embedding) for `cmkd analyze --krc / --cka /
--embeddings`; `embedding_panels` and `reduce_panel` give soft CMKD's Fig. 8 (paper A): a 2-D
PCA (or t-SNE) of teacher, projected teacher (`Method.shared_space`) and student embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cmkd_cli.methods import Method, feature_source

#: the key of the embedding among a network's features (after its stages)
EMBEDDING = "embedding"


@dataclass
class Features:
    """Outputs of student and teacher on one split: labels, logits and pooled features
    (`[N, C]` per stage path, then `embedding`)."""

    y: torch.Tensor
    student_logits: torch.Tensor | None
    teacher_logits: torch.Tensor | None
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]


def pool(f: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a `[B, C, ...]` feature to `[B, C]`."""
    return f.float().flatten(2).mean(-1) if f.dim() > 2 else f.float()


@torch.no_grad()
def extract(method: Method, dataset: Any, batch_size: int, device: torch.device) -> Features:
    """Run student (`batch[input_key]`) and teacher (`batch["t"]`) over `dataset`."""
    sources = {
        role: [
            feature_source(method, model, i, f"{role}.stage_paths[{i}]")
            for i in range(len(getattr(model, "stage_paths", [])))
        ]
        for role, model in (("student", method.student), ("teacher", method.teacher))
    }
    feats: dict[str, dict[str, list[torch.Tensor]]] = {"student": {}, "teacher": {}}
    logits: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    ys = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        outs = {
            "student": method.student(batch[method.input_key].to(device)),
            "teacher": method.teacher(batch["t"].to(device)),
        }
        for role, out in outs.items():
            for src in sources[role]:
                feats[role].setdefault(src.path, []).append(pool(src.read(out)).cpu())
            feats[role].setdefault(EMBEDDING, []).append(pool(out.embedding).cpu())
            if out.logits is not None:
                logits[role].append(out.logits.float().cpu())
        ys.append(torch.as_tensor(batch["y"]))

    def cat(parts: list[torch.Tensor]) -> torch.Tensor | None:
        return torch.cat(parts) if parts else None

    return Features(
        y=torch.cat(ys),
        student_logits=cat(logits["student"]),
        teacher_logits=cat(logits["teacher"]),
        student={k: torch.cat(v) for k, v in feats["student"].items()},
        teacher={k: torch.cat(v) for k, v in feats["teacher"].items()},
    )


def embedding_panels(
    method: Method, feats: Features, device: torch.device
) -> tuple[list[dict[str, torch.Tensor]], str | None]:
    """The sources to embed together, per panel, and a note when they cannot share one.

    With a projection (`shared_space` overridden): teacher, projected teacher and student
    in one panel, or the raw teacher in a panel of its own when its width differs. Without
    one: student and teacher in separate panels."""
    s_emb, t_emb = feats.student[EMBEDDING], feats.teacher[EMBEDDING]
    name = method.method_name
    if type(method).shared_space is Method.shared_space:
        note = f"method `{name}` has no shared space: student and teacher drawn in separate panels"
        return [{"student": s_emb}, {"teacher": t_emb}], note
    with torch.no_grad():
        s, t = method.shared_space(s_emb.to(device), t_emb.to(device))
    s, t = s.float().cpu(), t.float().cpu()
    if t.shape[-1] == t_emb.shape[-1]:
        return [{"teacher": t_emb, "projected teacher": t, "student": s}], None
    note = (
        f"method `{name}`: the teacher embedding ({t_emb.shape[-1]}-d) is not in the shared "
        f"space ({t.shape[-1]}-d), so it is drawn in a panel of its own"
    )
    return [{"projected teacher": t, "student": s}, {"teacher": t_emb}], note


def reduce_2d(x: torch.Tensor, tsne: bool) -> np.ndarray:
    """`[N, D]` -> `[N, 2]`: PCA (the top two eigenvectors of the covariance), or t-SNE
    (sklearn, PCA-initialised, seeded) with BLAS limited to torch's threads."""
    x = x.double() - x.double().mean(0)
    if not tsne:
        _, vecs = torch.linalg.eigh(x.T @ x)  # eigenvalues ascending
        return (x @ vecs[:, -2:].flip(-1)).numpy()
    # lazy: sklearn.manifold takes seconds to import, only --tsne needs it
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # with TSNE: only --tsne needs it

    perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))
    with threadpool_limits(torch.get_num_threads()):
        return TSNE(2, init="pca", random_state=0, perplexity=perplexity).fit_transform(x.numpy())


def reduce_panel(sources: dict[str, torch.Tensor], tsne: bool) -> dict[str, np.ndarray]:
    """The sources of one panel reduced to 2-D together (one PCA / t-SNE), split back."""
    xy = reduce_2d(torch.cat(list(sources.values())), tsne)
    parts = np.split(xy, np.cumsum([len(v) for v in sources.values()])[:-1])
    return dict(zip(sources, parts, strict=True))
