"""Hard negatives: crops of normal whole-CT slices centred where false nodules are found.

The detector's false positives sit on vessels, the hila, the heart border and the lung bases
(partial volume of the diaphragm domes). Lesion-free crops centred on exactly those places
teach "this is not a nodule" more than random crops of the same slices. Rules on a normal
slice of a whole CT (HU on the model grid; lungs from :func:`.slice_lungs.slice_lungs`):

* ``vessel``: bright pixels (>= -500 HU) inside the lung mask eroded by 2 px - vessels and
  bronchial walls seen end-on or along; the eroded mask keeps the chest wall out;
* ``mediastinum``: lung-mask edge pixels medial to their lung's centroid column (for one
  joined lung: within the middle half of its width) - the hila, heart border, aorta and
  paravertebral border;
* ``base``: any lung pixel of the scan's lowest 15 % of slices that bear lung (LPS arrays
  run from the feet up, so the lowest k; both whole-CT adapters give LPS order).

A draw picks a rule (uniformly among those that found pixels), a slice, then a pixel; the
sample keeps the slice's class (non-COVID) and its known-empty lesion masks, and the crop is
centred near that pixel (:func:`.batching.focus_crop`). Only training-split slices that are
known lesion-free (class non-COVID, empty masks annotated for every lesion type, not a
pneumonia's infected slice) of the named sources are used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ChestCTMTLLib.representation import hu_to_unit
from ChestCTMTLLib.results import CLASS_NAMES

from .slice_lungs import slice_lungs
from .sources.base import SampleSet

RULES = ("vessel", "mediastinum", "base")
VESSEL_HU = -500.0
BASE_FRACTION = 0.15


@dataclass
class HardNegativeConfig:
    """The ``hard_negatives:`` config section (defaults here; unknown keys are refused)."""

    enabled: bool = False
    p: float = 0.1  # share of all training samples
    sources: List[str] = field(default_factory=list)
    jitter_px: int = 8

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "HardNegativeConfig":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError("hard_negatives: unknown keys %s" % sorted(unknown))
        return checked_generator(cls(**d), "hard_negatives", "sources")


def checked_generator(out, section: str, names: str):
    """A sample generator's config (copy_paste, hard_negatives) after the checks they share:
    its share ``p`` of the training samples in [0, 1), and when enabled at least one entry in
    its list ``names``."""
    if not 0 <= out.p < 1:
        raise ValueError("%s.p must be in [0, 1), got %r" % (section, out.p))
    if out.enabled and not getattr(out, names):
        raise ValueError("%s is enabled but names no %s" % (section, names))
    return out


def regions(image: np.ndarray, hu_window, lung_mask: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """``vessel`` and ``mediastinum`` pixel masks of one slice (rules in the module docstring)."""
    from scipy import ndimage

    lung = slice_lungs(image).mask if lung_mask is None else lung_mask
    inner = ndimage.binary_erosion(lung, iterations=2)
    vessel = inner & (image >= float(hu_to_unit(np.array([VESSEL_HU]), hu_window)[0]))
    edge = lung & ~ndimage.binary_erosion(lung)
    medial = np.zeros_like(lung)
    lab, n = ndimage.label(lung)
    cols = np.arange(lung.shape[1])[None, :]
    if n == 1:
        c = np.nonzero(lung.any(axis=0))[0]
        mid, half = (c[0] + c[-1]) / 2.0, (c[-1] - c[0]) / 4.0
        medial = np.abs(cols - mid) <= half
        medial = np.broadcast_to(medial, lung.shape)
    elif n >= 2:
        cents = ndimage.center_of_mass(lung, lab, range(1, n + 1))
        middle = np.mean([cc for _r, cc in cents])
        for j, (_r, cc) in enumerate(cents, start=1):
            side = cols >= cc if cc < middle else cols <= cc
            medial = medial | ((lab == j) & side)
    return {"vessel": vessel, "mediastinum": edge & medial, "lung": lung}


class HardNegatives:
    """Draws lesion-free crops' focus points; used by :class:`.batching.MixedSampler` as a source."""

    name = "hard-negatives"

    @property
    def p(self) -> float:
        return float(self.cfg.p)

    def __init__(self, cfg: HardNegativeConfig, sets: Sequence[SampleSet], hu_window,
                 n_lesion_types: Optional[int] = None):
        # lesion-free = every lesion channel labelled and empty; infection-type channels (a split
        # of the infection, labelled on few slices) follow the infection channel and are not asked
        self.cfg = cfg
        nl = n_lesion_types
        self.hu_window = tuple(float(v) for v in hu_window)
        by_name = {s.name: s for s in sets}
        nc = CLASS_NAMES.index("non-covid")
        self.pool: Dict[str, List[Tuple[SampleSet, int, np.ndarray]]] = {r: [] for r in RULES}
        for name in cfg.sources:
            if name not in by_name:
                raise ValueError("hard_negatives source %r is not a training source (have %s)" % (name, sorted(by_name)))
            s = by_name[name]
            if s.split != "train":
                raise ValueError("hard negatives must come from the training split, got %r" % s.split)
            by_scan: Dict[str, list] = {}
            for i in range(len(s)):
                mt = s.meta[i] if s.meta else {}
                if not mt.get("spacing"):
                    raise ValueError("hard_negatives source %r is not a whole CT in HU" % name)
                if s.classes[i] != nc or mt.get("infection") or s.masks[i].any() or not s.mask_present[i][:nl].all():
                    continue
                reg = regions(s.images[i].astype(np.float32), self.hu_window)
                if not reg["lung"].any():
                    continue
                for r in ("vessel", "mediastinum"):
                    if reg[r].any():
                        self.pool[r].append((s, i, np.argwhere(reg[r])))
                k = int(mt.get("array_k", mt.get("k", 0)))
                by_scan.setdefault(str(mt.get("scan")), []).append((k, i, np.argwhere(reg["lung"])))
            for rows in by_scan.values():
                rows.sort(key=lambda t: t[0])
                n_base = max(1, int(round(len(rows) * BASE_FRACTION)))
                for _k, i, pts in rows[:n_base]:
                    self.pool["base"].append((s, i, pts))
        self.rules = [r for r in RULES if self.pool[r]]
        if not self.rules:
            raise ValueError("hard_negatives: no lesion-free whole-CT slice with lungs in %s" % cfg.sources)

    def draw(self, rng: np.random.Generator) -> dict:
        rule = self.rules[int(rng.integers(len(self.rules)))]
        s, i, pts = self.pool[rule][int(rng.integers(len(self.pool[rule])))]
        r, c = (int(v) for v in pts[int(rng.integers(len(pts)))])
        j = int(self.cfg.jitter_px)
        r += int(rng.integers(-j, j + 1))
        c += int(rng.integers(-j, j + 1))
        size = s.images.shape[-1]
        focus = (min(max(r, 0), size - 1), min(max(c, 0), size - 1))
        return {"image": s.images[i].astype(np.float32), "masks": s.masks[i].astype(np.float32) / 255.0,
                "cls": int(s.classes[i]), "present": s.mask_present[i].copy(),
                "weight": float(s.seg_weight[i]), "focus": focus, "rule": rule, "host": (s.name, i)}
