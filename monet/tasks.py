"""Task specifications: what a dataset asks a model to predict.

A :class:`TaskSpec` is carried by every dataset; models, losses and metrics are built from it.

Example:
    >>> spec = TaskSpec.binary(["task1", "task2"])
    >>> spec.T, spec.names
    (2, ('task1', 'task2'))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

KINDS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class Task:
    """One task.

    Attributes:
        name: stable name used in metric keys (``val/acc/<name>``).
        kind: ``binary`` (one logit), ``multiclass`` (``num_classes`` logits) or ``regression``
            (one output).
        num_classes: number of classes for ``multiclass``; 1 otherwise.
        group: task group (e.g. ``au``, ``expr``, ``va``); a logit temperature is set per group.
    """

    name: str
    kind: str = "binary"
    num_classes: int = 1
    group: str = "task"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "multiclass" and self.num_classes < 2:
            raise ValueError(f"task {self.name!r}: multiclass needs num_classes >= 2")

    @property
    def out_dim(self) -> int:
        """Number of model outputs for this task."""
        return self.num_classes if self.kind == "multiclass" else 1


@dataclass(frozen=True)
class TaskSpec:
    """An ordered collection of tasks. Labels are stored as a float tensor ``[N, T]`` (class
    index for multiclass, value for regression) with a ``[N, T]`` mask of present labels."""

    tasks: tuple = field(default_factory=tuple)

    @classmethod
    def binary(cls, names: Iterable[str], group: str = "task") -> "TaskSpec":
        return cls(tuple(Task(str(n), "binary", 1, group) for n in names))

    @property
    def T(self) -> int:
        return len(self.tasks)

    @property
    def names(self) -> tuple:
        return tuple(t.name for t in self.tasks)

    @property
    def groups(self) -> tuple:
        seen = []
        for t in self.tasks:
            if t.group not in seen:
                seen.append(t.group)
        return tuple(seen)

    @property
    def all_binary(self) -> bool:
        return all(t.kind == "binary" for t in self.tasks)

    def indices(self, kind: str) -> list:
        return [i for i, t in enumerate(self.tasks) if t.kind == kind]

    @property
    def out_dims(self) -> list:
        return [t.out_dim for t in self.tasks]

    @property
    def offsets(self) -> list:
        """Start of each task's outputs in the flat ``[D]`` output vector."""
        out, o = [], 0
        for t in self.tasks:
            out.append(o)
            o += t.out_dim
        return out

    def to_dict(self) -> dict:
        return {"tasks": [dict(name=t.name, kind=t.kind, num_classes=t.num_classes, group=t.group)
                          for t in self.tasks]}

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        return cls(tuple(Task(**t) for t in d["tasks"]))

    def subset(self, names: Sequence[str]) -> "TaskSpec":
        by = {t.name: t for t in self.tasks}
        return TaskSpec(tuple(by[n] for n in names))
