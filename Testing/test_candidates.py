"""3D candidates and false-positive reduction (ChestCTMTLLib.candidates): synthetic known answers.

A sphere is a nodule, a tube (a vessel through a few slices) and a pancake (the dome of the
diaphragm or the heart cut tangentially) are not; thick slices must not turn a real nodule
into a "flat" one; infection becomes at most one finding per lung zone.
"""
from __future__ import annotations

import numpy as np
import pytest

from ChestCTMTLLib import calibration as C
from ChestCTMTLLib.candidates import (ShapeRules, in_lung_mask, nodule_candidates,
                                      plausible_infection, shape_features, shape_verdict,
                                      zone_candidates)
from ChestCTMTLLib.lungs import LEFT, RIGHT, LungMask
from ChestCTMTLLib.postprocess import SliceBox


def grid(shape, spacing):
    k, h, w = shape
    s, r, c = spacing
    return np.meshgrid(np.arange(k) * s, np.arange(h) * r, np.arange(w) * c, indexing="ij")


def sphere(shape, spacing, centre, radius):
    zz, yy, xx = grid(shape, spacing)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


@pytest.mark.parametrize("slice_mm", [0.7, 1.25, 2.5, 5.0])
def test_sphere_is_kept_tube_and_pancake_are_dropped(slice_mm):
    spacing = (slice_mm, 0.7, 0.7)
    shape = (int(80 / slice_mm), 120, 120)
    rules = C.Calibration().shape_rules(slice_mm)
    ball = sphere(shape, spacing, (40, 40, 40), 7)
    assert shape_verdict(shape_features(ball, spacing), rules) == ""
    zz, yy, xx = grid(shape, spacing)
    tube = ((yy - 40) ** 2 + (zz - 40) ** 2 <= 3 ** 2) & (xx > 10) & (xx < 70)  # in-plane vessel
    assert "flat" in shape_verdict(shape_features(tube, spacing), rules) or \
        "tube" in shape_verdict(shape_features(tube, spacing), rules)
    vtube = ((yy - 40) ** 2 + (xx - 40) ** 2 <= 3 ** 2) & (zz > 5) & (zz < 75)  # along z
    assert "tube" in shape_verdict(shape_features(vtube, spacing), rules)
    pancake = ((yy - 40) ** 2 + (xx - 40) ** 2 <= 15 ** 2) & (np.abs(zz - 40) <= max(0.5 * slice_mm, 1.5))
    assert "flat" in shape_verdict(shape_features(pancake, spacing), rules)


def test_fitted_rules_follow_slice_thickness():
    spacing = (0.625, 0.7, 0.7)
    masks = [(sphere((48, 40, 40), spacing, (15, 14, 14), r), spacing) for r in (3, 5, 7, 9)]
    table = C.fit_shape_rules(masks, slice_mm=(0.0, 5.0), low_pct=0.0, high_pct=100.0)
    (t0, thin), (t5, thick) = table
    assert t0 == 0.0 and t5 == 5.0
    # a sphere seen through 5 mm slices looks taller than it is: the bound rises with thickness
    assert thick["min_z_ratio"] > thin["min_z_ratio"]
    rules = C.interpolate_rules(table, 2.5)
    assert thin["min_z_ratio"] <= rules.min_z_ratio <= thick["min_z_ratio"]
    # a resliced sphere still passes the rules fitted at that thickness
    mm, sp = C.reslice_mask(masks[2][0], spacing, 5.0)
    assert mm.shape[0] == 48 // 8 and sp[0] == pytest.approx(5.0)
    assert shape_verdict(shape_features(mm, sp), C.interpolate_rules(table, 5.0)) == ""


def _lungs(shape):
    labels = np.zeros(shape, np.uint8)
    labels[:, 10:90, 5:45] = RIGHT
    labels[:, 10:90, 75:115] = LEFT
    return LungMask(labels, (2.0, 1.0, 1.0))


def test_candidates_inside_the_lungs_only_and_scored_by_detection():
    shape, spacing = (60, 100, 120), (2.0, 1.0, 1.0)
    lungs = _lungs(shape)
    prob = np.zeros(shape, np.uint8)
    inside = sphere(shape, spacing, (60, 50, 30), 6)  # right lung
    outside = sphere(shape, spacing, (60, 50, 60), 6)  # between the lungs: mediastinum
    prob[inside | outside] = 230
    allowed = in_lung_mask(lungs, shape, (1, 2, 2))
    boxes = [SliceBox(30, "nodule-mass", 0.7, 45, 25, 55, 35), SliceBox(30, "nodule-mass", 0.9, 45, 55, 55, 65)]
    cands = nodule_candidates(prob, allowed, lungs, boxes, spacing, ShapeRules())
    assert len(cands) == 1 and cands[0].kept
    c = cands[0]
    assert c.score == pytest.approx(0.7) and c.lung == RIGHT and c.zone == "middle"
    centre = c.centre_index()
    assert lungs.labels[tuple(int(v) for v in centre)] == RIGHT


def test_infection_is_one_finding_per_zone():
    shape, spacing = (60, 100, 120), (2.0, 1.0, 1.0)
    lungs = _lungs(shape)
    prob = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(0)
    # twenty small patches scattered in the right lung's lower third, two in the left upper
    for _ in range(20):
        z, y, x = rng.uniform(4, 36), rng.uniform(20, 80), rng.uniform(15, 45)
        prob[sphere(shape, spacing, (z, y, x), 4)] = 200
    for z in (100, 110):
        prob[sphere(shape, spacing, (z, 50, 90), 6)] = 220
    allowed = in_lung_mask(lungs, shape, (0, 0, 0))
    infection, touching, overlay = plausible_infection(prob, allowed, spacing, ShapeRules())
    assert not touching.any()
    assert overlay.sum() >= infection.sum() > 0
    zones = zone_candidates(infection, prob, lungs, spacing)
    assert [(z.lung, z.zone) for z in zones] == [(RIGHT, "lower"), (LEFT, "upper")] or \
        sorted((z.lung, z.zone) for z in zones) == sorted([(RIGHT, "lower"), (LEFT, "upper")])
    assert all(z.features["volume_mm3"] > 1000 for z in zones)


def _stage(hu, spacing, nodule_prob, infection_prob, boxes):
    """lesion_stage on synthetic network outputs over a real lung mask of a phantom."""
    from ChestCTMTLLib.calibration import Calibration
    from ChestCTMTLLib.inference import NetworkOutputs, lesion_stage
    from ChestCTMTLLib.options import AnalysisOptions
    from ChestCTMTLLib.orientation import AxialView

    shape = hu.shape
    view = AxialView((0, 1, 2), (False, False, False), shape, tuple(spacing))
    region = tuple(slice(0, n) for n in shape)
    out = NetworkOutputs(view, None, None, np.arange(shape[0]),
                         {"covid-infection": infection_prob, "nodule-mass": nodule_prob}, boxes,
                         None, None, {}, region)
    cal = Calibration(dict(C.DEFAULTS, score_threshold=0.3))
    return lesion_stage(out, hu, AnalysisOptions(), cal, ("covid-infection", "nodule-mass"))


def test_the_lesion_stage_keeps_a_lung_nodule_and_drops_heart_and_dome():
    from test_lungs import phantom

    hu, spacing, truth = phantom(2.0, 1.0, 256)
    shape = hu.shape
    nod = np.zeros(shape, np.uint8)
    inside = sphere(shape, spacing, (170, 128, 128 + 60), 7)  # left lung
    hu[inside] = 30
    heart = sphere(shape, spacing, (120, 140, 128), 15)  # between the lungs
    zz, yy, xx = grid(shape, spacing)
    # the dome of the diaphragm cut tangentially: a round disk on two slices, inside the lung
    dome = (np.abs(zz - 100) <= 1.5) & ((yy - 128) ** 2 + (xx - (128 - 45)) ** 2 <= 15 ** 2)
    nod[inside | heart | dome] = 230
    boxes = [SliceBox(85, "nodule-mass", 0.8, 121, 181, 135, 195),  # on the nodule
             SliceBox(60, "nodule-mass", 0.9, 130, 118, 150, 138)]  # on the heart
    st = _stage(hu, spacing, nod, np.zeros(shape, np.uint8), boxes)
    kept = [c for c in st.nodules if c.kept]
    assert len(kept) == 1 and kept[0].lung == LEFT and kept[0].score == pytest.approx(0.8)
    assert st.evidence_nodule is kept[0] and not st.pattern.diffuse
    dropped = [c for c in st.nodules if not c.kept]
    assert any("flat" in c.reason for c in dropped)  # the dome
    # the heart is outside the lungs: no candidate and no overlay there
    crop_heart = heart[st.crop] & ~truth["right"][st.crop] & ~truth["left"][st.crop]
    assert not st.masks["nodule-mass"][crop_heart].any()


def test_a_solid_mass_stays_a_mass_inside_a_diffuse_process():
    from test_lungs import phantom

    hu, spacing, truth = phantom(2.0, 1.0, 256)
    shape = hu.shape
    mass = sphere(shape, spacing, (170, 128, 128 - 45), 17) & truth["right"]
    hu[mass] = 40
    nod = np.zeros(shape, np.uint8)
    nod[mass] = 240
    inf = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(3)
    for side, cx in ((truth["left"], 128 + 45), (truth["right"], 128 - 45)):
        for _ in range(12):  # ground glass in both lungs, well over 10 mL each
            z, y, x = rng.uniform(100, 240), rng.uniform(100, 156), cx + rng.uniform(-20, 20)
            patch = sphere(shape, spacing, (z, y, x), 8) & side & ~mass
            inf[patch] = 210
            hu[patch] = -600
    boxes = [SliceBox(85, "nodule-mass", 0.7, 118, 75, 138, 95)]
    st = _stage(hu, spacing, nod, inf, boxes)
    assert st.pattern.diffuse
    masses = [c for c in st.nodules if c.kept]
    assert len(masses) == 1 and masses[0].features["diameter_mm"] >= 30
    assert st.evidence_nodule is masses[0]
    assert len(st.zones) >= 2 and {z.lung for z in st.zones} == {RIGHT, LEFT}
