"""timm image backbones for the shared encoder f_W, and weights from a local file: any timm model
by name (``inception_v3`` as in the MONET BP4D setup, ``resnet50``, ``efficientnet_b0``, ...).
This module imports nothing from ``monet.models``; the monet encoders (``mlp``, ``tiny_cnn``) live
in :mod:`monet.models.encoders`, which falls back to this module for every other name.

timm backbones are always built with ``pretrained=False`` and ``num_classes=0`` (pooled features);
nothing is ever downloaded. Pretrained weights come from a local file the user names
(``pretrained=path``: a state dict or a timm / DDP training checkpoint, ``.pth`` or
``.safetensors``).

Example:
    >>> import torch
    >>> enc, dim = create_backbone("resnet18", (3, 32, 32))
    >>> enc(torch.zeros(2, 3, 32, 32)).shape, dim
    (torch.Size([2, 512]), 512)
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import torch
from torch import nn

from monet.errors import ConfigError

_logger = logging.getLogger(__name__)

# timm's own constants (timm.data.IMAGENET_DEFAULT_MEAN / _STD), written out so that importing this
# module does not import timm before the hub is switched off (see _timm).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IGNORED = ("layers", "width")     # MLP-encoder settings create_model passes to every encoder


def _timm():
    """Import timm with the Hugging Face hub switched off (monet never downloads weights)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import timm
    except ImportError as e:  # pragma: no cover - timm is a declared dependency
        raise ConfigError("backbone: timm backbones need timm (pip install timm)") from e
    return timm


def image_shape(name: str, input_shape: Sequence[int]) -> tuple:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ConfigError(f"backbone: {name!r} needs image input (C, H, W), got input shape {shape}; "
                          "use backbone 'mlp' for vector input")
    return shape


# ---------------------------------------------------------------------------------------------
# weights from a local file
# ---------------------------------------------------------------------------------------------

def _short(keys, n: int = 5) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _weights_file(path, name: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"pretrained: weights file {path!r} for backbone {name!r} not found "
                          "(monet never downloads weights; give a local .pth/.safetensors file)")
    return path


def load_weights(module: nn.Module, path: str, name: str = "backbone") -> dict:
    """Load a local weights file into ``module`` (``strict=False``) and say what did not match.

    The file may be a plain state dict or a checkpoint dict holding one under ``state_dict``,
    ``model``, ``state_dict_ema`` or ``model_ema``; ``module.`` / ``_orig_mod.`` prefixes are
    removed. It is read with ``torch.load(weights_only=True)`` (or safetensors). Keys the module
    lacks (e.g. the classifier of an ImageNet checkpoint) and keys the file lacks are logged as a
    warning; a file sharing no key with the module, or with a shape mismatch, is a ``ConfigError``.

    Args:
        module: the module to fill.
        path: weights file.
        name: backbone name for messages.

    Returns:
        ``{"missing": [...], "unexpected": [...], "loaded": n}``.

    Example:
        >>> import tempfile, torch
        >>> m = torch.nn.Linear(2, 2)
        >>> f = tempfile.NamedTemporaryFile(suffix=".pth", delete=False).name
        >>> torch.save(m.state_dict(), f)
        >>> load_weights(torch.nn.Linear(2, 2), f)["loaded"]
        2
    """
    path = _weights_file(path, name)
    from timm.models import load_state_dict  # handles checkpoint dicts, prefixes, safetensors
    try:
        state = load_state_dict(path, use_ema=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        raise ConfigError(f"pretrained: cannot read weights file {path!r}: {e}") from e
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"pretrained: {path!r} holds no state dict of tensors")
    own = module.state_dict()
    common = [k for k in state if k in own]
    if not common:
        raise ConfigError(f"pretrained: {path!r} shares no parameter name with backbone {name!r} "
                          f"(file keys: {_short(state)}; backbone keys: {_short(own)})")
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in common
           if state[k].shape != own[k].shape]
    if bad:
        raise ConfigError(f"pretrained: {path!r} does not fit backbone {name!r}: shape mismatch "
                          f"(file vs backbone) for {_short(bad, 3)}")
    res = module.load_state_dict(state, strict=False)
    report = {"missing": list(res.missing_keys), "unexpected": list(res.unexpected_keys),
              "loaded": len(common)}
    if report["missing"]:
        _logger.warning("pretrained %s: %d backbone tensors not in %s, left at their initial values: %s",
                        name, len(report["missing"]), path, _short(report["missing"]))
    if report["unexpected"]:
        _logger.warning("pretrained %s: %d tensors of %s ignored (not in the backbone): %s",
                        name, len(report["unexpected"]), path, _short(report["unexpected"]))
    return report


# ---------------------------------------------------------------------------------------------
# timm backbones
# ---------------------------------------------------------------------------------------------

def _unknown(name: str, own: Sequence[str] = ()) -> ConfigError:
    stem = name.split(".")[0].split("_")[0][:12]
    return ConfigError(f"backbone: unknown backbone {name!r}: not a monet encoder "
                       f"({', '.join(sorted(own))}) nor a timm model; list timm names with "
                       f"timm.list_models('*{stem}*') (e.g. 'inception_v3', 'resnet50', "
                       "'efficientnet_b0')")


def create_backbone(name: str, input_shape, pretrained: Optional[str] = None,
                    known: Sequence[str] = (), **kw):
    """Build timm backbone ``name`` and return ``(module, out_dim)``; the module maps
    ``[B, C, H, W]`` to pooled features ``[B, out_dim]``.

    ``name`` is any timm model name, built with
    ``pretrained=False, num_classes=0`` and ``in_chans=C`` (models with a fixed input size, such as
    ViTs, also get ``img_size=(H, W)``). The backbone runs once on a zero image of
    ``input_shape`` so that a size the model cannot take fails here, with its name.

    Args:
        name: encoder or timm model name (a pretrained tag like ``.tv_in1k`` is allowed).
        input_shape: ``(C, H, W)``.
        pretrained: local weights file (see :func:`load_weights`); never downloaded.
        known: the monet encoder names, listed in the error for an unknown name.
        **kw: extra timm ``create_model`` keywords (``drop_rate``, ...); ``layers`` and ``width``
            (MLP-encoder settings) are ignored for timm models.

    Returns:
        ``(module, out_dim)``.

    Raises:
        ConfigError: unknown name, non-image input, missing or unfitting weights file, or an
            input size the model cannot take.

    Example:
        >>> enc, dim = create_backbone("resnet18", (3, 64, 64))
        >>> dim
        512
    """
    timm = _timm()
    if not timm.is_model(name):
        raise _unknown(name, known)
    shape = image_shape(name, input_shape)
    if pretrained:
        _weights_file(pretrained, name)
    kw = {k: v for k, v in kw.items() if k not in _IGNORED}
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kw.setdefault("img_size", shape[1:])
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=shape[0], **kw)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"backbone: timm cannot build {name!r} for input {shape} "
                          f"with {kw or 'no extra options'}: {e}") from e
    if pretrained:
        load_weights(model, pretrained, name=name)
    out_dim = _probe(model, name, shape)
    return model, out_dim


def _probe(model: nn.Module, name: str, shape: tuple) -> int:
    """Feature size of ``model`` from one forward pass of a zero image (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
    except RuntimeError as e:
        default = _default_size(name)
        raise ConfigError(f"backbone: {name!r} cannot take input of shape {shape}"
                          f"{f' (its default input size is {default})' if default else ''}: "
                          f"{str(e).splitlines()[0]}") from e
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise ConfigError(f"backbone: {name!r} gives features of shape {tuple(out.shape[1:])}, "
                          "expected pooled [B, D]")
    return int(out.shape[1])


def _default_size(name: str):
    cfg = _timm().models.get_pretrained_cfg(name)
    return None if cfg is None else tuple(cfg.input_size)


def backbone_data_config(name: str, known: Sequence[str] = ()) -> dict:
    """Input size and normalisation a timm backbone expects, from timm's pretrained config (no
    weights needed, nothing built).

    Args:
        name: a timm model name.
        known: the monet encoder names, listed in the error for an unknown name.

    Returns:
        ``{"input_size": (C, H, W), "mean": (...), "std": (...), "interpolation": str,
        "crop_pct": float}``.

    Example:
        >>> backbone_data_config("inception_v3")["input_size"]
        (3, 299, 299)
    """
    timm = _timm()
    if not timm.is_model(name):
        raise _unknown(name, known)
    from timm.data import resolve_data_config
    cfg = timm.models.get_pretrained_cfg(name)
    dc = resolve_data_config(args={}, pretrained_cfg=cfg.to_dict() if cfg is not None else None,
                             model=None if cfg is not None else nn.Module())
    return {"input_size": tuple(dc["input_size"]), "mean": tuple(dc["mean"]),
            "std": tuple(dc["std"]), "interpolation": dc["interpolation"],
            "crop_pct": float(dc.get("crop_pct", 1.0))}
