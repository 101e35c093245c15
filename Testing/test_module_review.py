"""Reviewing results with the Slicer module's Logic (ChestCTMTL.py) on real MRML, headless:
accept / reject findings, save and reload a session, reports that follow an edited
segmentation.

``ChestCTMTL.py`` is imported unchanged; only Slicer's Qt/application layer is stood in
(Testing/slicer_standins.py). The results are known answers (mrml_testutil.synthetic_result)
on real LIDC-IDRI-0001 slices read by Slicer's own DICOM reader, because only a known answer
shows that a recomputed lesion volume is right.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

import slicer_standins  # noqa: E402

slicer_standins.install()

from ChestCTMTLMRML import nodes, review  # noqa: E402

import ChestCTMTL as module  # noqa: E402
from mrml_testutil import synthetic_result, with_lungs, with_measurements  # noqa: E402
from test_module_logic import load_slices  # noqa: E402


@pytest.fixture()
def reviewed_case(scene, lidc_files):
    """Known results (two boxes, two findings) on real CT slices, put in the scene by the Logic."""
    volume = load_slices(lidc_files, 60, 6, "LIDC review")
    logic = module.ChestCTMTLLogic()
    ct = logic.volumeToCT(volume)
    result = synthetic_result(ct)
    result_nodes = logic.createResultNodes(volume, result)
    return volume, logic, result, result_nodes


def _roi(result_nodes, finding_id):
    return next(r for r in result_nodes.rois if r.GetAttribute(nodes.ID_ATTR) == finding_id)


def test_finding_status_sets_attributes_colour_and_table(reviewed_case):
    volume, logic, result, result_nodes = reviewed_case
    roi = _roi(result_nodes, "L1")
    assert logic.findingReview(roi) == ("unreviewed", "")
    original = roi.GetDisplayNode().GetColor()
    logic.setFindingStatus(roi, "accepted", "solid, 8 mm")
    assert roi.GetAttribute("ChestCTMTL.status") == "accepted"
    assert roi.GetAttribute("ChestCTMTL.note") == "solid, 8 mm"
    assert roi.GetDisplayNode().GetColor() == pytest.approx(review.STATUS_COLORS["accepted"])
    table = result_nodes.table
    row = [table.GetCellText(r, table.GetColumnIndex("id")) for r in range(table.GetNumberOfRows())].index("L1")
    assert table.GetCellText(row, table.GetColumnIndex("status")) == "accepted"
    assert table.GetCellText(row, table.GetColumnIndex("note")) == "solid, 8 mm"
    logic.setFindingStatus(roi, "uncertain")  # note kept when not given
    assert logic.findingReview(roi) == ("uncertain", "solid, 8 mm")
    logic.setFindingStatus(roi, "unreviewed", "")
    assert roi.GetDisplayNode().GetColor() == pytest.approx(original)
    with pytest.raises(review.ReviewError):
        logic.setFindingStatus(roi, "maybe")
    with pytest.raises(review.ReviewError):
        logic.setFindingStatus(result_nodes.table, "accepted")
    assert logic.findingReview(roi) == ("unreviewed", "")
    summary = logic.resultsSummary(volume)
    assert [f["id"] for f in summary["findings"]] == ["L1", "L2"]  # by score


def test_review_survives_save_close_load(reviewed_case, scene, tmp_path):
    volume, logic, result, result_nodes = reviewed_case
    logic.setFindingStatus(_roi(result_nodes, "L1"), "accepted", "typical nodule")
    logic.setFindingStatus(_roi(result_nodes, "L2"), "rejected", "vessel, \"not\" a lesion | sure")
    paths = logic.saveReview(volume, tmp_path / "out" / "case.mrb")
    assert set(paths) == {"mrb", "json", "markdown", "csv"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    assert not [p for p in paths["mrb"].parent.iterdir() if p.name.startswith(".")]  # no temp left

    scene.Clear(False)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 0
    assert scene.ReadFromMRB(str(paths["mrb"]))
    state = logic.loadReview()
    by_id = {scene.GetNodeByID(k).GetAttribute(nodes.ID_ATTR): v for k, v in state.items()}
    assert by_id == {"L1": ("accepted", "typical nodule"),
                     "L2": ("rejected", "vessel, \"not\" a lesion | sure")}
    loaded_volume = slicer.util.getFirstNodeByClassByName("vtkMRMLScalarVolumeNode", "LIDC review")
    summary = logic.resultsSummary(loaded_volume)
    assert {f["id"]: f["status"] for f in summary["findings"]} == {"L1": "accepted", "L2": "rejected"}
    roi = next(r for r in logic.resultNodes(loaded_volume).rois if r.GetAttribute(nodes.ID_ATTR) == "L2")
    assert roi.GetDisplayNode().GetColor() == pytest.approx(review.STATUS_COLORS["rejected"])
    assert roi.GetLocked()


def test_report_contents_and_volumes_follow_an_edited_segmentation(reviewed_case, tmp_path):
    volume, logic, result, result_nodes = reviewed_case
    voxel_mm3 = float(np.prod(result.volume.spacing))
    logic.setFindingStatus(_roi(result_nodes, "L2"), "uncertain", "check prior")
    paths = logic.saveReview(volume, tmp_path / "before.mrb")
    report = json.loads(paths["json"].read_text())
    masks = result.lesion_masks
    expected = {k: float(m.sum()) * voxel_mm3 for k, m in masks.items()}
    assert report["lesion_volumes_mm3"] == pytest.approx(expected, abs=0.1)
    assert report["lung_volumes_ml"] is None, "no lung segmentation, no lung volumes"
    assert report["verdict"] == result.predicted_class
    assert report["probabilities"] == pytest.approx(result.class_probabilities)
    assert report["model"] == result.model.to_dict()
    assert report["research_use_only"] is True and report["date"][:2] == "20"
    findings = {f["id"]: f for f in report["findings"]}
    assert findings["L2"]["status"] == "uncertain" and findings["L2"]["note"] == "check prior"
    assert findings["L1"]["status"] == "unreviewed"
    for f in result.findings:
        assert findings[f.id]["volume_mm3_detected"] == pytest.approx(f.volume_mm3, abs=0.1)
        assert findings[f.id]["volume_mm3_segmentation"] == pytest.approx(
            masks[f.type].sum() * voxel_mm3, abs=0.1)
    assert report["review_counts"] == {"accepted": 0, "rejected": 0, "uncertain": 1, "unreviewed": 1}
    md = paths["markdown"].read_text()
    assert "Research use only" in md and "check prior" in md and result.predicted_class in md
    csv_rows = paths["csv"].read_text().splitlines()
    assert csv_rows[0].split(",") == list(review.CSV_COLUMNS) and len(csv_rows) == 3

    # The reviewer erases half of the nodule and adds an island far from every finding.
    seg = result_nodes.segmentation
    nodule = nodes.segment_mask_array(seg, "nodule-mass", volume)
    kk, jj, ii = np.nonzero(nodule)
    edited = nodule.copy()
    edited[:, :, ii.min():ii.min() + (ii.max() - ii.min() + 1) // 2] = 0
    kept = int(edited.sum())
    assert 0 < kept < int(nodule.sum())
    kz = int(kk[0])
    assert set(kk) == {kz}  # the known nodule lies in one slice ...
    edited[kz + 1] = edited[kz]  # ... which the reviewer extends into the next (outside its box)
    edited[0, 0:3, 0:3] = 1  # 9 voxels in a corner, not touching the finding's box
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, seg, "nodule-mass", volume)
    report2 = json.loads(logic.saveReview(volume, tmp_path / "after.mrb")["json"].read_text())
    assert report2["lesion_volumes_mm3"]["nodule-mass"] == pytest.approx((2 * kept + 9) * voxel_mm3, abs=0.1)
    assert report2["lesion_volumes_mm3"]["covid-infection"] == pytest.approx(expected["covid-infection"], abs=0.1)
    f2 = {f["id"]: f for f in report2["findings"]}
    assert f2["L2"]["volume_mm3_segmentation"] == pytest.approx(2 * kept * voxel_mm3, abs=0.1)
    assert f2["L2"]["volume_mm3_detected"] == pytest.approx(findings["L2"]["volume_mm3_detected"])


def test_report_has_lung_volumes_that_follow_an_edited_lung_segmentation(scene, lidc_files,
                                                                         tmp_path):
    volume = load_slices(lidc_files, 60, 6, "LIDC lungs")
    logic = module.ChestCTMTLLogic()
    result = with_lungs(synthetic_result(logic.volumeToCT(volume)))
    result_nodes = logic.createResultNodes(volume, result)
    assert result_nodes.lungs is not None
    voxel_ml = float(np.prod(result.volume.spacing)) / 1000.0
    expected = {"right lung": float((result.lung_labels == 1).sum()) * voxel_ml,
                "left lung": float((result.lung_labels == 2).sum()) * voxel_ml}
    paths = logic.saveReview(volume, tmp_path / "before.mrb")
    report = json.loads(paths["json"].read_text())
    assert report["lung_volumes_ml"] == pytest.approx(expected, abs=0.05)
    assert {f["id"]: (f["lung"], f["zone"]) for f in report["findings"]} == {
        "L1": ("right", "upper"), "L2": ("left", "lower")}
    md = paths["markdown"].read_text()
    assert "## Lung volumes" in md and "| right lung | {:.1f} |".format(expected["right lung"]) in md
    assert "| L1 | covid-infection | right | upper |" in md
    csv_rows = paths["csv"].read_text().splitlines()
    assert csv_rows[0].split(",") == list(review.CSV_COLUMNS)
    assert csv_rows[1].split(",")[-2:] == ["right", "upper"]

    # The reviewer erases the right lung's first slice: its volume follows, the left's stays.
    lungs = result_nodes.lungs
    right = nodes.segment_mask_array(lungs, "right lung", volume)
    removed = int(right[0].sum())
    assert removed > 0
    right[0] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(right, lungs, "right lung", volume)
    report2 = json.loads(logic.saveReview(volume, tmp_path / "after.mrb")["json"].read_text())
    assert report2["lung_volumes_ml"]["right lung"] == pytest.approx(
        expected["right lung"] - removed * voxel_ml, abs=0.05)
    assert report2["lung_volumes_ml"]["left lung"] == pytest.approx(expected["left lung"], abs=0.05)
    np.testing.assert_array_equal(nodes.segment_mask_array(lungs, "left lung", volume),
                                  result.lung_labels == 2)


def test_summary_and_report_carry_involvement_and_measurements(scene, lidc_files, tmp_path):
    volume = load_slices(lidc_files, 60, 6, "LIDC measured")
    logic = module.ChestCTMTLLogic()
    result = with_measurements(with_lungs(synthetic_result(logic.volumeToCT(volume))))
    result_nodes = logic.createResultNodes(volume, result)
    assert len(result_nodes.axes) == 2
    summary = logic.resultsSummary(volume)
    assert summary["involvement"] == result.involvement
    assert review.involvement_line(summary["involvement"]) == \
        "right 2.8 %, left 7.5 % (ground glass 141 mL, consolidation 55 mL)"
    nodule = next(f for f in result.findings if f.type == "nodule-mass")
    m = nodule.measurements
    by_id = {f["id"]: f for f in summary["findings"]}
    assert by_id[nodule.id]["long_axis_mm"] == pytest.approx(m["long_axis_mm"])
    assert by_id[nodule.id]["composition"] == "part-solid"
    assert by_id[nodule.id]["size_category"] == "4B"
    zone = next(f for f in result.findings if f.type != "nodule-mass")
    assert by_id[zone.id]["long_axis_mm"] is None and by_id[zone.id]["composition"] == ""

    paths = logic.saveReview(volume, tmp_path / "measured.mrb")
    report = json.loads(paths["json"].read_text())
    assert report["involvement_analysis"] == result.involvement
    assert report["involvement"]["lungs"]["right lung"]["volume_ml"] > 0  # measured on the scene
    findings = {f["id"]: f for f in report["findings"]}
    for key in ("long_axis_mm", "short_axis_mm", "mean_diameter_mm", "solid_component_mm"):
        assert findings[nodule.id][key] == pytest.approx(m[key], abs=0.05)
    assert findings[nodule.id]["size_category"] == "4B"
    assert findings[nodule.id]["measurements"].startswith("long {:.1f} mm".format(m["long_axis_mm"]))
    assert findings[zone.id]["mean_diameter_mm"] is None
    md = paths["markdown"].read_text()
    assert "## Lung involvement (measured on the segmentation as edited)" in md
    assert "| {} | {:.1f} | {:.1f} |".format(nodule.id, m["long_axis_mm"], m["short_axis_mm"]) in md
    assert "not a Lung-RADS assessment" in md

    # after save, close and load: lines, description and involvement come back
    scene.Clear(False)
    assert scene.ReadFromMRB(str(paths["mrb"]))
    logic.loadReview()
    loaded = slicer.util.getFirstNodeByClassByName("vtkMRMLScalarVolumeNode", "LIDC measured")
    again = logic.resultNodes(loaded)
    assert sorted(a.GetName() for a in again.axes) == sorted(
        [nodule.id + " long axis", nodule.id + " short axis"])
    roi = next(r for r in again.rois if r.GetAttribute(nodes.ID_ATTR) == nodule.id)
    assert roi.GetDescription() == findings[nodule.id]["measurements"]
    assert logic.resultsSummary(loaded)["involvement"] == result.involvement
    logic.setFindingStatus(roi, "rejected")  # the axes take the finding's review colour
    for axis in again.axes:
        assert axis.GetDisplayNode().GetColor() == pytest.approx(review.STATUS_COLORS["rejected"])

    logic.createResultNodes(loaded, synthetic_result(logic.volumeToCT(loaded)), replace=True)
    assert logic.resultsSummary(loaded)["involvement"] is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode") == 0


def test_save_review_without_results_writes_nothing(scene, lidc_files, tmp_path):
    volume = load_slices(lidc_files, 60, 4, "CT")
    with pytest.raises(review.ReviewError):
        module.ChestCTMTLLogic().saveReview(volume, tmp_path / "x.mrb")
    assert list(tmp_path.iterdir()) == []


def test_center_on_finding_moves_the_slice_views(reviewed_case, scene):
    volume, logic, result, result_nodes = reviewed_case
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    roi = _roi(result_nodes, "L2")
    center = logic.centerOnFinding(roi)
    np.testing.assert_allclose(center, result.findings[1].center_ras, atol=1e-6)
    slice_to_ras = slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS())
    assert slice_to_ras[2, 3] == pytest.approx(center[2], abs=1e-6)  # axial slice through it
