"""The volume verdict from evidence: the classifier's lung slices, weighed by the findings.

Why not the classifier alone: it sees one slice at a time and was trained on a few sources,
so on another hospital's scans its slice probabilities follow the source as much as the
disease (a normal chest called "cancer" because a few slices near the heart fire). A
radiologist's verdict rests on findings; so does this one:

1. **classifier prior** ``q``: the temperature-scaled slice probabilities (temperature from the
   model's calibration.json), averaged over the slices that really cut the lungs (lung
   cross-section >= ``lung_slice_min_fraction`` of the largest) - not the apex/base slices
   where the heart and the abdomen fill the model's box;
2. **evidence**, each item a likelihood ratio per class (a naive-Bayes update, stated in
   :data:`LIKELIHOOD_RATIOS` so every report can list what moved the verdict):

   * a nodule/mass finding of nodule shape (the stricter *evidence* shape rules; a mass of
     3 cm or more needs only to be listed), at least ``cancer_min_diameter_mm`` and scoring at
     least the calibrated operating point: cancer x (1 + 30 x score); none: cancer x 0.3;
   * a **diffuse process** (shape-plausible lesion volume >= ``diffuse_min_ml_per_lung`` in
     *each* lung, so it is bilateral): its distribution is judged like the RSNA consensus
     statement on COVID-19 CT (Simpson et al., Radiology: Cardiothoracic Imaging 2020), which
     calls bilateral multifocal opacities typical and isolated lobar or segmental
     consolidation atypical: multifocal - no lung zone (upper / middle / lower third of a
     lung) holds more than ``covid_max_zone_share`` of it - is typical (COVID-19 x 20),
     one zone holding most of it is atypical (COVID-19 x 0.2: a pneumonia, i.e. "non-covid");
     no diffuse process: COVID-19 x 0.3. The peripheral fraction (lesion within
     ``peripheral_mm`` of the lung surface, in-plane) is reported, not used: the model's masks
     place it too unreliably on scans it has not seen.

   The posterior ``p ∝ q x LR`` is the reported probability and its argmax the verdict.

The likelihood ratios are priors written down once, not fitted: seven whole CTs cannot fit
them. The temperature and operating points are fitted (``ChestCTMTLTraining calibrate``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .calibration import Calibration, temperature_scale
from .candidates import MASS_MM, Candidate, lung_side_name, shape_verdict
from .lungs import LEFT, LUNG_NAMES, RIGHT, LungMask

#: Likelihood ratios of each kind of evidence, per class (classes not named: 1).
LIKELIHOOD_RATIOS = {
    "nodule_per_score": 30.0,  # cancer x (1 + 30 x score) for a qualifying nodule/mass finding
    "no_nodule": {"cancer": 0.3},
    "diffuse_typical": {"covid": 20.0},
    "diffuse_atypical": {"covid": 0.2},
    "no_diffuse": {"covid": 0.3},
}


@dataclass
class LesionPattern:
    """How much shape-plausible lesion there is, where, and how it is distributed."""

    burden_ml: Dict[str, float]  # per lung name
    zone_ml: Dict[str, float]  # "right upper" ... -> mL
    diffuse: bool
    peripheral_fraction: float = float("nan")
    largest_zone_share: float = float("nan")
    typical_covid: bool = False

    def to_dict(self) -> dict:
        def r(v):
            return None if v != v else round(float(v), 4)

        return {"burden_ml": {k: round(v, 2) for k, v in self.burden_ml.items()},
                "zone_ml": {k: round(v, 2) for k, v in self.zone_ml.items()},
                "diffuse": bool(self.diffuse), "peripheral_fraction": r(self.peripheral_fraction),
                "largest_zone_share": r(self.largest_zone_share),
                "typical_covid": bool(self.typical_covid)}


def lung_slice_selection(lungs: Optional[LungMask], slices: np.ndarray, min_fraction: float) -> np.ndarray:
    """Boolean over ``slices``: which analysed slices cut the lungs substantially."""
    if lungs is None or not lungs.found:
        return np.ones(len(slices), bool)
    area = lungs.slice_area()
    if area.size == 0 or area.max() == 0:
        return np.ones(len(slices), bool)
    keep = area[np.asarray(slices, dtype=np.int64)] >= float(min_fraction) * float(area.max())
    return keep if keep.any() else np.ones(len(slices), bool)


def _lesion_per_slice(lesion: np.ndarray, labels: np.ndarray, chunk: int = 32) -> Dict[int, np.ndarray]:
    """Lesion voxels per slice in each lung (label -> counts per slice), a few slices at a time
    (whole-volume comparisons would make CT-sized temporaries)."""
    counts = {side: np.zeros(lesion.shape[0], np.int64) for side in (RIGHT, LEFT)}
    for k0 in range(0, lesion.shape[0], chunk):
        les, lab = lesion[k0:k0 + chunk], labels[k0:k0 + chunk]
        for side in (RIGHT, LEFT):
            counts[side][k0:k0 + len(les)] = np.count_nonzero(les & (lab == side), axis=(1, 2))
    return counts


def lesion_pattern(lesion: np.ndarray, lungs: Optional[LungMask], spacing: Sequence[float],
                   cal: Calibration) -> LesionPattern:
    """Burden per lung and zone of ``lesion`` (bool, canonical), and for a diffuse process its
    peripheral fraction (lesion within ``peripheral_mm`` of the lung's surface, in-plane) and
    the share of its largest zone."""
    from scipy import ndimage

    v = cal.verdict
    voxel_ml = float(np.prod(spacing)) / 1000.0
    burden, zones = {}, {}
    if lungs is None or not lungs.found:
        return LesionPattern({}, {}, False)
    per_slice = _lesion_per_slice(lesion, lungs.labels)
    for side in (RIGHT, LEFT):
        name = LUNG_NAMES[side]
        burden[name] = float(per_slice[side].sum()) * voxel_ml
        for zone, k0, k1 in lungs.zone_slices(side):
            zones["%s %s" % (lung_side_name(side), zone)] = float(per_slice[side][k0:k1].sum()) * voxel_ml
    diffuse = bool(burden) and min(burden.values()) >= float(v["diffuse_min_ml_per_lung"])
    pattern = LesionPattern(burden, zones, diffuse)
    if diffuse:
        total = sum(zones.values())
        pattern.largest_zone_share = max(zones.values()) / total if total > 0 else float("nan")
        # distance to the lung surface, per slice (in-plane), on a 2x coarser grid
        _, r_mm, c_mm = (float(s) for s in spacing)
        inside = lungs.labels[:, ::2, ::2] > 0
        dist = ndimage.distance_transform_edt(inside, sampling=(1e6, 2 * r_mm, 2 * c_mm))
        les = lesion[:, ::2, ::2] & inside
        d = dist[les]
        pattern.peripheral_fraction = float((d <= float(v["peripheral_mm"])).mean()) if d.size else float("nan")
        pattern.typical_covid = bool(pattern.largest_zone_share <= float(v["covid_max_zone_share"]))
    return pattern


def cancer_evidence(nodules: Sequence[Candidate], slice_mm: float, cal: Calibration,
                    threshold: Optional[float] = None) -> Optional[Candidate]:
    """The best listed nodule/mass candidate that counts as evidence for cancer, or None."""
    rules = cal.evidence_rules(slice_mm)
    t = cal.score_threshold if threshold is None else float(threshold)
    min_d = float(cal.verdict["cancer_min_diameter_mm"])
    for c in nodules:  # best first
        d = c.features.get("diameter_mm", 0.0)
        if not c.kept or c.score < t or d < min_d:
            continue
        # the stricter shape rules describe nodules (LIDC outlines < 3 cm); a mass (>= 3 cm,
        # Fleischner glossary) is suspicious whatever its shape once it is listed at all
        if d < MASS_MM and shape_verdict(c.features, rules):
            continue
        return c
    return None


def decide(slice_probs: Optional[np.ndarray], lung_slices: np.ndarray, class_names: Sequence[str],
           nodule: Optional[Candidate], pattern: LesionPattern, cal: Calibration,
           nodule_id: str = "") -> dict:
    """Posterior class probabilities, the verdict and the evidence behind it (report.json)."""
    names = list(class_names)
    if slice_probs is None or len(slice_probs) == 0:
        q = np.full(len(names), 1.0 / len(names))
    else:
        p = temperature_scale(np.asarray(slice_probs)[np.asarray(lung_slices, bool)], cal.temperature)
        q = p.mean(axis=0)
    lr = np.ones(len(names))
    drivers: List[dict] = []

    def apply(kind: str, factors: Dict[str, float], detail: dict) -> None:
        for cls, f in factors.items():
            if cls in names:
                lr[names.index(cls)] *= float(f)
        drivers.append({"evidence": kind, "likelihood_ratios": factors, **detail})

    if nodule is not None:
        f = nodule.features
        apply("nodule-mass finding",
              {"cancer": 1.0 + LIKELIHOOD_RATIOS["nodule_per_score"] * float(nodule.score)},
              {"finding": nodule_id, "score": round(float(nodule.score), 4),
               "diameter_mm": round(float(f.get("diameter_mm", 0.0)), 1),
               "lung": lung_side_name(nodule.lung), "zone": nodule.zone})
    else:
        apply("no qualifying nodule/mass finding", dict(LIKELIHOOD_RATIOS["no_nodule"]), {})
    if pattern.diffuse:
        kind = "diffuse_typical" if pattern.typical_covid else "diffuse_atypical"
        apply("diffuse bilateral process, %s for COVID-19" % ("typical" if pattern.typical_covid
                                                             else "atypical"),
              dict(LIKELIHOOD_RATIOS[kind]), {"pattern": pattern.to_dict()})
    else:
        apply("no diffuse bilateral process", dict(LIKELIHOOD_RATIOS["no_diffuse"]),
              {"burden_ml": {k: round(v, 2) for k, v in pattern.burden_ml.items()}})
    post = q * lr
    post = post / post.sum()
    verdict = names[int(np.argmax(post))]
    return {
        "predicted_class": verdict,
        "probabilities": {n: float(v) for n, v in zip(names, post)},
        "classifier_lung_slices": {n: round(float(v), 4) for n, v in zip(names, q)},
        "lung_slices_used": int(np.asarray(lung_slices, bool).sum()),
        "evidence": drivers,
        "pattern": pattern.to_dict(),
        "calibration": cal.summary(),
        "rule": "posterior = classifier(lung slices, temperature-scaled) x likelihood ratios of the evidence",
    }


def explain(verdict: dict) -> str:
    """One line for a radiologist: what moved the verdict, with each likelihood ratio."""
    if not verdict:
        return ""
    parts = []
    for e in verdict.get("evidence", []):
        ratios = ", ".join("%s x%.2g" % (k, v) for k, v in e.get("likelihood_ratios", {}).items())
        what = e["evidence"]
        if e.get("finding"):
            what = "%s %s (%s %s, %.0f mm, score %.2f)" % (what, e["finding"], e.get("lung", ""),
                                                          e.get("zone", ""), e.get("diameter_mm", 0.0),
                                                          e.get("score", 0.0))
        parts.append("%s: %s" % (what, ratios))
    q = verdict.get("classifier_lung_slices") or {}
    head = "classifier on %d lung slices %s" % (
        verdict.get("lung_slices_used", 0), " / ".join("%s %.2f" % kv for kv in q.items()))
    return "; ".join([head] + parts)


__all__ = ["LIKELIHOOD_RATIOS", "explain", "LesionPattern", "lesion_pattern", "cancer_evidence", "decide",
           "lung_slice_selection"]
