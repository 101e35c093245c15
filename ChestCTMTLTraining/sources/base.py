"""What every source adapter shares: the :class:`SampleSet`, split rules, label indices.

Each adapter returns a :class:`SampleSet` holding model-ready slices (``input_size`` square,
unit intensity, produced by the same :mod:`ChestCTMTLLib.representation` functions that
inference uses) plus per-task label presence, so a batch can mix samples that only have a
class, only a mask, or both:

* ``classes[n] = -1``: no class label;
* ``mask_present[n, t]``: lesion type ``t`` is annotated on this slice (an all-zero mask then
  means "known lesion-free"); otherwise the slice adds no segmentation/detection loss for ``t``;
* ``seg_weight[n]``: pseudo-labels weigh less than doctors' labels;
* infection-type channels (``model.INFECTION_TYPES``) may follow the lesion channels: filled by
  :mod:`.covid_semiseg_types`, empty in every other set, and never ``mask_present`` (see that
  module for why).

Splits are decided per source by a ``holdout`` rule in the config (whole source, none, the
last fraction of the naturally sorted files per class folder, which keeps neighbouring slice
numbers - often the same patient - on one side, or named items). This module imports nothing
of the training package, so every adapter, the pack and the trainer can depend on it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ChestCTMTLLib.results import CLASS_NAMES

log = logging.getLogger("ChestCTMTLTraining")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: ``meta["kind"]`` of slices whose mask file is a label map of infection types
#: (:mod:`.covid_semiseg_types`): 0 background, k = the k-th of ``model.INFECTION_TYPES``
TYPES_KIND = "multiclass_types"


@dataclass
class SampleSet:
    name: str
    split: str
    images: np.ndarray  # (N, S, S) float16 unit
    classes: np.ndarray  # (N,) int64, -1 = none
    masks: np.ndarray  # (N, T, S, S) uint8 0..255 (soft allowed)
    mask_present: np.ndarray  # (N, T) bool
    seg_weight: np.ndarray  # (N,) float32
    ids: List[str]
    kind: str = "slice"  # "slice" | "patch" (MSD: assembled into mosaics)
    meta: List[dict] = field(default_factory=list)  # per sample: paths, scan, k, geometry
    skipped: List[str] = field(default_factory=list)
    volumes: List[dict] = field(default_factory=list)  # per scan: nodules in mm for FROC

    def __len__(self) -> int:
        return len(self.ids)

    def summary(self) -> str:
        cls = {CLASS_NAMES[c]: int((self.classes == c).sum()) for c in range(len(CLASS_NAMES))}
        return "%s[%s]: %d samples, classes %s, masks %s, skipped %d" % (
            self.name, self.split, len(self), cls, self.mask_present.sum(axis=0).tolist(), len(self.skipped))


def source_folder(root: Path, spec: dict, default: str, what: str) -> Path:
    """``root / spec["path"]`` (else ``default``); FileNotFoundError naming ``what`` if absent."""
    folder = root / spec.get("path", default)
    if not folder.is_dir():
        raise FileNotFoundError("%s folder %s does not exist" % (what, folder))
    return folder


def natural_key(path) -> list:
    s = Path(path).name
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def split_items(items: Sequence, holdout: Optional[dict], split: str) -> list:
    """Apply a holdout rule to naturally sorted ``items``; returns those of ``split``."""
    items = sorted(items, key=natural_key)
    mode = (holdout or {}).get("mode", "none")
    if mode == "none":
        val = []
    elif mode == "all":
        val = list(items)
    elif mode == "last_fraction":
        n_val = int(round(len(items) * float(holdout.get("fraction", 0.2))))
        val = items[len(items) - n_val:] if n_val else []
    elif mode == "names":
        names = set(holdout.get("names", []))
        val = [p for p in items if Path(p).name in names or Path(p).stem in names]
    else:
        raise ValueError("unknown holdout mode %r" % mode)
    vset = set(map(str, val))
    if split == "val":
        return val
    if split == "train":
        return [p for p in items if str(p) not in vset]
    if split == "all":
        return items
    raise ValueError("split must be train, val or all")


def empty_set(name, split, rep, n_types):
    s = rep.input_size
    return SampleSet(name, split, np.zeros((0, s, s), np.float16), np.zeros(0, np.int64),
                     np.zeros((0, n_types, s, s), np.uint8), np.zeros((0, n_types), bool),
                     np.zeros(0, np.float32), [])


def build_set(name, split, rep, rows, n_types, kind="slice", skipped=None, volumes=None) -> SampleSet:
    if not rows:
        out = empty_set(name, split, rep, n_types)
        out.skipped = skipped or []
        return out
    return SampleSet(
        name, split,
        np.stack([r["image"] for r in rows]).astype(np.float16),
        np.array([r["cls"] for r in rows], np.int64),
        np.stack([r["mask"] for r in rows]).astype(np.uint8),
        np.stack([r["present"] for r in rows]).astype(bool),
        np.array([r.get("weight", 1.0) for r in rows], np.float32),
        [r["id"] for r in rows], kind, [r.get("meta", {}) for r in rows], skipped or [], volumes or [])


def class_index(name: Optional[str]) -> int:
    if name is None or name == "" or str(name).lower() in ("none", "null", "drop"):
        return -1
    if name not in CLASS_NAMES:
        raise ValueError("unknown class %r (known: %s)" % (name, CLASS_NAMES))
    return CLASS_NAMES.index(name)


def type_index(name: str, lesion_types: Sequence[str]) -> int:
    if name not in lesion_types:
        raise ValueError("unknown lesion type %r (known: %s)" % (name, list(lesion_types)))
    return list(lesion_types).index(name)



def mask_to_model(mask_unit: np.ndarray, geom) -> np.ndarray:
    """Soft [0,1] mask at image size -> uint8 0..255 at model size (bilinear, like the image)."""
    m = geom.to_model(torch.from_numpy(mask_unit.astype(np.float32)))[0, 0].numpy()
    return np.clip(np.rint(m * 255.0), 0, 255).astype(np.uint8)



def json_default(o):
    """``json.dump(default=...)`` for numpy scalars and arrays in metrics, metas and packs."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError("not JSON serialisable: %r" % type(o))


def read_gt_original(meta: dict) -> np.ndarray:
    """A slice's ground-truth infection mask at its original resolution (from a pack or the file)."""
    if meta.get("gt_array") is not None:
        return np.asarray(meta["gt_array"]).astype(bool)
    if meta.get("kind") == TYPES_KIND:
        return read_label_map(meta["mask"]) > 0
    from PIL import Image

    with Image.open(meta["mask"]) as im:
        gt = np.asarray(im.convert("L"))
    return gt > 0 if meta.get("kind") == "multiclass" else gt >= 128


def read_gt_labels(meta: dict) -> np.ndarray:
    """What a pack keeps of a slice's original ground truth: the label map (uint8) for
    :data:`TYPES_KIND` slices, the infection mask (bool) for the others."""
    if meta.get("kind") != TYPES_KIND:
        return read_gt_original(meta)
    if meta.get("gt_array") is not None:
        return np.asarray(meta["gt_array"]).astype(np.uint8)
    return read_label_map(meta["mask"])


def read_label_map(path, n_labels: int = 2) -> np.ndarray:
    """(H, W) uint8 labels 0..n_labels of a label-map PNG: a palette image's indices (the
    palette's colours are not the labels) or a grey image's values; anything else is refused."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError("label map %s has mode %s, expected a palette or grey PNG" % (path, im.mode))
        labels = np.asarray(im).astype(np.uint8)
    if int(labels.max(initial=0)) > n_labels:
        raise ValueError("label map %s has label %d; expected 0..%d"
                         % (path, int(labels.max()), n_labels))
    return labels


