"""Batch preparation for face images, on tensors and on the batch's device.

:class:`FacePrepare` is the ``prepare(x, train, generator)`` of face bundles: uint8 images
``[B, 3, S, S]`` become normalised floats and, when training with augmentation on, are flipped,
rotated and zoomed with one ``affine_grid`` / ``grid_sample`` call. Randomness comes from the
given ``torch.Generator`` (drawn on the CPU, so runs are reproducible on any device).

Example:
    >>> import torch
    >>> prep = FacePrepare((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), augment=True)
    >>> x = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    >>> y = prep(x, True, torch.Generator().manual_seed(0))
    >>> y.shape, y.dtype, float(y.max())
    (torch.Size([2, 3, 8, 8]), torch.float32, 1.0)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def random_affine(n: int, generator: Optional[torch.Generator], flip: bool = True,
                  rotate: float = 10.0, zoom: float = 0.1, shift: float = 0.0) -> torch.Tensor:
    """``[n, 2, 3]`` affine matrices (output -> input sampling coordinates) for ``affine_grid``:
    a horizontal flip with probability 1/2, a rotation uniform in ``±rotate`` degrees, a zoom
    uniform in ``1 ± zoom`` (> 1 zooms in) and a shift uniform in ``±shift`` of the half-size."""
    u = torch.rand(n, 5, generator=generator)
    ang = (u[:, 0] * 2 - 1) * math.radians(rotate)
    scale = 1 + (u[:, 1] * 2 - 1) * zoom
    sign = torch.where(u[:, 2] < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sign, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * sign, cos
    theta[:, :, 2] = (u[:, 3:5] * 2 - 1) * shift
    return theta


def augment_batch(x: torch.Tensor, generator: Optional[torch.Generator] = None, flip: bool = True,
                  rotate: float = 10.0, zoom: float = 0.1, shift: float = 0.0) -> torch.Tensor:
    """Flip / rotate / zoom a float batch ``[B, C, H, W]`` (border padding, bilinear)."""
    theta = random_affine(len(x), generator, flip, rotate, zoom, shift).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FacePrepare:
    """``prepare(x, train, generator)``: uint8 -> normalised float -> (augment when training).

    Args:
        mean, std: per-channel normalisation (the backbone's; ImageNet by default).
        augment: apply :func:`augment_batch` to training batches.
        flip, rotate, zoom, shift: augmentation settings (rotation in degrees; the authors used
            rotation/zoom of about 0.1).
    """

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), augment: bool = False,
                 flip: bool = True, rotate: float = 10.0, zoom: float = 0.1, shift: float = 0.0):
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.augment, self.flip, self.rotate, self.zoom, self.shift = augment, flip, rotate, zoom, shift

    def __call__(self, x: torch.Tensor, train: bool = False,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        # uint8 -> (x / 255 - mean) / std as one multiply and one subtract, in place; the affine
        # per-channel map commutes with bilinear resampling (border padding), so augmenting after
        # normalising gives the same result as before.
        raw = x.dtype == torch.uint8
        x = x.to(torch.float32) if raw else x.float().clone()
        c = x.shape[1]
        scale = torch.tensor([1.0 / ((255.0 if raw else 1.0) * s) for s in self.std], device=x.device)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)], device=x.device)
        x.mul_(scale.view(1, c, 1, 1)).sub_(shift.view(1, c, 1, 1))
        if train and self.augment:
            x = augment_batch(x, generator, self.flip, self.rotate, self.zoom, self.shift)
        return x

    def __repr__(self) -> str:
        return (f"FacePrepare(mean={self.mean}, std={self.std}, augment={self.augment}, "
                f"flip={self.flip}, rotate={self.rotate}, zoom={self.zoom})")
