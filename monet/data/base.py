"""Containers shared by every dataset: a split of examples and the bundle of three splits.

A split is a ``torch.utils.data.Dataset`` whose items are ``(x, y, mask)``:
``x`` the input (a feature vector or an image tensor), ``y`` a float vector of the T labels
(0/1 for binary, class index for multiclass, value for regression) and ``mask`` a float vector
with 1 where the label is present.

Example:
    >>> import torch
    >>> s = TensorSplit(torch.zeros(4, 2), torch.ones(4, 3))
    >>> len(s), s[0][0].shape, s.mask.sum().item()
    (4, torch.Size([2]), 12.0)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from monet.tasks import TaskSpec


class TensorSplit(Dataset):
    """A split held in memory as tensors (tabular data, small caches).

    Args:
        x: ``[N, ...]`` inputs.
        y: ``[N, T]`` labels.
        mask: ``[N, T]`` presence mask (all ones when omitted).
        subjects: optional list of N subject ids (for subject-exclusive protocols).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 subjects: Optional[list] = None):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x = x.float() if not x.dtype == torch.uint8 else x
        self.y = y.float()
        self.mask = torch.ones_like(self.y) if mask is None else mask.float()
        self.subjects = subjects

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], self.mask[i]

    def batch(self, idx: torch.Tensor):
        """Rows ``idx`` at once (the fast path used by the training loop)."""
        return self.x[idx], self.y[idx], self.mask[idx]


@dataclass
class DataBundle:
    """Train/val/test splits plus what models need to know about them.

    Attributes:
        name: dataset name (``toy``, ``tabular``, ``bp4d`` ...).
        spec: the :class:`TaskSpec`.
        train, val, test: the splits.
        input_shape: shape of one input (``(2,)`` for toy, ``(3, H, W)`` for images).
        meta: free-form provenance (reading, fold, files) written into run folders.
        prepare: optional ``prepare(x, train: bool, generator) -> x`` applied to every batch on its
            device before the model (e.g. uint8 -> normalised float, augmentation when train).
    """

    name: str
    spec: TaskSpec
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: tuple
    meta: dict = field(default_factory=dict)
    prepare: Optional[Callable] = None

    def label_matrix(self, split: str = "train") -> tuple:
        """``(y, mask)`` of a whole split as tensors (for priors and weights)."""
        s = getattr(self, split)
        if hasattr(s, "y") and hasattr(s, "mask"):
            return s.y, s.mask
        ys, ms = zip(*[(s[i][1], s[i][2]) for i in range(len(s))])
        return torch.stack(ys), torch.stack(ms)
