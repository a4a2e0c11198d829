"""The method contract (after mdistiller's Distiller): one class per distillation method.

A method owns the student, the teacher and any extra modules (projection heads, proxies,
memory banks). `forward(batch)` returns a `StepOutput` whose `losses` are already weighted;
the engine sums them, logs every term and every `stats` entry, and knows nothing else
about the method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from cmkd_cli.errors import RunError, UsageError
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.models.taps import FeatureTaps
from cmkd_cli.registry import Registry
from cmkd_cli.schema import MethodConfig

METHODS: Registry[type[Method]] = Registry("method", package="cmkd_cli.methods")


def register_method(name: str):
    """Register a `Method` subclass whose `Config.name` is `Literal[name]`."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls.method_name = name
        return METHODS.register(name)(cls)

    return decorator


@dataclass
class StepOutput:
    logits: torch.Tensor | None
    losses: dict[str, torch.Tensor]
    stats: dict[str, float | torch.Tensor] = field(default_factory=dict)


@dataclass
class ParamGroup:
    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0
    weight_decay: float | None = None


class Method(nn.Module):
    """Base class. Subclasses set `Config` and implement `forward`.

    `task` supplies the supervised loss (`task.loss(output, batch)`) so a method does not
    know whether it trains a classifier or a speaker embedding.
    """

    Config: ClassVar[type[MethodConfig]]
    method_name: ClassVar[str] = ""
    #: the method reads teacher outputs (False: self-KD / no-teacher methods)
    uses_teacher: ClassVar[bool] = True
    #: the teacher must produce logits (logit-level methods)
    needs_teacher_logits: ClassVar[bool] = False
    #: DDP must look for parameters that get no gradient in a step
    find_unused_parameters: ClassVar[bool] = False
    #: state-dict keys needed only to continue training (memory banks and their pointers):
    #: `last.pt` keeps them for an exact resume, `best.pt` (evaluation, shipping) leaves
    #: them out
    training_only_state: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        cfg: MethodConfig,
        student: nn.Module,
        teacher: nn.Module | None,
        task: Any,
        num_classes: int,
        teacher_tune: str = "frozen",
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.student = student
        self.teacher = teacher if self.uses_teacher else None
        self.task = task
        self.num_classes = num_classes
        self.teacher_tune = teacher_tune
        self.epoch = 0
        #: batch key of the student's input (`t` when train-teacher trains the teacher alone)
        self.input_key = "x"
        #: set by the engine when a frozen teacher's outputs are cached (teacher_cache.py)
        self.teacher_cache = None
        self._taps: list[FeatureTaps] = []
        self._teacher_taps: list[FeatureTaps] = []
        if self.teacher is not None:
            self._set_teacher_trainable()

    # ---- teacher tuning -------------------------------------------------------------
    def teacher_trainable_params(self) -> list[nn.Parameter]:
        """Parameters of the teacher this method tunes: none, `partial` or all."""
        if self.teacher is None or self.teacher_tune == "frozen":
            return []
        if self.teacher_tune == "full":
            return list(self.teacher.parameters())
        partial = getattr(self.teacher, "partial_tune_modules", None)
        if partial is None:
            raise UsageError(
                f"teacher.tune: `partial` needs a model that names its top stages; "
                f"{type(self.teacher).__name__} does not"
            )
        return [p for m in partial() for p in m.parameters()]

    def _set_teacher_trainable(self) -> None:
        keep = {id(p) for p in self.teacher_trainable_params()}
        for p in self.teacher.parameters():
            p.requires_grad_(id(p) in keep)

    @property
    def teacher_frozen(self) -> bool:
        return self.teacher is not None and not any(
            p.requires_grad for p in self.teacher.parameters()
        )

    def train(self, mode: bool = True) -> Method:
        """A frozen teacher stays in eval mode (BN statistics and dropout untouched)."""
        super().train(mode)
        if self.teacher is not None and self.teacher_frozen:
            self.teacher.eval()
        return self

    @property
    def teacher_cached(self) -> bool:
        """`run_teacher` reads the teacher's outputs from the cache instead of running it."""
        return self.teacher_cache is not None and self.teacher_frozen

    def networks_run(self) -> list[nn.Module]:
        """The networks a training step runs: the student, and the teacher unless cached
        (what the speed switches compile and reduced precision wraps)."""
        run_teacher = self.teacher is not None and not self.teacher_cached
        return [self.student, self.teacher] if run_teacher else [self.student]

    def run_teacher(self, batch: dict[str, Any]) -> ModelOutput:
        """The teacher's output on the batch's teacher input; no graph when frozen.

        With a teacher cache, outputs (and the teacher's hooked features) are read by
        sample index instead of running the teacher.
        """
        if self.teacher_cached:
            out, tapped = self.teacher_cache.output(batch["index"], batch["y"].device)
            for taps in self._teacher_taps:
                taps.outputs.update({p: tapped[p] for p in taps.paths})
            return out
        if self.teacher_frozen:
            with torch.no_grad():
                return self.teacher(batch["t"])
        return self.teacher(batch["t"])

    # ---- intermediate features ---------------------------------------------------------
    def stage_path(self, model: nn.Module, spec: str | int, field: str) -> str:
        """A module path from a recipe field: an explicit path, or an index into the model's
        `stage_paths` (`-2`: the second-to-last stage, e.g. ResNet `layer3`)."""
        if isinstance(spec, str) and not spec.lstrip("-").isdigit():
            return spec
        stages = list(getattr(model, "stage_paths", []))
        try:
            return stages[int(spec)]
        except IndexError:
            raise UsageError(
                f"{field}: stage {spec} does not exist; {type(model).__name__} has stages "
                f"{stages or 'none (it exposes only its embedding)'}"
            ) from None

    def tap(self, model: nn.Module, paths: list[str]) -> FeatureTaps:
        """Record the outputs of `paths` of `model` on each forward (hooks, no rewrite)."""
        taps = FeatureTaps(model, paths)
        self._taps.append(taps)
        if model is self.teacher:
            self._teacher_taps.append(taps)
        return taps

    def teacher_tap_paths(self) -> list[str]:
        """The module paths hooked on the teacher (what a teacher cache must also store)."""
        return [p for taps in self._teacher_taps for p in taps.paths]

    def teacher_tap_outputs(self) -> dict[str, torch.Tensor]:
        """The live outputs dict of every hook on the teacher (what a cache must store)."""
        merged: dict[str, torch.Tensor] = {}
        for taps in self._teacher_taps:
            merged.update(taps.outputs)
        return merged

    # ---- the contract -----------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable modules the method adds (projection heads, proxies); one group each."""
        return {}

    def trainable_groups(self) -> list[ParamGroup]:
        groups = [ParamGroup("student", [p for p in self.student.parameters() if p.requires_grad])]
        teacher_params = self.teacher_trainable_params()
        if teacher_params:
            groups.append(ParamGroup("teacher", teacher_params))
        task_params = [p for p in self.task.parameters() if p.requires_grad]
        if task_params:
            groups.append(ParamGroup("task", task_params))
        for name, module in self.extra_modules().items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append(ParamGroup(name, params))
        return groups

    def student_for_inference(self) -> nn.Module:
        return self.student

    def shared_space(
        self, student_emb: torch.Tensor, teacher_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher embeddings in one space, for cross-modal matching (paper A
        Tables 4 and 8). Default: as they are, when their widths agree; methods with a
        projection (paper A, CLIP) override it."""
        if student_emb.shape[-1] != teacher_emb.shape[-1]:
            raise UsageError(
                f"method `{self.method_name}` has no shared student-teacher space (widths "
                f"{student_emb.shape[-1]} and {teacher_emb.shape[-1]}); cross-matching needs a "
                "projection (soft_feature, soft_classifier, clip)"
            )
        return student_emb, teacher_emb

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        for model in (self.student, self.teacher):  # e.g. OGM-GE's window (models.fusion)
            if hasattr(model, "set_epoch"):
                model.set_epoch(epoch)

    def resume_extras(self) -> dict[str, Any]:
        """State carried from step to step outside the modules' state dicts, for last.pt:
        the `state_dict()` of every helper attribute that has one (e.g. a sample selector's
        random generator). Methods with more (DLB's previous batch) extend it."""
        return {
            name: value.state_dict()
            for name, value in vars(self).items()
            if not isinstance(value, nn.Module) and callable(getattr(value, "state_dict", None))
        }

    def load_resume_extras(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            helper = getattr(self, name, None)
            if helper is not None and callable(getattr(helper, "load_state_dict", None)):
                helper.load_state_dict(value)

    def _stored_elsewhere(self) -> tuple[str, ...]:
        """State-dict prefixes a checkpoint does not repeat: the student (saved on its own)
        and a frozen teacher (referenced by its source, not copied)."""
        if self.teacher is not None and self.teacher_frozen:
            return ("student.", "teacher.")
        return ("student.",)

    def checkpoint_state(self, resumable: bool = True) -> dict[str, torch.Tensor]:
        """The method's own state (tuned teacher, heads, proxies, running stats, and with
        `resumable` the `training_only_state` memories)."""
        skip = self._stored_elsewhere() + (() if resumable else self.training_only_state)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor], resume: bool = False) -> None:
        """Load `checkpoint_state`; to `resume` training the training-only state must be
        there too (a `last.pt`), to evaluate it may be missing (a `best.pt`)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        optional = self._stored_elsewhere() + (() if resume else self.training_only_state)
        missing = [k for k in missing if not k.startswith(optional)]
        if missing or unexpected:
            raise RunError(
                f"checkpoint does not match the method: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
