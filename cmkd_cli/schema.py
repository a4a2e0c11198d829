"""The typed recipe: every stage reads one `Recipe` (pydantic v2, unknown keys forbidden).

Method hyper-parameters live with each method (`cmkd_cli/methods/*.py`) as a subclass of
`MethodConfig`; `cmkd_cli.config` joins them into a union discriminated on `name`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def single_component(name: str) -> str:
    """A name that becomes one folder: not empty, no `/` or `\\`, not `.` or `..`."""
    if not name or "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        raise ValueError(
            f"{name!r} must be a single path component (no '/', not '.' or '..'): it names a "
            "folder inside output.root"
        )
    return name


#: a recipe, variant or run name: one folder inside output.root, never outside it
FolderName = Annotated[str, AfterValidator(single_component)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodConfig(StrictModel):
    """Base of every method's hyper-parameters; `name` selects the method."""

    name: str


class ModelConfig(StrictModel):
    """A registered model by name, with keyword parameters checked against its builder."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DataConfig(StrictModel):
    """A registered dataset by name; `params` are checked against the dataset builder."""

    name: str = "digits"
    params: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(64, ge=1, description="global batch size (all processes together)")
    eval_batch_size: int = Field(256, ge=1)
    num_workers: int | None = Field(
        None,
        ge=0,
        description="loader worker processes per training process (default: from the CPU "
        "count, `engine.loaders.default_workers`)",
    )
    drop_last: bool = True

    def identity(self) -> dict[str, Any]:
        """What the samples are (dataset and its parameters), without how they are loaded
        (batch sizes, workers): the part of the data that cache keys depend on."""
        return {"name": self.name, "params": self.params}


class OptimConfig(StrictModel):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    group_lr_scale: dict[str, float] = Field(
        default_factory=dict,
        description="learning-rate multiplier per parameter group (student, teacher, heads, ...)",
    )


class ScheduleConfig(StrictModel):
    """Learning-rate schedule, applied every optimiser step; epochs may be fractional.

    `per: epoch` holds the factor fixed within an epoch (computed from the epoch index), as
    the released C2KD code's `adjust_lr`, which sets lr = 1e-4 + (1e-2 - 1e-4)(1 - e/100)^0.9
    once per epoch e: `{name: poly, per: epoch, min_lr: 1e-4}`.
    """

    name: Literal["constant", "step", "multistep", "poly", "cosine"] = "constant"
    per: Literal["step", "epoch"] = Field(
        "step", description="recompute the factor every optimiser step, or once per epoch"
    )
    step_epochs: float = Field(30, gt=0, description="`step`: decay every this many epochs")
    milestones: list[float] = Field(default_factory=list, description="`multistep`: epochs")
    gamma: float = Field(0.1, gt=0)
    power: float = Field(0.9, gt=0, description="`poly`: (1 - t/T)^power")
    min_lr: float = Field(
        0.0,
        ge=0,
        description="`poly`: the lr it decays towards, min_lr + (lr - min_lr)(1 - t/T)^power "
        "(for optim.lr; a group with a scale s gets s times that)",
    )
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="`cosine`: floor as a fraction")
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start_factor: float = Field(0.01, gt=0, le=1)

    @model_validator(mode="after")
    def _min_lr_is_polys(self) -> ScheduleConfig:
        if self.min_lr > 0 and self.name != "poly":
            raise ValueError(f"min_lr applies to `poly` only (this schedule is `{self.name}`)")
        return self


class TrainConfig(StrictModel):
    epochs: int = Field(10, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    seed: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bf16", "fp16"] = Field(
        "none",
        description="training steps run the networks' bodies in this format (GPU or CPU), heads "
        "and losses in fp32 (cmkd_cli/engine/precision.py)",
    )
    grad_clip: float | None = Field(None, gt=0)
    grad_accum: int = Field(1, ge=1)
    deterministic: bool = True
    log_every: int = Field(10, ge=1)
    save_every: int = Field(
        1,
        ge=1,
        description="write last.pt every N epochs and after the last (a killed run redoes at "
        "most N-1 epochs; for many short epochs, e.g. a low-data benchmark)",
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="also write last.pt every this many optimiser steps (mid-epoch)"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    teacher_cache: bool = Field(
        True, description="cache a frozen teacher's outputs on disk when its input is static"
    )
    cache_dir: str | None = Field(None, description="default: $CMKD_CACHE_DIR or ~/.cache/cmkd")
    keep_last: int | None = Field(
        None, ge=1, description="keep the last K epochs' weights in RUN/epochs/ (cmkd average)"
    )
    input_cache: bool = Field(
        True,
        description="keep decoded inputs on disk (memory-mapped, keyed by the preprocessing): "
        "static views once, the decode of augmented ones (data/input_cache.py)",
    )
    input_cache_gb: float = Field(
        20.0,
        gt=0,
        description="largest input cache (one split, one modality) written, in GiB; a larger "
        "one, or one over half the free disk, is decoded per draw instead",
    )
    channels_last: bool = Field(
        False, description="models and 4-D inputs in channels_last memory format"
    )
    compile: bool = Field(
        False, description="torch.compile the student and teacher (same outputs, faster steps)"
    )
    compile_backend: str = Field(
        "inductor", description="torch.compile backend (inductor; aot_eager to debug)"
    )
    compile_mode: str | None = Field(
        None, description="torch.compile mode (default, reduce-overhead, max-autotune)"
    )


class TeacherPretrain(StrictModel):
    """How `train-teacher` (or `distill`, when no checkpoint is given) trains the teacher."""

    when: Literal["always", "untrained"] = Field(
        "always",
        description="`distill` trains the teacher always, or only when it is `untrained` "
        "(no `teacher.checkpoint` and no `checkpoint` among its model's params)",
    )
    epochs: int = Field(20, ge=1)
    task_params: dict[str, Any] | None = Field(
        None, description="the task's parameters for teacher training (default: the recipe's)"
    )
    batch_size: int | None = Field(None, ge=1, description="default: data.batch_size")
    eval_every: int | None = Field(
        None,
        ge=1,
        description="validate the teacher every N epochs (default: eval.every); set it when "
        "a study's variants validate at different rates, so that they share one teacher",
    )
    data_params: dict[str, Any] | None = Field(
        None,
        description="data.params of the teacher's training, merged over the recipe's: all "
        "the data the teacher may have, e.g. {labelled_fraction: 1.0} under a low-label student",
    )
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(name="adam", lr=1e-2))
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    seed: int = 0


class TeacherConfig(StrictModel):
    model: ModelConfig
    checkpoint: str | None = Field(
        None, description="local path to trained teacher weights; never fetched from a network"
    )
    tune: Literal["frozen", "partial", "full"] = "frozen"
    pretrain: TeacherPretrain | None = Field(
        default_factory=TeacherPretrain,
        description="train the teacher first when `checkpoint` is not given (null: use as built)",
    )

    def has_own_weights(self) -> bool:
        """Whether weights come from a file: `checkpoint`, or its model's `checkpoint`."""
        return bool(self.checkpoint or self.model.params.get("checkpoint"))

    def needs_pretraining(self) -> bool:
        """Whether `distill` trains (or reuses a trained) teacher before distilling."""
        if self.checkpoint is not None or self.pretrain is None:
            return False
        return self.pretrain.when == "always" or not self.has_own_weights()


class EvalConfig(StrictModel):
    metric: str = "accuracy"
    mode: Literal["max", "min"] = "max"
    every: int = Field(1, ge=1, description="validate every N epochs")
    test: bool = Field(
        True,
        description="test the best checkpoint at the end (false: a hyper-parameter search "
        "run, which sees the validation split only)",
    )


class OutputConfig(StrictModel):
    root: str = "runs"
    name: FolderName | None = Field(
        None, description="run directory name inside `root` (default: the recipe name)"
    )
    tensorboard: bool = True


class Variant(StrictModel):
    """One row of a comparison table: dotted overrides applied on top of the recipe."""

    name: FolderName = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    set: dict[str, Any] = Field(default_factory=dict)
    baseline: str | None = Field(
        None, description="the row this one is paired with (default: compare.baseline)"
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="dotted field -> values: every combination is trained on the tune seeds "
        "and scored on the validation split only; the best is then run on every seed",
    )

    @model_validator(mode="after")
    def _grid_values(self) -> Variant:
        empty = [k for k, values in self.grid.items() if not values]
        if empty:
            raise ValueError(f"compare[{self.name}].grid.{empty[0]}: give at least one value")
        return self


class Compare(StrictModel):
    """The `compare:` section: variants (a plain list of them is accepted too) and how rows
    are compared: each row's paired delta against its baseline row, seed by seed."""

    base_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.+-]+$",
        description="the name of the recipe's own row (default: its method name)",
    )
    baseline: str | None = Field(
        None,
        description="the row every other row is paired with (default: the first row whose "
        "method is `baseline`, i.e. no distillation; none: no deltas)",
    )
    ci: Literal["t", "bootstrap"] = Field(
        "t",
        description="95% interval of a paired delta: Student t over seeds, or a percentile "
        "bootstrap over seeds (10,000 resamples)",
    )
    tune_seeds: list[int] = Field(
        default_factory=lambda: [0],
        description="seeds of the `grid:` runs (kept apart from the seeds the table reports)",
    )
    variants: list[Variant] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _list_form(cls, value: Any) -> Any:
        return {"variants": value} if isinstance(value, list) else value


class PathVariables(StrictModel):
    """Filled by the loader, not written in recipes: the `${name}` variables the recipe was
    loaded with, as absolute paths, and the fields that used them (dotted field ->
    template), so a run's paths hold from any directory and `cmkd eval --var name=PATH`
    can point them elsewhere."""

    values: dict[str, str] = Field(default_factory=dict)
    fields: dict[str, str] = Field(default_factory=dict)


class RecipeBase(StrictModel):
    """The fields of a recipe apart from `method` (see `Recipe`)."""

    name: FolderName = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    description: str = ""
    task: str = "classification"
    task_params: dict[str, Any] = Field(
        default_factory=dict, description="parameters of the task's loss (checked by name)"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    student: ModelConfig
    teacher: TeacherConfig | None = None
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    seeds: list[int] | None = Field(None, description="run once per seed (mean ± std)")
    compare: Compare = Field(default_factory=Compare)
    variables: PathVariables = Field(default_factory=PathVariables)

    @model_validator(mode="after")
    def _unique_variants(self) -> RecipeBase:
        names = [v.name for v in self.compare.variants]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"compare: variant names must be unique, repeated: {sorted(dup)}")
        names = self.row_names()
        for where, ref in [("compare.baseline", self.compare.baseline)] + [
            (f"compare[{v.name}].baseline", v.baseline) for v in self.compare.variants
        ]:
            if ref is not None and ref not in names:
                raise ValueError(f"{where}: no row {ref!r}; rows: {', '.join(names)}")
        return self

    def row_names(self) -> list[str]:
        """The rows of the study's table: the recipe's own, then each variant."""
        method = getattr(self, "method", None)
        own = self.compare.base_name or (method.name if method is not None else "base")
        return [own] + [v.name for v in self.compare.variants]


class Recipe(RecipeBase):
    """What every stage, the engine and a checkpoint's reader receive: a validated recipe
    with its method's config. At run time it is an instance of a subclass built by
    `cmkd_cli.config`, whose `method` is the union of the registered methods' configs
    discriminated on `name`."""

    method: MethodConfig
