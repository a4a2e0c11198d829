"""`cmkd extract-fbank`: the fbank of every manifest record into a sharded feature store.

Only ids without a current entry (same audio path, size and mtime) in a finished shard are
computed, in shards of `shard_size` utterances spread over `workers` processes; the index
is rewritten atomically at the end. See `cmkd_cli.data.fbank` for the store layout.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from rich.table import Table

from cmkd_cli import console
from cmkd_cli.data import fbank
from cmkd_cli.data.manifest import Skipped, read_manifest, resolve
from cmkd_cli.engine.lock import run_lock
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.io import atomic_write_jsonl, remove_stale_temporaries
from cmkd_cli.schema import StrictModel
from data_prep.common import default_workers, parallel_map, reason_kind


class ExtractOptions(StrictModel):
    manifest: Path = Field(description="manifest.jsonl (or its folder) from `cmkd prepare`")
    out: Path = Field(description="folder of the feature store")
    workers: int | None = Field(None, description="processes (default min(4, CPUs))")
    n_mels: int = Field(40, description="mel bands")
    cmn: bool | None = Field(
        None, description="per-utterance mean normalisation (None: the front-end's)"
    )
    dither: float = Field(0.0, description="Kaldi dither")
    dtype: Literal["float16", "float32"] = "float16"
    shard_size: int = Field(1000, description="utterances per shard")
    overwrite: bool = Field(False, description="recompute a store made with another config")
    frontend: str = Field("kaldi", description="kaldi | voxceleb_trainer (cmkd_cli.data.fbank)")


class ExtractResult(StrictModel):
    manifest: str
    out: str
    index: str
    config: fbank.FbankConfig
    records: int
    indexed: int = Field(description="ids with features in index.jsonl")
    computed: int = Field(description="utterances computed in this run (0 on a rerun)")
    skipped: int
    shards_written: int
    hours_computed: float
    skip_reasons: dict[str, int]
    seconds: float


def run(options: ExtractOptions) -> ExtractResult:
    """Compute the missing features of the manifest's records into the store at `out`
    (`frontend`: kaldi | voxceleb_trainer, see `cmkd_cli.data.fbank`; `cmn` None: the
    front-end's default)."""
    started = time.perf_counter()
    manifest, out, shard_size = options.manifest, options.out, options.shard_size
    if shard_size < 1:
        raise UsageError(f"--shard-size {shard_size}: must be at least 1")
    try:
        cfg = fbank.FbankConfig(
            frontend=options.frontend,
            n_mels=options.n_mels,
            cmn=options.cmn,
            dither=options.dither,
            dtype=options.dtype,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        flag = f"--{str(err['loc'][0]).replace('_', '-')} {err['input']!r}: " if err["loc"] else ""
        raise UsageError(flag + msg) from None
    records = [r for r in read_manifest(manifest) if r.audio]
    if not records:
        raise DataError(f"{manifest}: no record has an `audio` path")
    items = [(r.id, str(resolve(manifest, r.audio).absolute())) for r in records]
    out = Path(out)
    with run_lock(out):  # one writer per store
        remove_stale_temporaries(out)
        return _extract(options, out, items, cfg, started)


def _extract(
    options: ExtractOptions,
    out: Path,
    items: list[tuple[str, str]],
    cfg: fbank.FbankConfig,
    started: float,
) -> ExtractResult:
    """The work of `run` once the store is locked."""
    manifest, shard_size = options.manifest, options.shard_size
    fbank.check_config(out, cfg, options.overwrite)
    entries = fbank.finished_entries(out)
    missing = [
        (uid, audio) for uid, audio in items if not fbank.is_current(entries.get(uid), audio)
    ]
    first = max(fbank.shard_numbers(out), default=-1) + 1
    jobs = fbank.plan_shards(missing, out, cfg, shard_size, first)
    reports = list(
        parallel_map(fbank.write_shard, jobs, options.workers or default_workers(), "extract-fbank")
    )
    entries = fbank.finished_entries(out)
    ids = [uid for uid, _ in items]
    indexed = fbank.write_index(out, ids, entries)
    skipped = [
        Skipped(path=entries[i]["audio"], reason=entries[i]["skipped"])
        for i in ids
        if "skipped" in entries.get(i, {})
    ]
    atomic_write_jsonl(out / "skipped.jsonl", [s.model_dump() for s in skipped])
    if not indexed:
        raise DataError(
            f"{manifest}: no utterance has features ({len(skipped)} skipped: see "
            f"{out / 'skipped.jsonl'})"
        )
    return ExtractResult(
        manifest=str(manifest),
        out=str(out),
        index=str(out / fbank.INDEX),
        config=cfg,
        records=len(items),
        indexed=indexed,
        computed=sum(r.utterances for r in reports),
        skipped=len(skipped),
        shards_written=sum(1 for r in reports if r.utterances),
        hours_computed=round(sum(r.seconds for r in reports) / 3600, 4),
        skip_reasons=dict(Counter(reason_kind(s.reason) for s in skipped)),
        seconds=round(time.perf_counter() - started, 3),
    )


def render(result: ExtractResult) -> Table:
    cfg = result.config
    rows = [
        ["index", result.index],
        ["records / indexed", f"{result.records} / {result.indexed}"],
        ["computed now", result.computed],
        ["shards written", result.shards_written],
        ["hours computed", f"{result.hours_computed:.3f}"],
        ["features", f"{cfg.describe()}, cmn={cfg.cmn}, dither={cfg.dither}, {cfg.dtype}"],
        ["skipped", result.skipped],
    ]
    rows += [[f"  {reason}", n] for reason, n in result.skip_reasons.items()]
    rows.append(["seconds", result.seconds])
    return console.table("extract-fbank", ["", "value"], rows)
