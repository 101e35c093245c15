"""Lung involvement: how much of each lung, lung zone and lobe a lesion mask occupies.

Why in the core: a radiologist's report on a pneumonia does not list islands, it says how much
lung is affected ("about 30 % of the right lung, mostly ground glass, lower zones") and, for
COVID-19, often gives a lobar severity score. Those numbers follow from masks the pipeline
already has - the lungs (:class:`.lungs.LungMask`), the infection mask and the HU volume -
so they are computed here, once, for every front end (Slicer module, CLI, evaluation).

Method
------
* **Volumes** are voxel counts times the voxel volume; no resampling, no partial volumes.
  The lesion counts only where it lies inside a lung (voxels outside both lungs are reported
  apart, as ``lesion_outside_lungs_ml``).
* **Percent** is 100 x lesion / lung volume, per lung, per zone and for both lungs together;
  None, with a ``reason``, where the lung (or zone) holds no voxel.
* **Zones** are the lower, middle and upper third of each lung's cranio-caudal extent,
  :meth:`.lungs.LungMask.zone_slices` - the same thirds the zone findings use.
* **Density classes** of the lesion voxels, by HU: ground glass in [``ggo_hu[0]``,
  ``ggo_hu[1]``), consolidation from ``consolidation_hu`` up; lesion voxels below the ground-glass
  band (aerated lung inside the mask's outline) count in ``lesion_ml`` only.

HU bands (defaults :data:`GGO_HU`, :data:`CONSOLIDATION_HU`): -750 HU is the boundary between
"inflated" and "infiltrated" lung in Lung CT Analyzer (R. Bumm, the 3D Slicer extension
SlicerLungCTAnalyzer; its default thresholds are emphysema -1050 to -950, inflated -950 to
-750, infiltrated -750 to -400, collapsed -400 to 0 HU). -300 HU splits ground glass from
consolidation as in published COVID-19 quantification with a CNN lesion mask: among eight
thresholds tested, -300 HU gave the best ground-glass volume and percentage for telling
COVID-19 from other suspected cases ("Quantitative CT for detecting COVID-19 pneumonia in
suspected cases", BMC Infectious Diseases 2021, doi:10.1186/s12879-021-06556-z). Pass
``ggo_hu=(-750, -400), consolidation_hu=-400`` for Lung CT Analyzer's own infiltrated /
collapsed split.

Lobes: :func:`lobe_involvement` takes lobe masks from any lobe segmenter under the names
TotalSegmentator (``lung_upper_lobe_right``), MONAIAuto3DSeg ("Right Upper lobe of lung",
"Middle lobe of right lung"), lungmask (label values 1-5, :data:`LUNGMASK_LOBE_LABELS`) or
SNOMED CT ("upper lobe of right lung") use, and scores each lobe as Pan et al. did (Radiology
2020; 295:715-721, doi:10.1148/radiol.2020200370): 0 none, 1 < 5 %, 2 5-25 %, 3 26-49 %,
4 50-75 %, 5 > 75 % of the lobe; the total is 0-25. The visual bands leave gaps (25-26 %,
49-50 %); :func:`pan_lobe_score` closes them on the measured percent: 2 up to and including
25 %, 3 above 25 % and below 50 %, 4 from 50 % up to and including 75 %, 5 above 75 %.

Canonical axial arrays (:mod:`.orientation`): axis 0 slices inferior -> superior, 1 rows,
2 columns; ``spacing`` is (slice, row, col) mm. numpy only: it runs inside Slicer.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from .lungs import LEFT, LUNG_NAMES, RIGHT, LungMask

#: Ground glass: lesion voxels in [low, high) HU (see the module docstring for the source).
GGO_HU: Tuple[float, float] = (-750.0, -300.0)
#: Consolidation: lesion voxels from this HU up.
CONSOLIDATION_HU: float = -300.0
DEFAULT_SOURCE = "HU bands inside the infection mask"

#: Output order of the zones (``LungMask.zone_slices`` yields them inferior first).
ZONES = ("upper", "middle", "lower")
#: The five lobes by their standard names, in the order the results list them.
LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe",
         "left lower lobe")
#: lungmask's lobe models (LTRCLobes, LTRCLobes_R231): label value -> lobe.
LUNGMASK_LOBE_LABELS = {1: "left upper lobe", 2: "left lower lobe", 3: "right upper lobe",
                        4: "right middle lobe", 5: "right lower lobe"}
_ABBREVIATIONS = {"rul": "right upper lobe", "rml": "right middle lobe", "rll": "right lower lobe",
                  "lul": "left upper lobe", "lll": "left lower lobe"}
_MEASURES = ("volume_ml", "lesion_ml", "percent", "ground_glass_ml", "consolidation_ml")


# --------------------------------------------------------------------------- helpers
def _ml(n_voxels: float, voxel_ml: float) -> float:
    return round(float(n_voxels) * voxel_ml, 2)


def _percent(part: float, whole: float) -> Optional[float]:
    return None if whole <= 0 else 100.0 * float(part) / float(whole)


def _measures(lung: int, lesion: int, ggo: int, cons: int, voxel_ml: float,
              empty_reason: str) -> dict:
    """One entry of the result: volumes of voxel counts, percent (None + reason when empty)."""
    p = _percent(lesion, lung)
    out = {"volume_ml": _ml(lung, voxel_ml), "lesion_ml": _ml(lesion, voxel_ml),
           "percent": None if p is None else round(p, 2),
           "ground_glass_ml": _ml(ggo, voxel_ml), "consolidation_ml": _ml(cons, voxel_ml)}
    if p is None:
        out["reason"] = empty_reason
    return out


def _unmeasured(reason: str) -> dict:
    d = {k: None for k in _MEASURES}
    d["reason"] = reason
    return d


def _method(source: str, ggo: Tuple[float, float], cons: float) -> str:
    return ("%s: ground glass %g to %g HU, consolidation >= %g HU (voxels below %g HU count in "
            "lesion_ml only)" % (source, ggo[0], ggo[1], cons, ggo[0]))


def _bands(ggo_hu, consolidation_hu) -> Tuple[Tuple[float, float], float]:
    lo, hi = float(ggo_hu[0]), float(ggo_hu[1])
    cons = float(consolidation_hu)
    if not (lo < hi <= cons):
        raise ValueError("HU bands must not overlap: need ggo_hu[0] < ggo_hu[1] <= "
                         "consolidation_hu, got ggo_hu=%r, consolidation_hu=%r"
                         % (tuple(ggo_hu), consolidation_hu))
    return (lo, hi), cons


# --------------------------------------------------------------------------- lungs and zones
def lung_involvement(lungs: Optional[LungMask], lesion: np.ndarray, hu: np.ndarray, spacing,
                     ggo_hu=GGO_HU, consolidation_hu=CONSOLIDATION_HU,
                     source: str = DEFAULT_SOURCE) -> dict:
    """Lesion volume, percent and density classes per lung, per lung zone and for both lungs.

    ``lungs``: the full canonical :class:`.lungs.LungMask`; ``lesion`` (bool) and ``hu`` on the
    same (K, H, W) grid; ``spacing`` (slice, row, col) mm. Returns a JSON-ready dict::

        {"method": str, "hu_bands": {...}, "lesion_outside_lungs_ml": float,
         "lungs": {"right lung": {volume_ml, lesion_ml, percent, ground_glass_ml,
                                  consolidation_ml, "zones": {"upper": {same keys}, "middle",
                                  "lower"}},
                   "left lung": {...}},
         "both": {volume_ml, lesion_ml, percent, ground_glass_ml, consolidation_ml}}

    ml rounded to 0.01, percent to 0.01 %. A lung (or zone) without voxels has ``percent`` None
    and a ``reason``. When no lungs were found (``lungs.found`` False, or ``lungs`` None) every
    value is None and ``reason`` says why; this never raises for that. It raises ValueError
    only for a caller's error: arrays of different shapes, or overlapping HU bands.
    """
    ggo, cons = _bands(ggo_hu, consolidation_hu)
    method = _method(source, ggo, cons)
    bands = {"ground_glass": [ggo[0], ggo[1]], "consolidation": [cons, None]}
    if lungs is None or not lungs.found:
        reason = "no lungs found in this volume: lung involvement is not measured"
        per_lung = {}
        for side in (RIGHT, LEFT):
            entry = _unmeasured(reason)
            entry["zones"] = {z: _unmeasured(reason) for z in ZONES}
            per_lung[LUNG_NAMES[side]] = entry
        return {"method": method, "hu_bands": bands, "reason": reason,
                "lesion_outside_lungs_ml": None, "lungs": per_lung, "both": _unmeasured(reason)}

    labels = lungs.labels
    lesion = np.asarray(lesion)
    if lesion.shape != labels.shape or np.shape(hu) != labels.shape:
        raise ValueError("lesion %s, HU %s and lung labels %s must share one grid"
                         % (lesion.shape, np.shape(hu), labels.shape))
    voxel_ml = float(np.prod([float(v) for v in spacing])) / 1000.0
    n_slices = labels.shape[0]

    # the lesion's voxels (few next to the volume): their lung, slice and HU
    kk, rr, cc = np.nonzero(lesion)
    side_of = labels[kk, rr, cc]
    hu_of = np.asarray(hu[kk, rr, cc], dtype=np.float64) if kk.size else np.zeros(0)
    is_ggo = (hu_of >= ggo[0]) & (hu_of < ggo[1])
    is_cons = hu_of >= cons
    outside = int(np.count_nonzero(side_of == 0))

    per_lung: Dict[str, dict] = {}
    totals = np.zeros(4, np.int64)  # lung, lesion, ground glass, consolidation
    for side in (RIGHT, LEFT):
        name = LUNG_NAMES[side]
        on = side_of == side
        per_slice = np.stack([
            lungs.per_slice_counts()[:, side],
            np.bincount(kk[on], minlength=n_slices),
            np.bincount(kk[on & is_ggo], minlength=n_slices),
            np.bincount(kk[on & is_cons], minlength=n_slices)]).astype(np.int64)
        whole = per_slice.sum(axis=1)
        totals += whole
        entry = _measures(*(int(v) for v in whole), voxel_ml=voxel_ml,
                          empty_reason="no %s in the lung mask" % name)
        zone_rows = {zone: (k0, k1) for zone, k0, k1 in lungs.zone_slices(side)}
        zones = {}
        for zone in ZONES:
            if zone not in zone_rows:
                zones[zone] = _measures(0, 0, 0, 0, voxel_ml, "no %s in the lung mask" % name)
                continue
            k0, k1 = zone_rows[zone]
            part = per_slice[:, k0:k1].sum(axis=1)
            zones[zone] = _measures(*(int(v) for v in part), voxel_ml=voxel_ml,
                                    empty_reason="no lung voxels in the %s zone of the %s"
                                                 % (zone, name))
        entry["zones"] = zones
        per_lung[name] = entry
    both = _measures(*(int(v) for v in totals), voxel_ml=voxel_ml,
                     empty_reason="the lung mask is empty")
    return {"method": method, "hu_bands": bands, "lesion_outside_lungs_ml": _ml(outside, voxel_ml),
            "lungs": per_lung, "both": both}


# --------------------------------------------------------------------------- lobes
def pan_lobe_score(percent: Optional[float]) -> Optional[int]:
    """Pan et al. (Radiology 2020; 295:715) lobe score of an involvement ``percent``.

    0 none, 1 < 5 %, 2 5-25 %, 3 26-49 %, 4 50-75 %, 5 > 75 %; the gaps of the visual bands are
    closed as 25 % -> 2, (25, 50) -> 3, 75 % -> 4. None for None / NaN.
    """
    if percent is None:
        return None
    p = float(percent)
    if math.isnan(p):
        return None
    if p <= 0.0:
        return 0
    if p < 5.0:
        return 1
    if p <= 25.0:
        return 2
    if p < 50.0:
        return 3
    if p <= 75.0:
        return 4
    return 5


def lobe_name(name) -> Optional[str]:
    """The standard name (:data:`LOBES`) of a lobe as segmenters name it; None if not a lobe.

    Accepts TotalSegmentator's ``lung_upper_lobe_right``, MONAIAuto3DSeg's "Right Upper lobe of
    lung" / "Middle lobe of right lung", SNOMED CT's "upper lobe of right lung", lungmask's
    label values 1-5 (:data:`LUNGMASK_LOBE_LABELS`), RUL/RML/RLL/LUL/LLL, in any case.
    """
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        return LUNGMASK_LOBE_LABELS.get(int(name))
    text = str(name).strip().lower()
    if text.isdigit():
        return LUNGMASK_LOBE_LABELS.get(int(text))
    for ch in "_-,.()/":
        text = text.replace(ch, " ")
    words = text.split()
    if len(words) == 1 and words[0] in _ABBREVIATIONS:
        return _ABBREVIATIONS[words[0]]
    if "lobe" not in words:
        return None
    sides = {w for w in words if w in ("right", "left")}
    if not sides:
        sides = {{"r": "right", "l": "left"}[w] for w in words if w in ("r", "l")}
    parts = {w for w in words if w in ("upper", "middle", "lower")}
    if len(sides) != 1 or len(parts) != 1:
        return None
    full = "%s %s lobe" % (sides.pop(), parts.pop())
    return full if full in LOBES else None  # there is no left middle lobe


def lobes_from_label_map(labels: np.ndarray,
                         names: Optional[Mapping[int, str]] = None) -> Dict[str, np.ndarray]:
    """Lobe masks from a lobe label map; ``names``: label value -> lobe name (default lungmask's)."""
    names = LUNGMASK_LOBE_LABELS if names is None else names
    return {str(n): np.asarray(labels) == int(v) for v, n in names.items()}


def lobe_involvement(lobes: Mapping[str, np.ndarray], lesion: np.ndarray, spacing) -> dict:
    """Percent of each lobe the lesion occupies and the Pan et al. 2020 CT severity score.

    ``lobes``: lobe name (any name :func:`lobe_name` accepts) -> bool mask on ``lesion``'s grid.
    Returns a JSON-ready dict::

        {"method": str,
         "lobes": {"right upper lobe": {volume_ml, lesion_ml, percent, score}, ... all five},
         "total_score": int 0-25 or None, "max_score": 25, "lesion_outside_lobes_ml": float}

    A lobe not given, or empty, has ``percent`` and ``score`` None and a ``reason``; the total
    is then None too (a sum over fewer lobes is not Pan's score), with a ``reason``. Raises
    ValueError for a name that is not a lobe, two masks for one lobe, or a shape mismatch.
    """
    lesion = np.asarray(lesion, bool)
    voxel_ml = float(np.prod([float(v) for v in spacing])) / 1000.0
    masks: Dict[str, np.ndarray] = {}
    for key, mask in lobes.items():
        std = lobe_name(key)
        if std is None:
            raise ValueError("not a lung lobe: %r (expected one of %s or an alias)"
                             % (key, ", ".join(LOBES)))
        if std in masks:
            raise ValueError("two masks for the %s (%r and another name)" % (std, key))
        mask = np.asarray(mask, bool)
        if mask.shape != lesion.shape:
            raise ValueError("the %s mask %s and the lesion %s must share one grid"
                             % (std, mask.shape, lesion.shape))
        masks[std] = mask
    out_lobes: Dict[str, dict] = {}
    missing = []
    any_lobe = np.zeros(lesion.shape, bool)
    for std in LOBES:
        if std not in masks:
            missing.append(std)
            out_lobes[std] = {"volume_ml": None, "lesion_ml": None, "percent": None,
                              "score": None, "reason": "no mask given for the %s" % std}
            continue
        m = masks[std]
        any_lobe |= m
        n = int(np.count_nonzero(m))
        les = int(np.count_nonzero(m & lesion))
        p = _percent(les, n)
        entry = {"volume_ml": _ml(n, voxel_ml), "lesion_ml": _ml(les, voxel_ml),
                 "percent": None if p is None else round(p, 2), "score": pan_lobe_score(p)}
        if p is None:
            missing.append(std)
            entry["reason"] = "the %s mask is empty" % std
        out_lobes[std] = entry
    result = {"method": ("percent of each lobe's voxels in the lesion mask; score per lobe after "
                         "Pan et al., Radiology 2020;295:715 (0 none, 1 <5 %, 2 5-25 %, "
                         "3 26-49 %, 4 50-75 %, 5 >75 %), total 0-25"),
              "lobes": out_lobes,
              "total_score": None if missing else int(sum(e["score"] for e in out_lobes.values())),
              "max_score": 5 * len(LOBES),
              "lesion_outside_lobes_ml": _ml(np.count_nonzero(lesion & ~any_lobe), voxel_ml)}
    if missing:
        result["reason"] = "no usable mask for: %s" % ", ".join(missing)
    return result


# --------------------------------------------------------------------------- input grid
def involvement_on_input_grid(ijk_to_ras, hu: np.ndarray, lung_labels: Optional[np.ndarray],
                              lesion: np.ndarray, lobes: Optional[Mapping[str, np.ndarray]] = None,
                              source: str = DEFAULT_SOURCE) -> dict:
    """:func:`lung_involvement` (and, with ``lobes``, :func:`lobe_involvement` as ``"lobes"``)
    of masks on the *input* volume's (k, j, i) grid, placed by ``ijk_to_ras``.

    For what has no canonical lung mask at hand: a review session recomputes the numbers from
    the segmentation the radiologist edited, and lobes come from another segmenter's file or
    scene. ``lung_labels``: 0 outside, :data:`.lungs.RIGHT`, :data:`.lungs.LEFT` (None: no lungs,
    every value None with a reason).
    """
    from .lungs import LungMask
    from .orientation import axial_view

    hu = np.asarray(hu)
    view = axial_view(ijk_to_ras, hu.shape)
    spacing = tuple(float(v) for v in view.spacing)
    canon_lesion = np.ascontiguousarray(view.to_canonical(np.asarray(lesion, bool)))
    lungs = None
    if lung_labels is not None:
        labels = np.ascontiguousarray(view.to_canonical(np.asarray(lung_labels, np.uint8)))
        present = set(np.unique(labels).tolist()) - {0}
        split = "none" if not present else ("separate" if present >= {RIGHT, LEFT} else "single")
        lungs = LungMask(labels, spacing, split=split)
    result = lung_involvement(lungs, canon_lesion, view.to_canonical(hu), spacing, source=source)
    if lobes:
        canon_lobes = {name: view.to_canonical(np.asarray(m, bool)) for name, m in lobes.items()}
        result["lobes"] = lobe_involvement(canon_lobes, canon_lesion, spacing)
    return result


__all__ = ["lung_involvement", "lobe_involvement", "involvement_on_input_grid", "pan_lobe_score", "lobe_name",
           "lobes_from_label_map", "GGO_HU", "CONSOLIDATION_HU", "ZONES", "LOBES",
           "LUNGMASK_LOBE_LABELS"]
