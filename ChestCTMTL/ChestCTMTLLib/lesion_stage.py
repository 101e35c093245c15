"""After the network: lungs, lesion masks inside them, 3D candidates, zones, the lesion pattern.

The one implementation of the steps between :func:`.inference.run_network` and the verdict;
``Analyzer.apply`` and, through it, the evaluation commands run it. Lesions exist only around
the lungs, so everything after the lung mask works on the lungs' bounding box (plus margin).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import numpy as np

from .calibration import Calibration
from .lungs import LungMask
from .options import AnalysisOptions
from .postprocess import SliceBox


@dataclass
class LesionStage:
    """What the lung-aware post-processing made of the network outputs (canonical grid).

    Lesions exist only around the lungs, so everything after the lung mask runs on ``crop``
    (the lungs' bounding box plus the margin): ``masks`` are on that crop; candidates' boxes
    are on the full canonical grid.
    """

    lungs: Optional[LungMask]  # full canonical grid
    crop: tuple  # slices of the canonical grid the masks cover
    #: lesion type -> bool, inside the lungs, on ``crop``; emptied by the Analyzer once they
    #: are in the result's LesionMasks (the result's copy is the one to read)
    masks: Dict[str, np.ndarray]
    nodules: list  # candidates.Candidate, kept and dropped, best first
    zones: list  # candidates.Candidate per lung zone
    pattern: object  # verdict.LesionPattern
    evidence_nodule: object  # the nodule Candidate counted as evidence for cancer, or None
    infection: Optional[np.ndarray] = None  # bool on ``crop``: what the zones and involvement count


def _lesion_crop(lungs: Optional[LungMask], shape, margin) -> tuple:
    if lungs is None or not lungs.found or lungs.bbox is None:
        return tuple(slice(0, n) for n in shape)
    bb = lungs.bbox
    return tuple(slice(max(0, b.start - m - 1), min(n, b.stop + m + 1))
                 for b, m, n in zip(bb, margin, shape))


def lesion_stage(outputs: "NetworkOutputs", canon_hu: np.ndarray, options: AnalysisOptions,
                 cal: Calibration, lesion_types: Iterable[str], prog: Optional["_Progress"] = None,
                 timings: Optional[Dict[str, float]] = None) -> LesionStage:
    """Lungs, lesion masks restricted to them, 3D candidates, zones and the lesion pattern.

    The one implementation of the steps after the network that ``analyze`` and the
    evaluation commands run. It takes over ``outputs.seg_prob`` (emptied: the crops it works on
    replace them).
    """
    from .candidates import (in_lung_mask, is_solid_mass, nodule_candidates, plausible_infection,
                             shifted, touching_zone, zone_candidates)
    from .lungs import grow_into_lesions, segment_lungs
    from .verdict import cancer_evidence, lesion_pattern

    timings = {} if timings is None else timings
    check = prog.check if prog is not None else (lambda: None)
    t = time.perf_counter()
    spacing = outputs.view.spacing
    s_mm, r_mm, c_mm = spacing
    thr = int(math.ceil(options.seg_threshold * 255.0))
    types = [tname for tname in lesion_types if tname in outputs.seg_prob]
    lungs = segment_lungs(canon_hu, spacing)
    margin = tuple(int(math.ceil(options.lung_margin_mm / max(v, 1e-6))) if options.lung_margin_mm
                   else 0 for v in spacing)
    crop = _lesion_crop(lungs, canon_hu.shape, margin)
    offset = [c.start for c in crop]
    lungs_c = LungMask(lungs.labels[crop], spacing, lungs.airway_ml, lungs.split)  # a view
    prob = {tname: outputs.prob_crop(tname, crop) for tname in types}
    # the stage takes the maps over: where the crop reaches past the network's region its
    # probabilities are copies, and the region's maps would be held twice until the end
    outputs.seg_prob = {}
    raw = {tname: p >= thr for tname, p in prob.items()}
    if raw and lungs.found:
        any_lesion = np.zeros(lungs_c.labels.shape, bool)
        for m in raw.values():
            any_lesion |= m
        if grow_into_lesions(lungs_c, any_lesion):
            lungs.invalidate()
        del any_lesion
    timings["lungs"] = timings.get("lungs", 0.0) + time.perf_counter() - t
    check()
    t = time.perf_counter()
    allowed = in_lung_mask(lungs_c, lungs_c.labels.shape, margin)
    del raw
    check()
    rules = cal.shape_rules(s_mm)
    boxes = [SliceBox(b.slice - offset[0], b.type, b.score, b.r0 - offset[1], b.c0 - offset[2],
                      b.r1 - offset[1], b.c1 - offset[2]) for b in outputs.boxes]
    nodules, zones = [], []
    if "nodule-mass" in prob:
        nodules = nodule_candidates(prob["nodule-mass"], allowed, lungs_c, boxes, spacing, rules,
                                    options.seg_threshold, options.min_island_mm3,
                                    hu=canon_hu[crop])
    masks = {}
    infection = touching = None
    if "covid-infection" in prob:
        near = touching_zone([c for c in nodules if c.kept], allowed.shape)
        infection, touching, masks["covid-infection"] = plausible_infection(
            prob["covid-infection"], allowed, spacing, rules, options.seg_threshold,
            options.min_island_mm3, near)
        del near
    shape = allowed.shape
    del allowed  # CT-crop-sized: the stages below need only its shape
    if "nodule-mass" in prob:
        # the overlay: every island of at least min_island_mm3 that lies mostly in a lung
        overlay = np.zeros(shape, bool)
        for c in nodules:
            if c.features.get("in_lung_fraction", 1.0) >= 0.5:
                overlay[c.bbox] |= c.mask
        masks["nodule-mass"] = overlay
    if "covid-infection" in masks and lungs.found:
        # the margin is for nodules' edges only (slab by slab: no crop-sized temporary)
        _and_inside_lungs(masks["covid-infection"], lungs_c.labels)
    check()
    # solid masses stand apart: neither part of a diffuse process nor of its burden
    masses = [c for c in nodules if is_solid_mass(c)]
    near_mass = touching_zone(masses, shape) if masses else None
    lesion = np.zeros(shape, bool) if infection is None else infection.copy()
    if near_mass is not None and infection is not None:
        lesion[_islands_touching(infection, near_mass)] = False
    del near_mass
    for c in nodules:
        if c.kept and not is_solid_mass(c):
            lesion[c.bbox] |= c.mask
    pattern = lesion_pattern(lesion, lungs_c if lungs.found else None, spacing, cal)
    if pattern.diffuse:
        # a diffuse process: its nodule-shaped islands are part of it, reported by zone
        for c in nodules:
            if c.kept and not is_solid_mass(c):
                c.kept, c.reason = False, "part of a diffuse bilateral process (reported by zone)"
        infection = lesion
        evidence = cancer_evidence(masses, s_mm, cal)
    else:
        evidence = cancer_evidence(nodules, s_mm, cal)
        del lesion
        if infection is not None:
            # infection islands touching a listed nodule/mass are that lesion seen twice
            infection[touching] = False  # its own array (plausible_infection's), not a mask's
    del touching
    if infection is not None and lungs.found:
        p_inf = prob["covid-infection"]
        if pattern.diffuse and "nodule-mass" in prob:
            p_inf = np.maximum(p_inf, prob["nodule-mass"])
        zone_boxes = [b for b in boxes if pattern.diffuse or b.type == "covid-infection"]
        zones = zone_candidates(infection, p_inf, lungs_c, spacing, zone_boxes)
        # a lung's infection is listed only from the volume that makes it a process rather
        # than scattered islands (the same floor as a diffuse process's, per lung)
        floor_mm3 = 1000.0 * float(cal.verdict["infection_min_ml_per_lung"])
        per_lung: Dict[int, float] = {}
        for z in zones:
            per_lung[z.lung] = per_lung.get(z.lung, 0.0) + z.features["volume_mm3"]
        for z in zones:
            if per_lung[z.lung] < floor_mm3:
                z.kept, z.reason = False, "below %g mL of infection in this lung" % (floor_mm3 / 1000)
        zones = [z for z in zones if z.kept] + [z for z in zones if not z.kept]
    for c in list(nodules) + list(zones):
        shifted(c, offset)
    timings["candidates"] = timings.get("candidates", 0.0) + time.perf_counter() - t
    return LesionStage(lungs, crop, masks, nodules, zones, pattern, evidence, infection)


def _and_inside_lungs(mask: np.ndarray, labels: np.ndarray, chunk: int = 32) -> None:
    """``mask &= labels > 0`` in place, a few slices at a time."""
    for k0 in range(0, mask.shape[0], chunk):
        part = mask[k0:k0 + chunk]
        part &= labels[k0:k0 + chunk] > 0


def _islands_touching(mask: np.ndarray, near: np.ndarray) -> np.ndarray:
    """The 3D components (26-connected) of ``mask`` that overlap ``near``."""
    from .postprocess import components_26

    out = np.zeros(mask.shape, bool)
    for sl, comp in components_26(mask):
        if near[sl][comp].any():
            out[sl] |= comp
    return out
