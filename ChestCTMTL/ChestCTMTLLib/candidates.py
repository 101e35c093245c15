"""3D lesion candidates inside the lungs, their features, false-positive reduction, lung zones.

Why 3D: the network sees one slice at a time, so the things it mistakes for nodules are
exactly those that look round on one slice but not in 3D - the dome of the diaphragm or the
heart cut tangentially (a flat "pancake" one or two slices thick), a vessel running through a
few slices (a tube), a hilum. A nodule is a compact blob: its cranio-caudal extent is
comparable to its in-plane extent and no principal axis dominates. Both are measured on the
segmentation head's 3D components, so no rule depends on slice-by-slice box linking.

* **Nodule/mass candidates** are the 3D components (26-connected) of the nodule-mass mask
  inside the lungs. Each gets shape features (:func:`shape_features`), the detection head's
  support (best box whose centre falls in it) and the segmentation probabilities; it is kept
  when :class:`ShapeRules` accept it. The rules' two numbers are percentiles of the same
  features over expert-outlined LIDC nodules (fitted by ``ChestCTMTLTraining calibrate``,
  stored in the model's calibration.json), so "nodule-shaped" is defined by radiologists'
  masks, not by our seven scans.
* **Infection** is reported per lung zone (upper / middle / lower third of each lung's
  cranio-caudal extent): at most six findings, each with its volume, however many islands the
  mask has. Flat one-slice sheets are dropped first (same z-ratio rule, relaxed).

Everything here works on canonical (slice, row, col) arrays; :mod:`.inference` maps results
to RAS. scipy.ndimage only (runs inside Slicer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .lungs import LEFT, LUNG_NAMES, RIGHT, LungMask
from .postprocess import SliceBox

ZONES = ("upper", "middle", "lower")
#: Soft tissue, not ground glass: a lesion whose median is above this is solid.
SOLID_HU = -100.0
#: A mass, not a nodule, from this diameter on (Fleischner Society glossary, 2008).
MASS_MM = 30.0


def is_solid_mass(cand: "Candidate") -> bool:
    """A listed candidate of at least 3 cm whose median is soft tissue: never part of a diffuse
    process (a pneumonia or COVID-19 does not hide a mass)."""
    f = cand.features
    return bool(cand.kept and f.get("diameter_mm", 0.0) >= MASS_MM
                and f.get("median_hu", -1000.0) > SOLID_HU)


@dataclass(frozen=True)
class ShapeRules:
    """What a nodule's 3D shape may be. Defaults: LIDC expert masks' 1st / 99th percentiles."""

    min_z_ratio: float = 0.38  # cranio-caudal extent / largest in-plane extent
    max_elongation: float = 3.0  # sqrt(largest / smallest principal variance)
    min_diameter_mm: float = 3.0  # LIDC outlines nodules from 3 mm
    min_infection_z_ratio: float = 0.1  # infection: only flat sheets are dropped

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "ShapeRules":
        if not d:
            return cls()
        return cls(**{k: float(d[k]) for k in ("min_z_ratio", "max_elongation", "min_diameter_mm",
                                               "min_infection_z_ratio") if k in d})


@dataclass
class Candidate:
    """One 3D object on the canonical grid: its voxels (inside ``bbox``) and what we know of it."""

    type: str
    bbox: Tuple[slice, slice, slice]
    mask: np.ndarray  # bool, shape of the bbox
    score: float = 0.0
    lung: int = 0  # lungs.RIGHT / lungs.LEFT / 0
    zone: str = ""
    features: Dict[str, float] = field(default_factory=dict)
    kept: bool = True
    reason: str = ""  # why dropped (empty when kept)
    in_lung: Optional[np.ndarray] = None  # bool, bbox shape: voxels inside a lung (not margin)

    def voxel_indices(self) -> np.ndarray:
        """(N, 3) canonical (slice, row, col) indices of the candidate's voxels."""
        zz, yy, xx = np.nonzero(self.mask)
        return np.stack([zz + self.bbox[0].start, yy + self.bbox[1].start,
                         xx + self.bbox[2].start], axis=1)

    def centre_index(self) -> np.ndarray:
        """A canonical voxel *of the candidate* nearest its centroid (so always on the lesion),
        chosen among its voxels inside the lung when :func:`_side_and_zone` marked them."""
        idx = self.voxel_indices().astype(np.float64)
        c = idx.mean(axis=0)
        pool = idx
        if self.in_lung is not None and self.in_lung.any():
            pool = idx[self.in_lung[self.mask]]
        return pool[int(np.argmin(((pool - c) ** 2).sum(axis=1)))]


# --------------------------------------------------------------------------- features
def shape_features(mask: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """Size and shape of one binary object (any grid), ``spacing`` (slice, row, col) in mm.

    z_ratio = cranio-caudal extent / largest in-plane extent (extents in whole voxels);
    elongation = sqrt(largest / smallest principal variance) of the voxel positions, each
    voxel counted as a box (variance + spacing^2/12), so a one-slice object on a thick-slice
    scan is not called infinitely flat; diameter_mm = largest in-plane extent.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    zz, yy, xx = np.nonzero(mask)
    n = zz.size
    if n == 0:
        return {"volume_mm3": 0.0, "z_extent_mm": 0.0, "diameter_mm": 0.0, "z_ratio": 0.0,
                "elongation": float("inf"), "equivalent_diameter_mm": 0.0}
    z_ext = float(zz.max() - zz.min() + 1) * sp[0]
    in_ext = max(float(yy.max() - yy.min() + 1) * sp[1], float(xx.max() - xx.min() + 1) * sp[2])
    pts = np.stack([zz, yy, xx], axis=1).astype(np.float64) * sp
    cov = np.cov(pts.T) if n > 1 else np.zeros((3, 3))
    cov = cov + np.diag(sp ** 2 / 12.0)
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    volume = float(n * np.prod(sp))
    return {"volume_mm3": volume, "z_extent_mm": z_ext, "diameter_mm": in_ext,
            "z_ratio": z_ext / max(in_ext, 1e-6),
            "elongation": float(math.sqrt(ev[0] / max(ev[2], 1e-12))),
            "equivalent_diameter_mm": float((6.0 * volume / math.pi) ** (1.0 / 3.0))}


def shape_verdict(features: Dict[str, float], rules: ShapeRules) -> str:
    """"" when a nodule candidate has a nodule's shape, else the reason it has not."""
    if features["diameter_mm"] < rules.min_diameter_mm:
        return "smaller than %g mm" % rules.min_diameter_mm
    if features["z_ratio"] < rules.min_z_ratio:
        return "flat across slices (z-ratio %.2f < %.2f)" % (features["z_ratio"], rules.min_z_ratio)
    if features["elongation"] > rules.max_elongation:
        return "tube-like (elongation %.1f > %.1f)" % (features["elongation"], rules.max_elongation)
    return ""


# --------------------------------------------------------------------------- candidates
def _components(mask: np.ndarray, min_voxels: int):
    from .postprocess import components_26

    for sl, comp in components_26(mask):
        if int(comp.sum()) >= min_voxels:
            yield sl, comp


def _side_and_zone(lungs: LungMask, cand: Candidate) -> float:
    """Set the candidate's lung, zone and in-lung voxels; returns the fraction inside a lung."""
    region = lungs.labels[cand.bbox]
    cand.in_lung = (region > 0) & cand.mask
    counts = np.bincount(region[cand.mask], minlength=3)
    inside = float(counts[1:].sum()) / max(1.0, float(cand.mask.sum()))
    cand.lung = (RIGHT if counts[RIGHT] >= counts[LEFT] else LEFT) if counts[1:].sum() else 0
    k = float(cand.centre_index()[0])
    cand.zone = lungs.zone_of(cand.lung, k) if cand.lung else ""
    return inside


def in_lung_mask(lungs: Optional[LungMask], shape, margin_vox: Tuple[int, int, int]) -> np.ndarray:
    """Where lesions may be: the lungs grown by a small box-shaped margin (juxtapleural lesions);
    nowhere when a lung mask found no lungs (everywhere only without a lung mask at all).

    A box margin is a separable maximum filter (three 1D passes), much cheaper on a whole CT
    than a ball, and the margin is only a few millimetres.
    """
    from scipy import ndimage

    if lungs is None:
        return np.ones(shape, bool)
    if not lungs.found:  # no lungs, no place for a lung lesion: nothing is listed
        return np.zeros(shape, bool)
    inside = lungs.labels > 0
    if any(m > 0 for m in margin_vox):
        size = tuple(2 * int(m) + 1 for m in margin_vox)
        grown = np.empty(inside.shape, np.uint8)
        ndimage.maximum_filter(inside.view(np.uint8), size=size, output=grown)
        del inside
        return grown.view(bool)  # 0/1 bytes: the same memory read as bool, no copy
    return inside


def shifted(cand: "Candidate", offset: Sequence[int]) -> "Candidate":
    """``cand`` with its bbox moved by ``offset`` (from a crop's grid to the full grid)."""
    cand.bbox = tuple(slice(s.start + int(o), s.stop + int(o)) for s, o in zip(cand.bbox, offset))
    return cand


def nodule_candidates(prob: np.ndarray, allowed: np.ndarray, lungs: Optional[LungMask],
                      boxes: Sequence[SliceBox], spacing: Sequence[float], rules: ShapeRules,
                      seg_threshold: float = 0.5, min_volume_mm3: float = 14.0,
                      lesion_type: str = "nodule-mass",
                      hu: Optional[np.ndarray] = None) -> List[Candidate]:
    """Scored 3D nodule/mass candidates (kept and dropped, best first).

    ``prob``: uint8 canonical probability map (x255) of the nodule-mass channel; ``allowed``:
    where a lesion may be (:func:`in_lung_mask`); ``hu``: the CT on the same grid (adds the
    median HU and the soft-tissue fraction, > -100 HU). Score = the best detection box (already
    sqrt(detection x segmentation peak), :func:`model.rescore_detections`) whose centre lies
    in the candidate; 0 when the detection head did not see it.
    """
    sp = tuple(float(v) for v in spacing)
    thr = int(math.ceil(seg_threshold * 255.0))
    mask = (prob >= thr) & allowed
    min_vox = max(1, int(math.ceil(min_volume_mm3 / float(np.prod(sp)))))
    own = [b for b in boxes if b.type == lesion_type]
    out: List[Candidate] = []
    for sl, comp in _components(mask, min_vox):
        cand = Candidate(lesion_type, sl, comp)
        f = shape_features(comp, sp)
        p = prob[sl][comp].astype(np.float32) / 255.0
        best, n_boxes = _best_box_inside(own, sl, comp)
        f.update(seg_mean=float(p.mean()), seg_max=float(p.max()), detection=best,
                 detection_slices=float(n_boxes))
        if hu is not None:
            values = hu[sl][comp]
            f.update(median_hu=float(np.median(values)),
                     solid_fraction=float((values > SOLID_HU).mean()))
        cand.features = f
        cand.score = best
        cand.reason = shape_verdict(f, rules)
        if lungs is not None and lungs.found:
            inside = _side_and_zone(lungs, cand)
            f["in_lung_fraction"] = inside
            if inside < 0.5 and not cand.reason:
                cand.reason = "mostly outside the lungs (%.0f %% inside)" % (100 * inside)
        cand.kept = not cand.reason
        out.append(cand)
    out.sort(key=lambda c: (-c.score, -c.features["volume_mm3"]))
    return out


def touching_zone(cands: Sequence["Candidate"], shape) -> np.ndarray:
    """Voxels of ``cands`` and their 26-neighbours (bool, ``shape``)."""
    from scipy import ndimage

    near = np.zeros(shape, bool)
    ball = np.ones((3, 3, 3), bool)
    for c in cands:
        region = tuple(slice(max(0, sl.start - 1), min(n, sl.stop + 1)) for sl, n in zip(c.bbox, shape))
        seed = np.zeros(tuple(r.stop - r.start for r in region), bool)
        seed[tuple(slice(sl.start - r.start, sl.stop - r.start) for sl, r in zip(c.bbox, region))] = c.mask
        near[region] |= ndimage.binary_dilation(seed, ball)
    return near


def plausible_infection(prob: np.ndarray, allowed: np.ndarray, spacing: Sequence[float],
                        rules: ShapeRules, seg_threshold: float = 0.5,
                        min_volume_mm3: float = 14.0, near: Optional[np.ndarray] = None):
    """(plausible infection, its part touching ``near``, every island >= ``min_volume_mm3``).

    All bool inside ``allowed``. The first drops flat one-slice sheets (what zones and the
    pattern count); the second are its islands touching ``near`` (a nodule/mass seen by both
    heads); the third is the overlay a radiologist sees and edits.
    """
    sp = tuple(float(v) for v in spacing)
    thr = int(math.ceil(seg_threshold * 255.0))
    mask = (prob >= thr) & allowed
    min_vox = max(1, int(math.ceil(min_volume_mm3 / float(np.prod(sp)))))
    keep = np.zeros(mask.shape, bool)
    touching = np.zeros(mask.shape, bool)
    islands = np.zeros(mask.shape, bool)
    for sl, comp in _components(mask, min_vox):
        islands[sl] |= comp
        if shape_features(comp, sp)["z_ratio"] >= rules.min_infection_z_ratio:
            keep[sl] |= comp
            if near is not None and near[sl][comp].any():
                touching[sl] |= comp
    return keep, touching, islands


def _best_box_inside(boxes: Sequence[SliceBox], sl, comp: np.ndarray) -> Tuple[float, int]:
    """(best score, count) of ``boxes`` whose centre voxel lies in ``comp`` (bbox ``sl``)."""
    best, n = 0.0, 0
    for b in boxes:
        k = b.slice - sl[0].start
        if not 0 <= k < comp.shape[0]:
            continue
        r = int(0.5 * (b.r0 + b.r1)) - sl[1].start
        c = int(0.5 * (b.c0 + b.c1)) - sl[2].start
        if 0 <= r < comp.shape[1] and 0 <= c < comp.shape[2] and comp[k, r, c]:
            best = max(best, float(b.score))
            n += 1
    return best, n


def zone_candidates(infection: np.ndarray, prob: np.ndarray, lungs: Optional[LungMask],
                    spacing: Sequence[float], boxes: Sequence[SliceBox] = (),
                    min_zone_ml: float = 1.0,
                    lesion_type: str = "covid-infection") -> List[Candidate]:
    """Infection as at most one candidate per lung zone (six in all), largest first.

    ``infection``: bool canonical mask (:func:`plausible_infection`, plus any nodule-type
    islands of a diffuse process); ``prob``: the uint8 probability map of those voxels;
    ``boxes``: the detection-head boxes that may support them. A zone is a candidate when it
    holds at least ``min_zone_ml``; its score is, like a nodule's, the best supporting box
    (sqrt(detection x segmentation), on the same scale as nodule scores, so a zone never
    outranks a nodule on segmentation confidence alone), 0 when no box supports it; its centre
    is the zone's lesion voxel nearest their centroid.
    """
    from .postprocess import mask_extent

    if lungs is None or not lungs.found or not infection.any():
        return []
    sp = tuple(float(v) for v in spacing)
    voxel_ml = float(np.prod(sp)) / 1000.0
    out: List[Candidate] = []
    for side in (RIGHT, LEFT):
        for zone, k0, k1 in lungs.zone_slices(side):
            sub = infection[k0:k1] & (lungs.labels[k0:k1] == side)
            n = int(sub.sum())
            if n == 0 or n * voxel_ml < min_zone_ml:
                continue
            bb = mask_extent(sub)
            sl = (slice(k0 + bb[0].start, k0 + bb[0].stop), bb[1], bb[2])
            comp = sub[bb]
            p = prob[sl][comp].astype(np.float32) / 255.0
            lung_ml = float((lungs.labels[k0:k1] == side).sum()) * voxel_ml
            volume = n * voxel_ml * 1000.0
            best, n_boxes = _best_box_inside(boxes, sl, comp)
            cand = Candidate(lesion_type, sl, comp, score=best, lung=side, zone=zone)
            cand.features = {"volume_mm3": volume, "zone_lung_ml": lung_ml,
                             "involvement": n * voxel_ml / max(lung_ml, 1e-6),
                             "seg_mean": float(p.mean()), "detection": best,
                             "detection_slices": float(n_boxes),
                             "equivalent_diameter_mm": float((6.0 * volume / math.pi) ** (1.0 / 3.0))}
            out.append(cand)
    out.sort(key=lambda c: -c.features["volume_mm3"])
    return out


def lung_side_name(side: int) -> str:
    return {RIGHT: "right", LEFT: "left"}.get(int(side), "")


__all__ = ["ShapeRules", "Candidate", "shape_features", "shape_verdict", "nodule_candidates",
           "plausible_infection", "zone_candidates", "shifted", "touching_zone", "is_solid_mass",
           "SOLID_HU", "MASS_MM", "in_lung_mask", "ZONES", "LUNG_NAMES", "lung_side_name"]
