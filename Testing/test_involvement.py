"""Lung involvement (ChestCTMTLLib.involvement): known answers on phantoms.

Every expected number below is counted by hand from how the phantom was built (box lungs) or
by brute force straight from the phantom's own masks (ellipsoid lungs), never from the code
under test. The voxel is 2.5 x 2 x 2 mm = 0.01 mL, so every volume is exact to 0.01 mL.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from ChestCTMTLLib.involvement import (CONSOLIDATION_HU, GGO_HU, LOBES, lobe_involvement,
                                       lobe_name, lobes_from_label_map, lung_involvement,
                                       pan_lobe_score)
from ChestCTMTLLib.lungs import LEFT, RIGHT, LungMask

SPACING = (2.5, 2.0, 2.0)  # 10 mm^3 = 0.01 mL per voxel
ML = 0.01
GGO, CONS, AERATED = -500, 20, -850  # HU inside, above and below the ground-glass band


def box_phantom():
    """Right lung: slices 3-14 (12 = 3 zones x 4), rows 5-14, cols 5-14 -> 1200 voxels.
    Left lung: slices 6-14 (9 = 3 x 3), rows 5-12, cols 30-39 -> 720 voxels.
    Right lesion: the whole lower zone (slices 3-6, 400 voxels): rows 5-9 ground glass (200),
    rows 10-11 consolidation (80), rows 12-14 aerated (120, lesion only).
    Left lesion: upper zone (slices 12-14), rows 5-8 -> 120 voxels, all consolidation.
    """
    labels = np.zeros((20, 20, 45), np.uint8)
    labels[3:15, 5:15, 5:15] = RIGHT
    labels[6:15, 5:13, 30:40] = LEFT
    hu = np.full(labels.shape, AERATED, np.int16)
    lesion = np.zeros(labels.shape, bool)
    lesion[3:7, 5:15, 5:15] = True  # 4 x 10 x 10 = 400
    hu[3:7, 5:10, 5:15] = GGO  # 4 x 5 x 10 = 200 ground glass
    hu[3:7, 10:12, 5:15] = CONS  # 4 x 2 x 10 = 80 consolidation (rows 12-14: 120 aerated)
    lesion[12:15, 5:9, 30:40] = True  # 3 x 4 x 10 = 120
    hu[12:15, 5:9, 30:40] = CONS
    return LungMask(labels, SPACING, split="separate"), lesion, hu


def test_box_phantom_known_answers_per_lung_zone_and_both():
    lungs, lesion, hu = box_phantom()
    res = lung_involvement(lungs, lesion, hu, SPACING)
    json.dumps(res)  # JSON-ready
    right, left = res["lungs"]["right lung"], res["lungs"]["left lung"]
    assert right["volume_ml"] == pytest.approx(1200 * ML)
    assert right["lesion_ml"] == pytest.approx(400 * ML)
    assert right["ground_glass_ml"] == pytest.approx(200 * ML)
    assert right["consolidation_ml"] == pytest.approx(80 * ML)
    assert right["percent"] == pytest.approx(round(100 * 400 / 1200, 2))
    assert right["zones"]["lower"] == {"volume_ml": pytest.approx(4.0), "lesion_ml": pytest.approx(4.0),
                                       "percent": pytest.approx(100.0),
                                       "ground_glass_ml": pytest.approx(2.0),
                                       "consolidation_ml": pytest.approx(0.8)}
    for zone in ("middle", "upper"):
        assert right["zones"][zone]["volume_ml"] == pytest.approx(4.0)
        assert right["zones"][zone]["lesion_ml"] == 0.0 and right["zones"][zone]["percent"] == 0.0
    assert left["volume_ml"] == pytest.approx(7.2)
    assert left["lesion_ml"] == pytest.approx(1.2) and left["consolidation_ml"] == pytest.approx(1.2)
    assert left["ground_glass_ml"] == 0.0
    assert left["percent"] == pytest.approx(round(100 * 120 / 720, 2))
    assert left["zones"]["upper"]["volume_ml"] == pytest.approx(2.4)
    assert left["zones"]["upper"]["percent"] == pytest.approx(50.0)
    assert left["zones"]["lower"]["lesion_ml"] == 0.0 and left["zones"]["middle"]["lesion_ml"] == 0.0
    both = res["both"]
    assert both["volume_ml"] == pytest.approx(19.2) and both["lesion_ml"] == pytest.approx(5.2)
    assert both["ground_glass_ml"] == pytest.approx(2.0) and both["consolidation_ml"] == pytest.approx(2.0)
    assert both["percent"] == pytest.approx(round(100 * 520 / 1920, 2))
    assert res["lesion_outside_lungs_ml"] == 0.0
    assert "-750" in res["method"] and "-300" in res["method"]
    assert list(right["zones"]) == ["upper", "middle", "lower"]


def test_ellipsoid_phantom_matches_brute_force_counts():
    k, h, w = 48, 64, 96
    z, y, x = np.meshgrid(np.arange(k), np.arange(h), np.arange(w), indexing="ij")
    right = ((z - 24) / 20.0) ** 2 + ((y - 32) / 25.0) ** 2 + ((x - 26) / 18.0) ** 2 <= 1
    left = ((z - 26) / 17.0) ** 2 + ((y - 32) / 24.0) ** 2 + ((x - 70) / 16.0) ** 2 <= 1
    labels = np.zeros((k, h, w), np.uint8)
    labels[right], labels[left] = RIGHT, LEFT
    rng = np.random.default_rng(0)
    draw = rng.random((k, h, w))
    hu = np.full((k, h, w), AERATED, np.int16)
    hu[draw < 0.30] = GGO  # ~30 % ground glass, ~10 % consolidation, the rest aerated
    hu[(draw >= 0.30) & (draw < 0.40)] = CONS
    lesion = (y < 40) & (labels > 0) | (x == 50)  # x == 50: between the lungs, outside both
    lungs = LungMask(labels, SPACING, split="separate")
    res = lung_involvement(lungs, lesion, hu, SPACING)
    outside = int((lesion & (labels == 0)).sum())
    assert outside > 0 and res["lesion_outside_lungs_ml"] == pytest.approx(outside * ML)
    for side, mask in ((RIGHT, right), (LEFT, left)):
        got = res["lungs"]["right lung" if side == RIGHT else "left lung"]
        les = lesion & mask
        assert got["volume_ml"] == pytest.approx(mask.sum() * ML)
        assert got["lesion_ml"] == pytest.approx(les.sum() * ML)
        assert got["ground_glass_ml"] == pytest.approx((les & (hu == GGO)).sum() * ML)
        assert got["consolidation_ml"] == pytest.approx((les & (hu == CONS)).sum() * ML)
        assert got["percent"] == pytest.approx(100.0 * les.sum() / mask.sum(), abs=0.005)
        ks = np.nonzero(mask.any(axis=(1, 2)))[0]
        edges = np.linspace(ks[0], ks[-1] + 1, 4)
        bounds = [int(round(e)) for e in edges]
        for i, zone in enumerate(("lower", "middle", "upper")):
            k0, k1 = bounds[i], bounds[i + 1]
            zm, zl = mask[k0:k1], les[k0:k1]
            zgot = got["zones"][zone]
            assert zgot["volume_ml"] == pytest.approx(zm.sum() * ML)
            assert zgot["lesion_ml"] == pytest.approx(zl.sum() * ML)
            assert zgot["ground_glass_ml"] == pytest.approx((zl & (hu[k0:k1] == GGO)).sum() * ML)
            assert zgot["percent"] == pytest.approx(100.0 * zl.sum() / zm.sum(), abs=0.005)
        zone_sum = sum(got["zones"][z]["volume_ml"] for z in ("lower", "middle", "upper"))
        assert zone_sum == pytest.approx(got["volume_ml"])


def test_hu_band_edges():
    labels = np.zeros((3, 1, 6), np.uint8)
    labels[:] = RIGHT
    hu = np.zeros(labels.shape, np.int16)
    hu[:, 0, :] = [-751, -750, -301, -300, 0, 500]
    lesion = np.ones(labels.shape, bool)
    res = lung_involvement(LungMask(labels, SPACING), lesion, hu, SPACING)["lungs"]["right lung"]
    assert res["ground_glass_ml"] == pytest.approx(3 * 2 * ML)  # -750 and -301
    assert res["consolidation_ml"] == pytest.approx(3 * 3 * ML)  # -300, 0, 500
    assert res["lesion_ml"] == pytest.approx(3 * 6 * ML)  # -751 counts as lesion only
    # Lung CT Analyzer's infiltrated / collapsed split at -400 HU
    alt = lung_involvement(LungMask(labels, SPACING), lesion, hu, SPACING, ggo_hu=(-750, -400),
                           consolidation_hu=-400)["lungs"]["right lung"]
    assert alt["ground_glass_ml"] == pytest.approx(3 * 1 * ML)
    assert alt["consolidation_ml"] == pytest.approx(3 * 4 * ML)
    with pytest.raises(ValueError):
        lung_involvement(LungMask(labels, SPACING), lesion, hu, SPACING, ggo_hu=(-750, -200),
                         consolidation_hu=-300)
    assert GGO_HU == (-750.0, -300.0) and CONSOLIDATION_HU == -300.0


@pytest.mark.parametrize("lungs", [None, LungMask(np.zeros((6, 5, 5), np.uint8), SPACING, 0.0, "none")],
                         ids=["None", "not-found"])
def test_lungs_not_found_gives_none_and_a_reason(lungs):
    lesion = np.ones((6, 5, 5), bool)
    res = lung_involvement(lungs, lesion, np.zeros((6, 5, 5)), SPACING)
    json.dumps(res)
    assert "no lungs found" in res["reason"]
    assert res["lesion_outside_lungs_ml"] is None
    for entry in (res["both"], res["lungs"]["right lung"], res["lungs"]["left lung"]):
        assert all(entry[k] is None for k in ("volume_ml", "lesion_ml", "percent",
                                              "ground_glass_ml", "consolidation_ml"))
        assert entry["reason"]
    for zone in res["lungs"]["left lung"]["zones"].values():
        assert zone["percent"] is None and zone["reason"]


def test_one_lung_absent():
    lungs, lesion, hu = box_phantom()
    labels = lungs.labels.copy()
    labels[labels == RIGHT] = 0
    res = lung_involvement(LungMask(labels, SPACING, split="single"), lesion, hu, SPACING)
    right, left = res["lungs"]["right lung"], res["lungs"]["left lung"]
    assert right["volume_ml"] == 0.0 and right["percent"] is None and "right lung" in right["reason"]
    assert all(z["percent"] is None and z["reason"] for z in right["zones"].values())
    assert left["percent"] == pytest.approx(round(100 * 120 / 720, 2))
    assert res["both"]["volume_ml"] == pytest.approx(7.2) and res["both"]["lesion_ml"] == pytest.approx(1.2)
    assert res["lesion_outside_lungs_ml"] == pytest.approx(4.0)  # the former right-lung lesion


def test_shape_mismatch_is_a_callers_error():
    lungs, lesion, hu = box_phantom()
    with pytest.raises(ValueError):
        lung_involvement(lungs, lesion[1:], hu, SPACING)


# --------------------------------------------------------------------------- lobes
@pytest.mark.parametrize("percent,score", [(0.0, 0), (0.1, 1), (4.9, 1), (5.0, 2), (25.0, 2),
                                           (25.1, 3), (49.9, 3), (50.0, 4), (75.0, 4), (75.1, 5),
                                           (100.0, 5), (None, None), (float("nan"), None)])
def test_pan_score_bands_at_their_edges(percent, score):
    assert pan_lobe_score(percent) == score


def _lobe_grid(counts):
    """Five lobes of 1000 voxels each (one slab of 10 x 100 per lobe); counts[i] lesion voxels."""
    grid = np.zeros((5, 10, 100), np.uint8)
    lesion = np.zeros(grid.shape, bool)
    for i, n in enumerate(counts):
        grid[i] = i + 1
        lesion[i].ravel()[:n] = True  # a view: writes through
    return grid, lesion


TOTALSEG = ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right",
            "lung_upper_lobe_left", "lung_lower_lobe_left"]
MONAI = ["Right Upper lobe of lung", "Middle lobe of right lung", "Right Lower lobe of lung",
         "Left Upper lobe of lung", "Left Lower lobe of lung"]


@pytest.mark.parametrize("names,counts,scores", [
    (list(LOBES), [0, 49, 250, 500, 751], [0, 1, 2, 4, 5]),
    (TOTALSEG, [50, 251, 499, 750, 1000], [2, 3, 3, 4, 5]),
    (MONAI, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
], ids=["standard", "totalsegmentator", "monaiauto3dseg"])
def test_lobe_scores_and_total(names, counts, scores):
    grid, lesion = _lobe_grid(counts)
    lobes = {n: grid == i + 1 for i, n in enumerate(names)}
    res = lobe_involvement(lobes, lesion, SPACING)
    json.dumps(res)
    for i, std in enumerate(LOBES):
        entry = res["lobes"][std]
        assert entry["volume_ml"] == pytest.approx(1000 * ML)
        assert entry["lesion_ml"] == pytest.approx(counts[i] * ML)
        assert entry["percent"] == pytest.approx(counts[i] / 10.0)
        assert entry["score"] == scores[i]
    assert res["total_score"] == sum(scores) and res["max_score"] == 25
    assert "reason" not in res


def test_lungmask_label_map_and_aliases():
    grid, lesion = _lobe_grid([0, 0, 0, 0, 0])
    # lungmask: 1 LUL, 2 LLL, 3 RUL, 4 RML, 5 RLL; put 300 lesion voxels (30 %) into label 4
    lesion[3].ravel()[:300] = True
    res = lobe_involvement(lobes_from_label_map(grid), lesion, SPACING)
    assert res["lobes"]["right middle lobe"]["score"] == 3 and res["total_score"] == 3
    assert lobe_name("RLL") == "right lower lobe"
    assert lobe_name("Structure of upper lobe of left lung") == "left upper lobe"
    assert lobe_name("Upper lobe of lung R") == "right upper lobe"
    assert lobe_name(5) == "right lower lobe"
    assert lobe_name("left middle lobe") is None and lobe_name("right lung") is None


def test_missing_empty_unknown_and_duplicate_lobes():
    grid, lesion = _lobe_grid([100, 0, 0, 0, 0])
    lobes = {n: grid == i + 1 for i, n in enumerate(LOBES)}
    partial = dict(lobes)
    del partial["left lower lobe"]
    res = lobe_involvement(partial, lesion, SPACING)
    assert res["total_score"] is None and "left lower lobe" in res["reason"]
    assert res["lobes"]["left lower lobe"]["score"] is None
    assert res["lobes"]["right upper lobe"]["score"] == 2
    assert res["lesion_outside_lobes_ml"] == 0.0
    empty = dict(lobes)
    empty["right middle lobe"] = np.zeros(grid.shape, bool)
    res = lobe_involvement(empty, lesion, SPACING)
    assert res["lobes"]["right middle lobe"]["percent"] is None and res["total_score"] is None
    with pytest.raises(ValueError):
        lobe_involvement({"lingula": grid == 1}, lesion, SPACING)
    with pytest.raises(ValueError):
        lobe_involvement({"RUL": grid == 1, "lung_upper_lobe_right": grid == 1}, lesion, SPACING)
