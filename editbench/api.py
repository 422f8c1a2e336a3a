"""What every editor implements and every loader produces.

The core knows no concrete editor: the runner builds an editor from the registry,
hands it steps of :class:`EditRequest` and evaluates the model it edited in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from editbench.errors import EditbenchError

if TYPE_CHECKING:
    from editbench.models import ModelHandle

__all__ = ["LOCALITY_KINDS", "BaseEditor", "EditRequest", "EditStats", "EditbenchError",
           "EditorConfig", "LocalityPrompt", "PortabilityPrompt"]

LOCALITY_KINDS = ("neighbourhood", "distant")
"""``neighbourhood``: same relation, another subject (CounterFact's neighbourhood prompts),
the strong test; ``distant``: unrelated prompts (zsRE's Natural Questions), the weak one."""


@dataclass(frozen=True, slots=True)
class LocalityPrompt:
    """An unrelated prompt whose behaviour must survive the edits, with its gold answer.

    ``kind`` is one of :data:`LOCALITY_KINDS`, or None where the data does not say.
    """

    prompt: str
    answer: str
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in LOCALITY_KINDS:
            raise EditbenchError(
                f"locality prompt {self.prompt!r}: kind {self.kind!r} is not one of "
                f"{list(LOCALITY_KINDS)}"
            )


@dataclass(frozen=True, slots=True)
class PortabilityPrompt:
    """A prompt that needs the edited fact one step further (KnowEdit), with its answer.

    ``kind``: e.g. ``reasoning`` (one hop), ``subject_aliasing``, ``logical_generalization``.
    """

    prompt: str
    answer: str
    kind: str


@dataclass(frozen=True, slots=True)
class EditRequest:
    """One edit: make ``prompt`` (which mentions ``subject``) continue with ``target_new``.

    Optional parts, present where the data has them: ``portability`` prompts (KnowEdit),
    ``generation_prompts`` about the subject and ``reference_texts`` about the new target
    (CounterFact's generation prompts and attribute snippets, for fluency and consistency),
    and the ``timestep`` a request belongs to (WikiBigEdit's snapshots).
    """

    case_id: str
    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    rephrase_prompts: tuple[str, ...] = ()
    locality: tuple[LocalityPrompt, ...] = ()
    portability: tuple[PortabilityPrompt, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    reference_texts: tuple[str, ...] = ()
    timestep: int | None = None

    def __post_init__(self) -> None:
        for name in ("case_id", "prompt", "subject", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EditbenchError(
                    f"EditRequest {self.case_id!r}: field {name!r} must be a non-empty string, "
                    f"got {value!r}"
                )
        if self.target_true is not None and not isinstance(self.target_true, str):
            raise EditbenchError(
                f"EditRequest {self.case_id!r}: field 'target_true' must be a string or None"
            )
        for name in ("rephrase_prompts", "locality", "portability", "generation_prompts",
                     "reference_texts"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass
class EditorConfig:
    """Base of every editor's typed hyperparameters (validated from YAML by ``config.py``).

    ``edits_per_step`` is the editor's natural step size in a sequential run:
    ``None`` means "all requests in one step" (breadth-first / batched editors).
    """

    edits_per_step: int | None = None
    seed: int = 0

    # What `editbench tune` may sweep: the key holding a learning rate (None: not swept).
    tune_lr_key: ClassVar[str | None] = None

    def validate(self) -> None:
        """Cross-field checks; raise ``ValueError`` with a message naming the key."""
        if self.edits_per_step is not None and self.edits_per_step < 1:
            raise ValueError("edits_per_step: expected a positive integer or null")

    def tuning_location(self, layer: int, template: str) -> dict[str, Any] | None:
        """The hparams overrides that put this editor at ``layer`` (with module ``template``,
        where the editor takes one), for ``editbench tune``; None: the editor has no location
        to tune."""
        return None


@dataclass
class EditStats:
    """What an editor reports about one step (times are filled in by the runner)."""

    num_requests: int
    info: dict[str, Any] = field(default_factory=dict)


class BaseEditor(ABC):
    """An editor changes ``handle.model`` in place, one step of requests at a time.

    Editors keep all their state on the instance (optimiser moments, caches of keys,
    projection matrices), so two editors never share anything, and expose it through
    :meth:`state_dict` so a run can be resumed.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[EditorConfig]] = EditorConfig

    def __init__(self, handle: ModelHandle, config: EditorConfig) -> None:
        if not isinstance(config, self.config_class):
            raise EditbenchError(
                f"editor {self.name!r} expects a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.handle = handle
        self.config = config
        self._boundary_hook: Callable[[int, bool], None] | None = None

    def set_boundary_hook(self, hook: Callable[[int, bool], None] | None) -> None:
        """The runner's checkpoint hook, called as ``hook(passes, last)`` (see
        :meth:`boundary`); None removes it."""
        self._boundary_hook = hook

    def boundary(self, passes: int, *, last: bool = False) -> None:
        """Tell the runner that ``passes`` more request-passes were trained since the last
        call and that this is a safe point inside :meth:`edit` (e.g. an epoch's end);
        ``last``: the step's training ends here (the runner counts the passes and
        checkpoints at the step's end instead).

        Why: a breadth-first step over 100K requests is one step; checkpoints inside it are
        what makes such a run survive a crash. At a boundary that is not ``last`` the runner
        may save the edited tensors and :meth:`state_dict`, which must then hold the step's
        progress (epoch, shuffled order, optimizer moments, RNG states) so that, after
        :meth:`load_state_dict`, calling :meth:`edit` with the same requests continues
        from this point instead of starting the step again. Editors that never call it are
        checkpointed between steps only.
        """
        if self._boundary_hook is not None:
            self._boundary_hook(passes, last)

    @abstractmethod
    def edit(self, requests: Sequence[EditRequest]) -> EditStats:
        """Apply one step of requests to the model in place."""

    def finalize(self) -> None:
        """Called once after the last step, before the final evaluation.

        Editors that edit through a side structure (e.g. a LoRA adapter with
        ``merge: true``) fold it into the model here; the default does nothing.
        """
        return None

    def edited_parameters(self) -> list[str]:
        """Names (``model.named_parameters()``) of the model tensors this editor changes.

        The runner saves these tensors with :meth:`state_dict` in a run's checkpoint, so a
        resumed run continues from the same weights without re-editing.
        """
        return []

    def state_dict(self) -> dict[str, Any]:
        """Editor state that must survive a resume (tensors allowed)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise EditbenchError(f"editor {self.name!r} keeps no state, got keys {sorted(state)}")
