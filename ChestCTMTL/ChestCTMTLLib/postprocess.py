"""Turning per-slice network outputs into volume results: masks, 3D findings, a verdict.

Pure numpy/scipy on canonical axial coordinates (slice, row, col) from
:mod:`.orientation`; :mod:`.inference` maps the outcome to the input grid. scipy.ndimage is
used rather than scikit-image because Slicer bundles scipy but not scikit-image, and these
run inside Slicer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .results import CLASS_NAMES


# --------------------------------------------------------------------------- masks
_BALL = np.ones((3, 3, 3), bool)


def mask_extent(mask: np.ndarray) -> Tuple[slice, ...]:
    """The smallest box holding every nonzero voxel of ``mask`` (empty slices when none), found
    from per-axis projections, without a temporary the size of ``mask``."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=others))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0))
    return tuple(box)


def label_26(mask: np.ndarray) -> Tuple[np.ndarray, int, Tuple[slice, ...]]:
    """26-connected components of ``mask`` labelled inside its extent only, in 16 bits when
    they fit: (labels of the extent, count, the extent). Components and their numbers are the
    same as ``ndimage.label`` on the whole mask gives (a box keeps the raster order); the
    labels take 2 bytes a voxel of the extent instead of 4 of the whole mask, which on a thin
    whole CT is the difference between a small and a CT-sized temporary."""
    from scipy import ndimage

    extent = mask_extent(mask)
    sub = mask[extent]
    if sub.size == 0:
        return np.zeros(sub.shape, np.uint16), 0, extent
    try:
        lab = np.empty(sub.shape, np.uint16)
        n = ndimage.label(sub, structure=_BALL, output=lab)
    except RuntimeError:  # more than 65,535 components: scipy refuses to truncate
        lab, n = ndimage.label(sub, structure=_BALL)
    return lab, int(n), extent


def components_26(mask: np.ndarray):
    """(box, component mask inside the box) for every 26-connected component of ``mask``, in
    ``ndimage.label`` order; boxes are on ``mask``'s grid."""
    from scipy import ndimage

    lab, n, extent = label_26(mask)
    if n == 0:
        return
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        yield (tuple(slice(s.start + e.start, s.stop + e.start) for s, e in zip(sl, extent)),
               lab[sl] == i)


def remove_small_islands(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Clear 3D connected components (26-connectivity) with fewer than ``min_voxels`` voxels.

    Works in place on ``mask`` (bool or uint8, typically a sub-box view of the output mask)
    and returns it. 26-connectivity so that a thin lesion crossing slices diagonally stays one
    object instead of being shredded into "small islands".
    """
    from scipy import ndimage

    if min_voxels <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask
    # counted in slabs: bincount converts its input to int64, 2x the int32 labels' memory
    counts = np.zeros(n + 1, dtype=np.int64)
    for start in range(0, labels.shape[0], 16):
        counts += np.bincount(labels[start:start + 16].ravel(), minlength=n + 1)
    small = counts < int(min_voxels)
    small[0] = False
    if small.any():
        for start in range(0, labels.shape[0], 16):
            block = mask[start:start + 16]
            block[small[labels[start:start + 16]]] = 0
    return mask


def assign_infection_types(infection: np.ndarray, type_probs: Sequence[np.ndarray],
                           chunk: int = 32) -> np.ndarray:
    """uint8 on ``infection``'s grid: 0 where not infected, else 1 + the index of the most
    probable type (the first on a tie), as ``model.infection_type_masks`` assigns them - here
    slab by slab on uint8 probabilities, so no CT-sized index or float array is made. The
    types are disjoint and their union is ``infection``."""
    out = np.zeros(infection.shape, np.uint8)
    for k0 in range(0, infection.shape[0], chunk):
        sl = slice(k0, k0 + chunk)
        best = np.zeros(out[sl].shape, np.uint8)
        best_p = np.full(out[sl].shape, -1, np.int16)
        for index, prob in enumerate(type_probs):
            higher = prob[sl] > best_p  # strictly: a tie keeps the earlier type
            best[higher] = index + 1
            best_p[higher] = prob[sl][higher]
        out[sl] = np.where(infection[sl], best, 0)
    return out


# --------------------------------------------------------------------------- detections
@dataclass
class SliceBox:
    """A 2D detection on canonical slice ``slice``, in continuous input-pixel coordinates.

    Pixel p spans [p, p + 1) (the convention of representation.SliceGeometry).
    """

    slice: int
    type: str
    score: float
    r0: float
    c0: float
    r1: float
    c1: float

    @property
    def area(self) -> float:
        return max(0.0, self.r1 - self.r0) * max(0.0, self.c1 - self.c0)

    def contains_centre_of(self, other: "SliceBox") -> bool:
        cr, cc = 0.5 * (other.r0 + other.r1), 0.5 * (other.c0 + other.c1)
        return self.r0 <= cr <= self.r1 and self.c0 <= cc <= self.c1


def box_iou_2d(a: SliceBox, b: SliceBox) -> float:
    ih = min(a.r1, b.r1) - max(a.r0, b.r0)
    iw = min(a.c1, b.c1) - max(a.c0, b.c0)
    if ih <= 0 or iw <= 0:
        return 0.0
    inter = ih * iw
    return inter / max(a.area + b.area - inter, 1e-9)


@dataclass
class Track:
    """Per-slice boxes of one lesion, linked across adjacent slices."""

    type: str
    boxes: List[SliceBox] = field(default_factory=list)

    @property
    def last(self) -> SliceBox:
        return self.boxes[-1]

    @property
    def score(self) -> float:
        return max(b.score for b in self.boxes)

    @property
    def slice_range(self) -> Tuple[int, int]:
        return self.boxes[0].slice, self.boxes[-1].slice

    def box3d(self) -> Tuple[float, float, float, float, float, float]:
        """(s0, s1, r0, r1, c0, c1): slice indices inclusive, in-plane continuous half-open."""
        s0, s1 = self.slice_range
        return (float(s0), float(s1), min(b.r0 for b in self.boxes), max(b.r1 for b in self.boxes),
                min(b.c0 for b in self.boxes), max(b.c1 for b in self.boxes))


def link_slice_boxes(boxes: Sequence[SliceBox], iou_threshold: float = 0.3,
                     max_gap: int = 1) -> List[Track]:
    """Link per-slice boxes of the same type into tracks across adjacent slices.

    Greedy in slice order, highest score first: a box joins the active track (last box at most
    ``max_gap`` + 1 slices back, not yet extended on this slice) it overlaps most, where
    "overlaps" is IoU >= ``iou_threshold`` or either box containing the other's centre (lesions
    grow and shrink between slices, which drops IoU while the centre stays inside). One missed
    slice (``max_gap``) does not split a lesion.
    """
    tracks: List[Track] = []
    by_slice: Dict[int, List[SliceBox]] = {}
    for b in boxes:
        by_slice.setdefault(int(b.slice), []).append(b)
    active: List[Track] = []
    for s in sorted(by_slice):
        active = [t for t in active if t.last.slice >= s - 1 - max_gap]
        extended = set()
        for b in sorted(by_slice[s], key=lambda x: -x.score):
            best, best_iou = None, -1.0
            for ti, t in enumerate(active):
                if ti in extended or t.type != b.type:
                    continue
                iou = box_iou_2d(b, t.last)
                if iou >= iou_threshold or t.last.contains_centre_of(b) or b.contains_centre_of(t.last):
                    if iou > best_iou:
                        best, best_iou = ti, iou
            if best is None:
                t = Track(b.type, [b])
                tracks.append(t)
                active.append(t)
                extended.add(len(active) - 1)
            else:
                active[best].boxes.append(b)
                extended.add(best)
    return tracks


def box3d_iou(a, b) -> float:
    """IoU of two (s0, s1, r0, r1, c0, c1) boxes (slices inclusive, in-plane half-open)."""
    ds = min(a[1], b[1]) - max(a[0], b[0]) + 1
    dr = min(a[3], b[3]) - max(a[2], b[2])
    dc = min(a[5], b[5]) - max(a[4], b[4])
    if ds <= 0 or dr <= 0 or dc <= 0:
        return 0.0
    inter = ds * dr * dc
    va = (a[1] - a[0] + 1) * (a[3] - a[2]) * (a[5] - a[4])
    vb = (b[1] - b[0] + 1) * (b[3] - b[2]) * (b[5] - b[4])
    return inter / max(va + vb - inter, 1e-9)


def _centre_inside(a, b) -> bool:
    """Is the centre of box ``b`` inside box ``a``?"""
    cs, cr, cc = 0.5 * (b[0] + b[1]), 0.5 * (b[2] + b[3]), 0.5 * (b[4] + b[5])
    return a[0] <= cs <= a[1] and a[2] <= cr <= a[3] and a[4] <= cc <= a[5]


def suppress_duplicate_tracks(tracks: Sequence[Track], same_type_iou: float = 0.25,
                              cross_type_iou: float = 0.5) -> List[Track]:
    """3D non-maximum suppression, highest score first.

    A track is a duplicate of a kept one of the same type when their 3D boxes overlap by
    ``same_type_iou`` or one contains the other's centre (a lesion split into two tracks by a
    longer gap); of another type only when they overlap by ``cross_type_iou`` (one lesion
    given two labels: the more confident label wins).
    """
    kept: List[Track] = []
    for t in sorted(tracks, key=lambda x: -x.score):
        bt = t.box3d()
        dup = False
        for k in kept:
            bk = k.box3d()
            iou = box3d_iou(bt, bk)
            if k.type == t.type:
                if iou >= same_type_iou or _centre_inside(bk, bt) or _centre_inside(bt, bk):
                    dup = True
            elif iou >= cross_type_iou:
                dup = True
            if dup:
                break
        if not dup:
            kept.append(t)
    return kept


def track_volume_mm3(track: Track, row_mm: float, col_mm: float, slice_mm: float) -> float:
    """Volume from the boxes alone: an ellipse inscribed in each slice's box times thickness.

    Findings come from the detection head, so their volume does too (not from segmentation).
    Slices skipped inside the track (``max_gap``) count with the mean detected cross-section.
    """
    areas = [math.pi / 4.0 * (b.r1 - b.r0) * row_mm * (b.c1 - b.c0) * col_mm for b in track.boxes]
    s0, s1 = track.slice_range
    span = s1 - s0 + 1
    return float(np.mean(areas) * span * slice_mm) if areas else 0.0


# --------------------------------------------------------------------------- classification
def aggregate_slice_probabilities(slice_probs: np.ndarray, slice_mm: float = 1.0,
                                  top_mm: float = 5.0,
                                  class_names: Sequence[str] = CLASS_NAMES) -> Dict[str, float]:
    """Volume verdict from per-slice class probabilities ("any-disease" aggregation).

    Disease is local: a 10 mm nodule occupies a handful of slices of a 300 mm scan, so a plain
    mean over slices would always say "non-covid". Instead, for each disease class the
    evidence is the mean of its ``k`` highest slice probabilities, ``k`` = the slices covering
    ``top_mm`` (at least one): enough to ignore one spurious slice at thin spacing, few enough
    to catch a small lesion. Then

        P(non-covid) = prod over diseases (1 - evidence_d)
        P(disease d) = (1 - P(non-covid)) * evidence_d / sum(evidence)

    i.e. the volume is normal only if no disease is evidenced anywhere, and the remaining mass
    is split between the diseases in proportion to their evidence. The three numbers sum to 1.
    The first of ``class_names`` is taken as the normal class.
    """
    p = np.asarray(slice_probs, dtype=np.float64)
    names = list(class_names)
    if p.ndim != 2 or p.shape[1] != len(names) or p.shape[0] == 0:
        raise ValueError("expected (n_slices>0, %d) probabilities, got %s" % (len(names), p.shape))
    k = int(max(1, min(p.shape[0], round(top_mm / max(slice_mm, 1e-6)))))
    evidence = {}
    for ci, name in enumerate(names[1:], start=1):
        col = np.sort(p[:, ci])[::-1]
        evidence[name] = float(np.clip(col[:k].mean(), 0.0, 1.0))
    normal = float(np.prod([1.0 - e for e in evidence.values()]))
    total = sum(evidence.values())
    out = {names[0]: normal}
    for name, e in evidence.items():
        out[name] = (1.0 - normal) * (e / total if total > 0 else 1.0 / len(evidence))
    s = sum(out.values())
    return {n: float(out[n] / s) for n in names}
