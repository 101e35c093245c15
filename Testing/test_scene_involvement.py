"""A review's involvement is measured on the segmentation as the radiologist left it, and on
lobes another extension put in the scene (real MRML, a real CT's slices, known masks)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import slicer
from ChestCTMTLLib.involvement import GGO_HU, LOBES, pan_lobe_score
from ChestCTMTLLib.lungs import RIGHT
from ChestCTMTLMRML import nodes, review
from mrml_testutil import synthetic_result, with_lungs


@pytest.fixture(scope="module")
def ct(lidc0002_nifti):
    from ChestCTMTLLib.volume import CTVolume
    from ChestCTMTLLib.volume_io import read_ct

    full = read_ct(lidc0002_nifti)
    k0 = full.array.shape[0] // 2
    m = full.ijk_to_ras.copy()
    m[:3, 3] = full.ijk_to_ras_points(np.array([[0, 0, k0]]))[0]
    return CTVolume(np.ascontiguousarray(full.array[k0:k0 + 9]), m, name="LIDC-0002 slab")


def _case(scene, ct):
    volume = nodes.volume_node_from_ct(scene, ct, "LIDC-0002 slab")
    result = with_lungs(synthetic_result(ct))
    infection = np.zeros(ct.array.shape, np.uint8)
    right = result.lung_labels == RIGHT
    infection[2:7][right[2:7]] = 1  # five of nine slices of the right lung
    result.lesion_masks = {"covid-infection": infection,
                           "nodule-mass": np.zeros(ct.array.shape, np.uint8)}
    result.involvement = {"method": "the analysis", "lungs": {}, "both": {}}
    result_nodes = nodes.create_result_nodes(scene, volume, result)
    return volume, result, result_nodes


def _expected(ct, result, infection):
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    right = result.lung_labels == RIGHT
    on = (infection > 0) & right
    hu = ct.array
    return {"lesion_ml": round(on.sum() * voxel_ml, 2),
            "ground_glass_ml": round((on & (hu >= GGO_HU[0]) & (hu < GGO_HU[1])).sum() * voxel_ml, 2),
            "percent": round(100.0 * on.sum() / right.sum(), 2)}


def test_review_involvement_follows_the_edited_segmentation(scene, ct, tmp_path):
    volume, result, result_nodes = _case(scene, ct)
    report = review.review_report(scene, volume)
    assert report["involvement_analysis"] == result.involvement  # the analysis' own, kept
    right = report["involvement"]["lungs"]["right lung"]
    expected = _expected(ct, result, result.lesion_masks["covid-infection"])
    for key, value in expected.items():
        assert right[key] == pytest.approx(value, abs=0.011)
    assert report["involvement"]["lungs"]["left lung"]["lesion_ml"] == 0
    assert "as it is in the scene now" in report["involvement"]["method"]

    # the reviewer erases two of the five slices: the numbers follow
    edited = result.lesion_masks["covid-infection"].copy()
    edited[2:4] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, result_nodes.segmentation,
                                                     "covid-infection", volume)
    paths = review.save_review(scene, volume, tmp_path / "edited.mrb")
    saved = json.loads(paths["json"].read_text())
    after = saved["involvement"]["lungs"]["right lung"]
    for key, value in _expected(ct, result, edited).items():
        assert after[key] == pytest.approx(value, abs=0.011)
    assert after["lesion_ml"] < right["lesion_ml"]
    md = paths["markdown"].read_text()
    assert "## Lung involvement (measured on the segmentation as edited)" in md
    assert "No lobe segmentation in the scene" in md


def test_lobes_in_the_scene_give_the_pan_score(scene, ct, tmp_path):
    volume, result, result_nodes = _case(scene, ct)
    labels = result.lung_labels
    k = ct.array.shape[0]
    lobes = {}
    right, left = labels == RIGHT, labels == 2
    lobes["right upper lobe"] = right & (np.arange(k) >= 6)[:, None, None]
    lobes["right middle lobe"] = right & ((np.arange(k) >= 3) & (np.arange(k) < 6))[:, None, None]
    lobes["right lower lobe"] = right & (np.arange(k) < 3)[:, None, None]
    lobes["left upper lobe"] = left & (np.arange(k) >= 5)[:, None, None]
    lobes["left lower lobe"] = left & (np.arange(k) < 5)[:, None, None]
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for name in LOBES:  # TotalSegmentator's names, as its Slicer module creates segments
        side, part = name.split()[0], name.split()[1]
        tsname = "lung_%s_lobe_%s" % (part, side)
        sid = seg.GetSegmentation().AddEmptySegment(tsname, tsname)
        slicer.util.updateSegmentBinaryLabelmapFromArray(lobes[name].astype(np.uint8), seg, sid, volume)
    report = review.review_report(scene, volume)
    lobar = report["involvement"]["lobes"]
    infection = result.lesion_masks["covid-infection"] > 0
    total = 0
    for name in LOBES:
        percent = 100.0 * (infection & lobes[name]).sum() / lobes[name].sum()
        assert lobar["lobes"][name]["percent"] == pytest.approx(percent, abs=0.006)
        assert lobar["lobes"][name]["score"] == pan_lobe_score(percent)
        total += pan_lobe_score(percent)
    assert lobar["total_score"] == total
    assert lobar["lobes"]["left upper lobe"]["score"] == 0
    md = review.report_markdown(report)
    assert "CT severity score (Pan et al., Radiology 2020): {} / 25".format(total) in md

    # four lobes only: no lobar score is claimed
    seg.GetSegmentation().RemoveSegment(seg.GetSegmentation().GetSegmentIdBySegmentName(
        "lung_lower_lobe_left"))
    report = review.review_report(scene, volume)
    assert "lobes" not in report["involvement"]
    assert "No lobe segmentation in the scene" in review.report_markdown(report)
