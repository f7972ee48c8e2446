"""Synthetic faces written in the real on-disk layouts of BP4D, DISFA, CelebA and Aff-Wild2.

The real datasets are licensed, so every face loader is tested on folders this module draws:
procedural faces (numpy + PIL, nothing downloaded) whose labels change visible geometry:

* AU1 / AU2 raise the inner / outer brow, AU4 lowers and knits the brows (with a furrow),
  AU5 widens the eyes, AU6 raises the cheeks, AU7 narrows the eyes, AU9 wrinkles the nose,
  AU10 raises the upper lip (with nasolabial lines), AU12 / AU15 lift / drop the lip corners,
  AU14 dimples them, AU17 raises the chin, AU20 stretches and AU23 / AU24 tighten / press the
  lips, AU25 parts them, AU26 drops the jaw.
* CelebA attributes: hair colour (or bald, or a hat), glasses, earrings, necklace, necktie,
  makeup, lipstick, moustache, beard, stubble, arched brows, rosy cheeks, high cheekbones, oval
  face, pointy nose, open mouth, smile, wrinkles of age...

Labels come from a latent emotion per frame (a sticky Markov chain per subject) and an
emotion -> AU probability table, so co-occurrence is realistic (AU1 with AU2, AU6 with AU12,
AU1 and AU4 rarely together). Each subject has its own face shape, skin, hair, colours and base
rates (its own emotion mix and AU propensities). DISFA AUs get intensities 0-5; intensity 1 is
drawn faintly and is negative under the ``>= 2`` protocol.

Layouts written (``--format``):

* ``bp4d``: ``img/F001/T1/1000.jpg`` + ME-GraphAU lists ``list/BP4D_{train,test}_img_path_fold{n}.txt``
  and ``_label_fold{n}.txt`` (12 AUs, 3 subject-exclusive folds; default) and/or JAA-Net part lists
  ``list/BP4D_part{n}_path.txt`` + ``_AUoccur.txt`` (``--layout jaanet|all``).
* ``disfa``: ``img/SN001/0.png`` + the same lists with 8 AUs and/or the raw intensity files
  ``ActionUnit_Labels/SN001/SN001_au1.txt`` (lines ``frame,intensity``; ``--layout raw|all``).
* ``celeba``: ``img_align_celeba/000001.jpg``, ``list_attr_celeba.txt`` (-1/1),
  ``list_eval_partition.txt`` (0/1/2; identity-exclusive).
* ``affwild2``: ``cropped_aligned/<video>/00001.jpg`` + ``training_set_annotations.txt`` and
  ``validation_set_annotations.txt`` (``image,valence,arousal,expression,AU1,...,AU26``; -5 / -1
  mark missing labels).

Subjects take real ids (BP4D ``F001``/``M001``..., DISFA ``SN001``...) drawn round-robin from the
three parts of the standard 3-fold partition, so the folds are the standard ones.

CLI::

    python -m monet.data.synthetic --format bp4d --out /tmp/bp4d --subjects 9 --frames 60 --size 64

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> info = write_synthetic("bp4d", os.path.join(d, "bp4d"), subjects=3, frames=4, size=32)
    >>> info["images"], sorted(os.listdir(os.path.join(d, "bp4d")))
    (12, ['img', 'list', 'synthetic.json'])
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from monet.data.affwild2 import AFFWILD2_AUS, HEADER as AFFWILD2_HEADER
from monet.data.au import (BP4D_AUS, BP4D_PARTS, DISFA_ALL_AUS, DISFA_AUS, DISFA_PARTS,
                           TEST_PART_OF_FOLD, part_of)
from monet.data.celeba import CELEBA_ATTRS
from monet.errors import ConfigError

FORMATS = ("bp4d", "disfa", "celeba", "affwild2")

# ---------------------------------------------------------------------------------- label model
# AUs the drawing knows (a superset of every dataset's set).
ALL_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)

EMOTIONS = ("neutral", "happy", "surprise", "sad", "anger", "disgust", "fear", "pain")
_BASE_MIX = np.array([0.34, 0.2, 0.1, 0.08, 0.08, 0.07, 0.06, 0.07])
# P(AU on | emotion); unspecified entries get the background rate.
_AU_GIVEN_EMOTION = {
    "neutral": {25: 0.12},
    "happy": {6: 0.85, 12: 0.95, 10: 0.45, 7: 0.35, 25: 0.6, 26: 0.25, 14: 0.35},
    "surprise": {1: 0.9, 2: 0.88, 5: 0.6, 25: 0.8, 26: 0.65},
    "sad": {4: 0.7, 15: 0.8, 17: 0.7, 1: 0.2, 14: 0.2},
    "anger": {4: 0.9, 7: 0.8, 23: 0.7, 24: 0.7, 17: 0.45, 10: 0.25},
    "disgust": {9: 0.85, 10: 0.8, 4: 0.5, 7: 0.4, 17: 0.5, 15: 0.3},
    "fear": {1: 0.8, 2: 0.55, 4: 0.2, 5: 0.6, 20: 0.8, 25: 0.7, 26: 0.3},
    "pain": {4: 0.8, 6: 0.7, 7: 0.8, 9: 0.45, 10: 0.6, 25: 0.3, 20: 0.3},
}
_BACKGROUND_RATE = 0.03
# Aff-Wild2 expression index (0 Neutral .. 7 Other) and valence/arousal means per emotion.
_EXPR_OF = {"neutral": 0, "anger": 1, "disgust": 2, "fear": 3, "happy": 4, "sad": 5,
            "surprise": 6, "pain": 7}
_VA_OF = {"neutral": (0.0, 0.0), "happy": (0.6, 0.3), "surprise": (0.2, 0.6), "sad": (-0.5, -0.3),
          "anger": (-0.6, 0.5), "disgust": (-0.5, 0.2), "fear": (-0.4, 0.6), "pain": (-0.3, 0.4)}

_P_AU = np.array([[_AU_GIVEN_EMOTION[e].get(a, _BACKGROUND_RATE) for a in ALL_AUS]
                  for e in EMOTIONS])                                   # [E, A]

def subject_ids(fmt: str, n: int) -> list:
    """``n`` real subject ids, round-robin over the three standard parts (so every part gets
    subjects and the folds are the standard ones)."""
    parts = BP4D_PARTS if fmt == "bp4d" else DISFA_PARTS
    cap = sum(len(p) for p in parts)
    if not 3 <= n <= cap:
        raise ConfigError(f"--subjects: {fmt} needs 3 to {cap} subjects (3 folds), got {n}")
    return [parts[i % 3][i // 3] for i in range(n)]


def _subject_profile(rng: np.random.Generator) -> dict:
    """Face geometry, colours and base rates of one synthetic subject."""
    skin = np.array([rng.uniform(120, 235), rng.uniform(85, 190), rng.uniform(60, 160)])
    skin[1] = min(skin[1], skin[0] - 10)
    skin[2] = min(skin[2], skin[1] - 5)
    hair = rng.choice([[30, 25, 20], [90, 60, 30], [200, 170, 90], [140, 140, 140], [120, 50, 20]])
    return dict(
        skin=skin, hair=np.array(hair, float) + rng.normal(0, 10, 3),
        bg=rng.uniform(40, 220, 3), lips=np.array([rng.uniform(120, 190), rng.uniform(50, 90),
                                                   rng.uniform(50, 90)]),
        fw=rng.uniform(0.28, 0.35), fh=rng.uniform(0.36, 0.43), eye_dx=rng.uniform(0.11, 0.145),
        eye_y=rng.uniform(0.40, 0.44), brow_gap=rng.uniform(0.06, 0.075),
        mouth_y=rng.uniform(0.69, 0.735), mouth_w=rng.uniform(0.075, 0.1),
        line=rng.uniform(0.8, 1.2), long_hair=bool(rng.random() < 0.5),
        mix=rng.dirichlet(8.0 * _BASE_MIX),
        au_shift=rng.normal(0.0, 0.5, len(ALL_AUS)),   # per-subject AU propensity (logit shift)
    )


def _emotion_sequence(rng, mix: np.ndarray, n: int, stay: float = 0.6) -> np.ndarray:
    """A sticky Markov chain of emotions (frames of a video persist)."""
    out = np.empty(n, dtype=np.int64)
    cur = rng.choice(len(mix), p=mix)
    for i in range(n):
        if i and rng.random() > stay:
            cur = rng.choice(len(mix), p=mix)
        out[i] = cur
    return out


def sample_aus(rng, emotions: np.ndarray, au_shift: np.ndarray) -> np.ndarray:
    """Binary AU occurrences ``[n, len(ALL_AUS)]`` for a sequence of emotion indices."""
    p = _P_AU[emotions]
    logit = np.log(p / (1 - p)) + au_shift[None, :]
    on = rng.random(p.shape) < 1 / (1 + np.exp(-logit))
    i1, i4 = ALL_AUS.index(1), ALL_AUS.index(4)
    both = on[:, i1] & on[:, i4] & (rng.random(len(on)) < 0.85)   # AU1 and AU4 rarely together
    drop1 = rng.random(len(on)) < 0.5
    on[both & drop1, i1] = False
    on[both & ~drop1, i4] = False
    return on


def sample_intensities(rng, on: np.ndarray) -> np.ndarray:
    """DISFA-style integer intensities 0..5 (0 where the AU is off)."""
    lvl = rng.choice([1, 2, 3, 4, 5], size=on.shape, p=[0.22, 0.3, 0.25, 0.14, 0.09])
    return np.where(on, lvl, 0)


# ---------------------------------------------------------------------------------- drawing
def _bezier(p0, p1, p2, n: int = 12):
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, float) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _col(c, f: float = 1.0):
    return tuple(int(np.clip(v * f, 0, 255)) for v in c)


def draw_face(subject: dict, au: dict, attrs: dict, size, rng) -> Image.Image:
    """Draw one face.

    Args:
        subject: a profile from ``_subject_profile``.
        au: AU number -> geometric strength in [0, 1] (0 = off).
        attrs: CelebA-style attributes (names -> bool); may be empty.
        size: ``(W, H)`` of the output image.
        rng: the frame's random generator (pose jitter, lighting, noise).
    """
    W, H = size
    ss = 3 if max(W, H) < 128 else 2                      # supersampling for smooth edges
    cw, ch = W * ss, H * ss
    s = rng.uniform(0.94, 1.06)
    dx, dy = rng.uniform(-0.03, 0.03, 2)
    a = lambda k: float(au.get(k, 0.0))                    # noqa: E731
    at = lambda k: bool(attrs.get(k, False))               # noqa: E731

    def P(x, y):  # unit face coordinates -> canvas pixels (with the frame's pose jitter)
        return ((0.5 + s * (x - 0.5) + dx) * cw, (0.5 + s * (y - 0.5) + dy) * ch)

    def pts(arr):
        return [P(x, y) for x, y in arr]

    def lw(v):
        return max(1, int(round(v * s * subject["line"] * min(cw, ch))))

    img = Image.new("RGB", (cw, ch), _col(subject["bg"]))
    d = ImageDraw.Draw(img)
    skin = subject["skin"]
    fw = subject["fw"] * (0.92 if at("Oval_Face") else 1.0) * (1.05 if at("Male") else 1.0)
    fh = subject["fh"] * (1.06 if at("Oval_Face") else 1.0)
    jaw = 0.045 * a(26)
    cy = 0.53
    hair = subject["hair"]
    for name, colour in (("Black_Hair", (25, 22, 20)), ("Blond_Hair", (215, 185, 95)),
                         ("Brown_Hair", (105, 65, 35)), ("Gray_Hair", (165, 165, 165))):
        if at(name):
            hair = np.array(colour, float)
    bald = at("Bald")
    # hair behind the face
    if not bald:
        long_hair = subject["long_hair"] if not attrs else not at("Male")
        bottom = cy + (fh * 0.9 if long_hair else 0.0)
        d.ellipse([P(0.5 - fw - 0.05, cy - fh - 0.06), P(0.5 + fw + 0.05, bottom + 0.05)],
                  fill=_col(hair))
    # neck and accessories below the face
    d.rectangle([P(0.42, cy + fh * 0.6), P(0.58, 1.1)], fill=_col(skin, 0.9))
    if at("Wearing_Necktie"):
        d.polygon(pts([(0.47, cy + fh + 0.02), (0.53, cy + fh + 0.02), (0.56, 1.05), (0.44, 1.05)]),
                  fill=(160, 20, 40))
    if at("Wearing_Necklace"):
        for t in np.linspace(-1, 1, 9):
            x, y = 0.5 + 0.07 * t, cy + fh + 0.02 - 0.03 * (1 - t * t)
            r = 0.009
            d.ellipse([P(x - r, y - r + 0.03), P(x + r, y + r + 0.03)], fill=(235, 225, 160))
    # face (AU26 drops the jaw: the face gets longer)
    d.ellipse([P(0.5 - fw, cy - fh), P(0.5 + fw, cy + fh + jaw)], fill=_col(skin))
    if at("Bangs") and not bald:
        d.chord([P(0.5 - fw, cy - fh), P(0.5 + fw, cy - fh + 0.22)], 180, 360, fill=_col(hair))
    if at("Wearing_Hat"):
        d.rectangle([P(0.5 - fw - 0.02, cy - fh - 0.12), P(0.5 + fw + 0.02, cy - fh + 0.07)],
                    fill=(50, 60, 120))
        d.rectangle([P(0.5 - fw - 0.1, cy - fh + 0.05), P(0.5 + fw + 0.1, cy - fh + 0.09)],
                    fill=(40, 45, 100))
    if at("Wearing_Earrings"):
        for sx in (-1, 1):
            x, y, r = 0.5 + sx * (fw + 0.005), subject["eye_y"] + 0.12, 0.014
            d.ellipse([P(x - r, y - r), P(x + r, y + r)], fill=(240, 200, 40))
    if attrs and not at("Young"):
        for k in range(3):
            y = cy - fh + 0.1 + 0.025 * k
            d.line(pts([(0.4, y), (0.6, y)]), fill=_col(skin, 0.7), width=lw(0.006))
    if "No_Beard" in attrs and not attrs["No_Beard"]:
        d.chord([P(0.5 - fw, cy - fh * 0.2), P(0.5 + fw, cy + fh + jaw)], 0, 180,
                fill=_col(hair, 0.8))
    elif at("5_o_Clock_Shadow"):
        for _ in range(60):
            t, r = rng.uniform(0.1, math.pi - 0.1), rng.uniform(0.75, 0.98)
            x, y = 0.5 + fw * r * math.cos(t), cy + 0.05 + (fh - 0.05) * r * math.sin(t)
            d.point(P(x, y), fill=_col(skin, 0.55))

    ex, ey = subject["eye_dx"], subject["eye_y"]
    # cheeks: AU6 raises them (shaded blobs moving up), rosy cheeks / high cheekbones
    for sx in (-1, 1):
        x = 0.5 + sx * (ex + 0.025)
        y = ey + 0.1 - 0.035 * a(6)
        if a(6) > 0:
            r = 0.035 + 0.02 * a(6)
            d.ellipse([P(x - r, y - r * 0.7), P(x + r, y + r * 0.7)], fill=_col(skin, 1 - 0.2 * a(6)))
            d.arc([P(x - r, y - r), P(x + r, y + r)], 200, 340, fill=_col(skin, 0.55), width=lw(0.006))
        if at("Rosy_Cheeks"):
            r = 0.035
            d.ellipse([P(x - r, y - r), P(x + r, y + r)], fill=(225, 110, 120))
        if at("High_Cheekbones"):
            d.ellipse([P(x - 0.04, ey + 0.045), P(x + 0.04, ey + 0.075)], fill=_col(skin, 1.15))
    # eyes: AU5 widens, AU7 (and AU6) narrow
    open_ = np.clip(1 + 0.6 * a(5) - 0.75 * a(7) - 0.3 * a(6), 0.15, 1.7)
    for sx in (-1, 1):
        x = 0.5 + sx * ex
        if at("Heavy_Makeup"):
            d.ellipse([P(x - 0.065, ey - 0.045), P(x + 0.065, ey + 0.01)], fill=(120, 60, 140))
        eh, ew = 0.026 * open_, 0.052
        d.ellipse([P(x - ew, ey - eh), P(x + ew, ey + eh)], fill=(245, 245, 240))
        r = min(0.02, eh)
        d.ellipse([P(x - r, ey - r), P(x + r, ey + r)], fill=(40, 30, 25))
        d.arc([P(x - ew, ey - eh), P(x + ew, ey + eh)], 180, 360, fill=(30, 25, 20), width=lw(0.006))
        if a(7) > 0:  # tightened lower lid
            d.arc([P(x - ew, ey - eh), P(x + ew, ey + eh)], 0, 180, fill=_col(skin, 0.5),
                  width=lw(0.004 + 0.006 * a(7)))
        if at("Eyeglasses"):
            d.ellipse([P(x - 0.075, ey - 0.055), P(x + 0.075, ey + 0.055)], outline=(20, 20, 20),
                      width=lw(0.01))
    if at("Eyeglasses"):
        d.line(pts([(0.5 - ex + 0.075, ey), (0.5 + ex - 0.075, ey)]), fill=(20, 20, 20), width=lw(0.01))
    # brows: AU1 inner up, AU2 outer up, AU4 down and knitted
    by = ey - subject["brow_gap"] + 0.03 * a(4)
    arch = 0.012 + (0.02 if at("Arched_Eyebrows") else 0.0)
    bw = 0.016 if at("Male") else 0.012
    for sx in (-1, 1):
        inner = (0.5 + sx * (ex - 0.05 - 0.015 * a(4)), by - 0.06 * a(1) + 0.015 * a(4))
        outer = (0.5 + sx * (ex + 0.065), by - 0.06 * a(2))
        mid = ((inner[0] + outer[0]) / 2, by - arch - 0.03 * (a(1) + a(2)) / 2)
        d.line(pts(_bezier(inner, mid, outer)), fill=_col(hair, 0.6), width=lw(bw), joint="curve")
    if a(4) > 0:
        for sx in (-1, 1):
            x = 0.5 + sx * 0.012
            d.line(pts([(x, by - 0.01), (x, by + 0.035 * a(4))]), fill=_col(skin, 0.55),
                   width=lw(0.005))
    # nose: AU9 wrinkles the bridge; pointy nose
    ny = subject["mouth_y"] - 0.1
    d.line(pts([(0.5, ey + 0.01), (0.5, ny)]), fill=_col(skin, 0.75), width=lw(0.007))
    if at("Pointy_Nose"):
        d.polygon(pts([(0.47, ny), (0.53, ny), (0.5, ny + 0.035)]), fill=_col(skin, 0.7))
    else:
        d.arc([P(0.46, ny - 0.02), P(0.54, ny + 0.02)], 0, 180, fill=_col(skin, 0.65), width=lw(0.007))
    if a(9) > 0:
        for k in range(3):
            y = ey + 0.03 + 0.014 * k
            d.line(pts([(0.47, y), (0.53, y)]), fill=_col(skin, 1 - 0.6 * a(9)), width=lw(0.007))
    # mouth
    my, mw = subject["mouth_y"], subject["mouth_w"]
    mw = mw * (1 + 0.45 * a(20) + 0.15 * a(14) + 0.12 * a(12) - 0.4 * a(23))
    cyc = my - 0.05 * a(12) + 0.05 * a(15)                          # lip corner height
    up = my - 0.008 - 0.03 * a(10)
    gap = (0.028 * a(25) + 0.055 * a(26)) * (1 - 0.7 * a(24))
    if attrs and at("Mouth_Slightly_Open"):
        gap = max(gap, 0.02)
    low = my + 0.008 + gap - 0.012 * a(17)
    L, R = (0.5 - mw, cyc), (0.5 + mw, cyc)
    upper = _bezier(L, (0.5, 2 * up - cyc + 0.01 * a(12)), R)
    lower = _bezier(R, (0.5, 2 * low - cyc + 0.01 * a(12)), L)
    lips = np.array([190, 30, 50.0]) if at("Wearing_Lipstick") else subject["lips"]
    if a(10) > 0:
        for sx in (-1, 1):
            d.line(pts([(0.5 + sx * 0.035, ny), (0.5 + sx * (mw + 0.01), cyc - 0.005)]),
                   fill=_col(skin, 1 - 0.35 * a(10)), width=lw(0.005))
    if at("Mustache"):
        d.polygon(pts([(0.5 - mw - 0.01, up - 0.005), (0.5, up - 0.03), (0.5 + mw + 0.01, up - 0.005),
                       (0.5, up - 0.012)]), fill=_col(hair, 0.5))
    if gap > 0.01:
        d.polygon(pts(np.concatenate([upper, lower])), fill=(60, 20, 25))
    lip_w = 0.014 * (1 - 0.65 * a(24))
    d.line(pts(upper), fill=_col(lips), width=lw(lip_w), joint="curve")
    d.line(pts(lower), fill=_col(lips, 0.9), width=lw(lip_w * 1.3), joint="curve")
    if a(14) > 0:
        for sx in (-1, 1):
            x, r = 0.5 + sx * (mw + 0.02), 0.012 * (0.5 + a(14))
            d.ellipse([P(x - r, cyc - r), P(x + r, cyc + r)], fill=_col(skin, 0.45))
    if a(17) > 0:
        d.arc([P(0.45, low + 0.025), P(0.55, low + 0.075)], 200, 340, fill=_col(skin, 1 - 0.5 * a(17)),
              width=lw(0.01))
    img = img.resize((W, H), Image.LANCZOS)
    # lighting and sensor noise (attractive faces are cleaner)
    arr = np.asarray(img, dtype=np.float32)
    light = rng.uniform(0.85, 1.15) + np.linspace(-0.08, 0.08, W)[None, :, None] * rng.choice([-1, 1])
    noise = rng.normal(0, 3.0 if at("Attractive") else 6.0, arr.shape)
    arr = np.clip(arr * light + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if attrs and at("Blurry"):
        img = img.filter(ImageFilter.GaussianBlur(1.0))
    return img


def _au_strengths(on_row, intensity_row=None, rng=None) -> dict:
    """AU number -> geometric strength: intensity / 5 scaled into [0.28, 1] for DISFA, a random
    strength in [0.55, 1] for occurrence-only data."""
    out = {}
    for j, au in enumerate(ALL_AUS):
        if intensity_row is not None:
            if intensity_row[j] > 0:
                out[au] = 0.1 + 0.18 * float(intensity_row[j])
        elif on_row[j]:
            out[au] = float(rng.uniform(0.55, 1.0))
    return out


# ---------------------------------------------------------------------------------- writers
def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        img.save(path, optimize=False, compress_level=1)
    else:
        img.save(path, quality=92)


def _write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


def _au_dataset(fmt: str, out: Path, subjects: int, frames: int, size: int, seed: int,
                layout: str) -> dict:
    """BP4D or DISFA: images + list files (+ raw intensity files for DISFA)."""
    rng = np.random.default_rng(seed)
    ids = subject_ids(fmt, subjects)
    parts = BP4D_PARTS if fmt == "bp4d" else DISFA_PARTS
    aus = BP4D_AUS if fmt == "bp4d" else DISFA_AUS
    cols = [ALL_AUS.index(a) for a in aus]
    per_part = {1: ([], []), 2: ([], []), 3: ([], [])}       # part -> (paths, label rows)
    n_img = 0
    for sid in ids:
        prof = _subject_profile(rng)
        emo = _emotion_sequence(rng, prof["mix"], frames)
        on = sample_aus(rng, emo, prof["au_shift"])
        paths, rows = per_part[part_of(sid, parts)]
        if fmt == "bp4d":
            n_tasks = max(1, min(8, frames // 8))
            task_of = np.minimum(np.arange(frames) * n_tasks // max(frames, 1), n_tasks - 1)
            for i in range(frames):
                task = f"T{task_of[i] + 1}"
                rel = f"{sid}/{task}/{1000 + i}.jpg"
                img = draw_face(prof, _au_strengths(on[i], rng=rng), {}, (size, size), rng)
                _save(img, out / "img" / rel)
                paths.append(rel)
                rows.append(on[i, cols].astype(int))
        else:
            inten = sample_intensities(rng, on)
            for i in range(frames):
                rel = f"{sid}/{i}.png"
                img = draw_face(prof, _au_strengths(on[i], inten[i]), {}, (size, size), rng)
                _save(img, out / "img" / rel)
                paths.append(rel)
                rows.append((inten[i, cols] >= 2).astype(int))
            if layout in ("raw", "all"):
                for au in DISFA_ALL_AUS:
                    j = ALL_AUS.index(au)
                    _write_lines(out / "ActionUnit_Labels" / sid / f"{sid}_au{au}.txt",
                                 [f"{i + 1},{int(inten[i, j])}" for i in range(frames)])
        n_img += frames
    DS = fmt.upper()
    lst = out / "list"

    def label_lines(rows):
        return [" ".join(str(int(v)) for v in r) for r in rows]

    if layout in ("graphau", "all"):
        for fold, test_part in TEST_PART_OF_FOLD.items():
            train_parts = [p for p in (1, 2, 3) if p != test_part]
            _write_lines(lst / f"{DS}_test_img_path_fold{fold}.txt", per_part[test_part][0])
            _write_lines(lst / f"{DS}_test_label_fold{fold}.txt", label_lines(per_part[test_part][1]))
            _write_lines(lst / f"{DS}_train_img_path_fold{fold}.txt",
                         [p for q in train_parts for p in per_part[q][0]])
            _write_lines(lst / f"{DS}_train_label_fold{fold}.txt",
                         label_lines([r for q in train_parts for r in per_part[q][1]]))
    if layout in ("jaanet", "all"):
        for p in (1, 2, 3):
            _write_lines(lst / f"{DS}_part{p}_path.txt", per_part[p][0])
            _write_lines(lst / f"{DS}_part{p}_AUoccur.txt", label_lines(per_part[p][1]))
    return {"images": n_img, "subjects": ids, "aus": list(aus)}


def _celeba_identity(rng) -> dict:
    male = rng.random() < 0.42
    young = rng.random() < 0.75
    a = {"Male": male, "Young": young}
    a["Bald"] = rng.random() < (0.3 if male and not young else 0.01)
    hair = None
    if not a["Bald"]:
        if not young and rng.random() < 0.5:
            hair = "Gray_Hair"
        else:
            hair = rng.choice(["Black_Hair", "Brown_Hair", "Blond_Hair", None],
                              p=[0.32, 0.3, 0.12 if male else 0.28, 0.26 if male else 0.1])
    for h in ("Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair"):
        a[h] = hair == h
    a["Oval_Face"] = rng.random() < 0.3
    a["Pointy_Nose"] = rng.random() < 0.28
    a["Arched_Eyebrows"] = rng.random() < (0.08 if male else 0.45)
    a["High_Cheekbones"] = rng.random() < 0.45
    a["Mustache"] = male and rng.random() < 0.2
    a["No_Beard"] = not (male and rng.random() < (0.8 if a["Mustache"] else 0.3))
    a["Bangs"] = rng.random() < 0.15
    return a


def _celeba_image_attrs(rng, ident: dict) -> dict:
    a = dict(ident)
    male, young = a["Male"], a["Young"]
    a["Heavy_Makeup"] = (not male) and rng.random() < 0.65
    a["Wearing_Lipstick"] = rng.random() < (0.9 if a["Heavy_Makeup"] else (0.25 if not male else 0.01))
    a["Rosy_Cheeks"] = rng.random() < (0.02 if male else (0.2 if a["Heavy_Makeup"] else 0.05))
    a["5_o_Clock_Shadow"] = male and a["No_Beard"] and rng.random() < 0.35
    a["Eyeglasses"] = rng.random() < (0.12 if not young else 0.05)
    a["Wearing_Earrings"] = rng.random() < (0.03 if male else 0.35)
    a["Wearing_Hat"] = rng.random() < 0.06
    a["Wearing_Necklace"] = (not male) and rng.random() < 0.25
    a["Wearing_Necktie"] = male and rng.random() < 0.2
    a["Smiling"] = rng.random() < 0.48
    a["Mouth_Slightly_Open"] = rng.random() < (0.7 if a["Smiling"] else 0.3)
    a["Blurry"] = rng.random() < 0.05
    score = 1.2 * young + 0.8 * a["Heavy_Makeup"] - 0.8 * a["Eyeglasses"] - 0.6 * a["Blurry"] - 0.8
    a["Attractive"] = rng.random() < 1 / (1 + math.exp(-2 * score))
    for name in CELEBA_ATTRS:
        a.setdefault(name, bool(rng.random() < 0.15))
    return a


def _celeba(out: Path, subjects: int, frames: int, size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    if subjects < 3:
        raise ConfigError(f"--subjects: celeba needs at least 3 identities (train/val/test), got {subjects}")
    W, H = size, int(round(size * 218 / 178))
    # identity-exclusive partition: 80% / 10% / 10% of identities (at least one each)
    n_val = max(1, subjects // 10)
    n_test = max(1, subjects // 10)
    part_of_id = [0] * (subjects - n_val - n_test) + [1] * n_val + [2] * n_test
    attr_lines, part_lines, k = [], [], 0
    for ident in range(subjects):
        prof = _subject_profile(rng)
        ida = _celeba_identity(rng)
        for _ in range(frames):
            k += 1
            name = f"{k:06d}.jpg"
            a = _celeba_image_attrs(rng, ida)
            au = {}
            if a["Smiling"]:
                au.update({12: rng.uniform(0.6, 1.0), 6: rng.uniform(0.3, 0.8)})
            if a["Mouth_Slightly_Open"]:
                au[25] = rng.uniform(0.4, 0.8)
            img = draw_face(prof, au, a, (W, H), rng)
            _save(img, out / "img_align_celeba" / name)
            attr_lines.append(name + " " + " ".join(" 1" if a[c] else "-1" for c in CELEBA_ATTRS))
            part_lines.append(f"{name} {part_of_id[ident]}")
    _write_lines(out / "list_attr_celeba.txt", [str(k), " ".join(CELEBA_ATTRS)] + attr_lines)
    _write_lines(out / "list_eval_partition.txt", part_lines)
    return {"images": k, "identities": subjects}


def _affwild2(out: Path, subjects: int, frames: int, size: int, seed: int,
              missing: float = 0.15) -> dict:
    rng = np.random.default_rng(seed)
    if subjects < 3:
        raise ConfigError(f"--subjects: affwild2 needs at least 3 videos, got {subjects}")
    n_valid = max(1, int(round(subjects * 0.3)))
    cols = [ALL_AUS.index(a) for a in AFFWILD2_AUS]
    train, valid, n = [], [], 0
    for v in range(subjects):
        video = f"{v + 1}-{rng.integers(10, 99)}-{rng.choice([640, 1280])}x{rng.choice([360, 720])}"
        if v % 5 == 4:
            video += "_left"
        prof = _subject_profile(rng)
        emo = _emotion_sequence(rng, prof["mix"], frames, stay=0.8)
        on = sample_aus(rng, emo, prof["au_shift"])
        # missing annotations come in runs of frames, task by task
        miss = {t: np.repeat(rng.random(-(-frames // 10)) < missing, 10)[:frames]
                for t in ("va", "expr", "au")}
        rows = train if v < subjects - n_valid else valid
        for i in range(frames):
            rel = f"{video}/{i + 1:05d}.jpg"
            img = draw_face(prof, _au_strengths(on[i], rng=rng), {}, (size, size), rng)
            _save(img, out / "cropped_aligned" / rel)
            e = EMOTIONS[emo[i]]
            va = np.clip(np.array(_VA_OF[e]) + rng.normal(0, 0.12, 2), -1, 1)
            vs = "-5,-5" if miss["va"][i] else f"{va[0]:.3f},{va[1]:.3f}"
            ex = "-1" if miss["expr"][i] else str(_EXPR_OF[e])
            au = ",".join("-1" if miss["au"][i] else str(int(on[i, j])) for j in cols)
            rows.append(f"{rel},{vs},{ex},{au}")
            n += 1
    _write_lines(out / "training_set_annotations.txt", [AFFWILD2_HEADER] + train)
    _write_lines(out / "validation_set_annotations.txt", [AFFWILD2_HEADER] + valid)
    return {"images": n, "videos": subjects}


MAX_FRAMES, MAX_SUBJECTS, MAX_IMAGES = 100_000, 100_000, 2_000_000
DEFAULTS = {"bp4d": dict(subjects=9, frames=60), "disfa": dict(subjects=9, frames=60),
            "celeba": dict(subjects=40, frames=10), "affwild2": dict(subjects=10, frames=60)}


def write_synthetic(fmt: str, out, subjects=None, frames=None, size: int = 64, seed: int = 0,
                    layout: str = "graphau") -> dict:
    """Draw a synthetic dataset in the on-disk layout of ``fmt`` into the new folder ``out``.

    The folder is built under a temporary name next to ``out`` and renamed when complete, so an
    interrupted run leaves nothing half-written. Returns a summary (also written to
    ``out/synthetic.json``).

    Args:
        fmt: ``bp4d``, ``disfa``, ``celeba`` or ``affwild2``.
        out: folder to create (must not exist or be empty).
        subjects: subjects (videos, identities); frames: images per subject.
        size: image width in pixels (CelebA images are 178:218, the others square).
        seed: random seed (same seed, same bytes).
        layout: AU datasets: ``graphau`` (ME-GraphAU lists), ``jaanet`` (part lists), ``raw``
            (DISFA intensity files; lists are then not written) or ``all``.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {FORMATS}, got {fmt!r}")
    if layout not in ("graphau", "jaanet", "raw", "all"):
        raise ConfigError(f"--layout: expected graphau, jaanet, raw or all, got {layout!r}")
    if layout == "raw" and fmt != "disfa":
        raise ConfigError("--layout raw: only DISFA has raw intensity files")
    from monet.cli import check_output_dir

    subjects = int(DEFAULTS[fmt]["subjects"] if subjects is None else subjects)
    frames = int(DEFAULTS[fmt]["frames"] if frames is None else frames)
    if not 1 <= frames <= MAX_FRAMES:
        raise ConfigError(f"--frames: expected 1 to {MAX_FRAMES} images per subject, got {frames}")
    if fmt in ("bp4d", "disfa"):
        subject_ids(fmt, subjects)                  # 3 .. the dataset's subject count
    elif not 3 <= subjects <= MAX_SUBJECTS:
        raise ConfigError(f"--subjects: {fmt} needs 3 to {MAX_SUBJECTS} "
                          f"{'identities' if fmt == 'celeba' else 'videos'}, got {subjects}")
    if subjects * frames > MAX_IMAGES:
        raise ConfigError(f"--subjects x --frames: {subjects * frames} images; at most "
                          f"{MAX_IMAGES} (a synthetic set for tests, not a real dataset)")
    if not 16 <= int(size) <= 1024:
        raise ConfigError(f"--size: expected 16 to 1024 pixels, got {size}")
    if not 0 <= int(seed) <= 2 ** 32 - 1:
        raise ConfigError(f"--seed: expected 0 to {2 ** 32 - 1}, got {seed}")
    check_output_dir(out, overwrite=False, flag="--out", marker=None, overwrite_flag=None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt in ("bp4d", "disfa"):
            info = _au_dataset(fmt, tmp, subjects, frames, int(size), seed, layout)
        elif fmt == "celeba":
            info = _celeba(tmp, subjects, frames, int(size), seed)
        else:
            info = _affwild2(tmp, subjects, frames, int(size), seed)
        info = {"format": fmt, "layout": layout if fmt in ("bp4d", "disfa") else fmt,
                "size": int(size), "seed": int(seed), "frames": frames, **info}
        (tmp / "synthetic.json").write_text(json.dumps(info, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def main(argv=None) -> int:
    from monet.cli import ArgumentParser, parse_int, run_main

    p = ArgumentParser(prog="python -m monet.data.synthetic",
                       description="Draw synthetic faces in a real dataset layout.")
    p.add_argument("--format", required=True, choices=FORMATS, help="dataset layout to write")
    p.add_argument("--out", required=True, help="folder to create (new or empty)")
    p.add_argument("--subjects", type=parse_int, default=None,
                   help="subjects / videos / identities (default: bp4d, disfa 9; celeba 40; "
                        "affwild2 10)")
    p.add_argument("--frames", type=parse_int, default=None,
                   help="images per subject (default: 60; celeba 10)")
    p.add_argument("--size", type=parse_int, default=64, help="image width in pixels, 16 to 1024")
    p.add_argument("--seed", type=parse_int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--layout", default="graphau", choices=("graphau", "jaanet", "raw", "all"),
                   help="bp4d/disfa: which list files to write")
    a = p.parse_args(argv)

    def run(_):
        info = write_synthetic(a.format, a.out, a.subjects, a.frames, a.size, a.seed, a.layout)
        print(f"wrote {a.out}: {info['images']} images ({a.format}, {info['layout']} layout, "
              f"{a.size} px, seed {a.seed})")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
