"""Case folders: every file is read back by slicer-core in a FRESH scene and round-trips; the
folder appears whole or not at all; case names never collide with existing folders."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from ChestCTMTLLib.lungs import LUNG_NAMES  # noqa: E402
from ChestCTMTLLib.results import CLASS_NAMES, FINDINGS_TEXT_COLUMNS, FINDINGS_TSV_COLUMNS  # noqa: E402
from ChestCTMTLMRML import files, headless, nodes, terminology  # noqa: E402
from mrml_testutil import synthetic_result, with_lungs  # noqa: E402



@pytest.fixture(scope="module")
def written(small_ct, tmp_path_factory):
    """One case written with an .mrb, shared by the read-back tests (read-only)."""
    result = synthetic_result(small_ct)
    out = tmp_path_factory.mktemp("out")
    case = files.write_case(None, small_ct, result, out / "small", mrb=True,
                            input_path="/data/small.nii.gz")
    return case, result


@pytest.fixture()
def fresh():
    app = headless.HeadlessSlicer()
    yield app
    app.close()


def _read_volume(app, path):
    return app.logics["Volumes"].AddArchetypeVolume(str(path), "read", 0)


def _nodes_of(scene, class_name):
    return [scene.GetNthNodeByClass(n, class_name)
            for n in range(scene.GetNumberOfNodesByClass(class_name))]


@pytest.fixture(scope="module")
def written_lungs(small_ct, tmp_path_factory):
    """One case whose result has lung labels, with an .mrb (read-only)."""
    result = with_lungs(synthetic_result(small_ct))
    out = tmp_path_factory.mktemp("out-lungs")
    return files.write_case(None, small_ct, result, out / "small", mrb=True), result


def test_case_folder_contents(written, small_ct):
    case, _ = written
    assert case.name == "small" and case.is_dir()
    expected = set(files.CASE_FILES) | {"findings.schema.tsv", "small.mrb", files.PREVIEW_FILE}
    assert set(os.listdir(case)) == expected, "no lung labels, no lungs.seg.nrrd"
    assert [p.name for p in case.parent.iterdir()] == ["small"], "no temporary leftovers"


def _read_segmentation(scene, path):
    """A .seg.nrrd read back by Slicer's own segmentation storage node."""
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "read")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(seg)
    return seg


def test_lungs_file_round_trips_with_the_input_geometry(written_lungs, small_ct, fresh):
    case, result = written_lungs
    expected = set(files.CASE_FILES) | {files.LUNGS_FILE, "findings.schema.tsv", "small.mrb",
                                        files.PREVIEW_FILE}
    assert set(os.listdir(case)) == expected
    scene = fresh.scene
    reference = nodes.volume_node_from_ct(scene, small_ct, "reference")
    seg = _read_segmentation(scene, case / files.LUNGS_FILE)
    segmentation = seg.GetSegmentation()
    assert list(segmentation.GetSegmentIDs()) == ["right lung", "left lung"]
    for value, name in ((1, "right lung"), (2, "left lung")):
        segment = segmentation.GetSegment(name)
        assert segment.GetName() == name
        assert segment.GetTerminology() == terminology.lung_term(value).entry
        np.testing.assert_allclose(segment.GetColor(), terminology.lung_term(value).color,
                                   atol=1e-6)
        mask = nodes.segment_mask_array(seg, name, reference)
        assert int(mask.sum()) == int((result.lung_labels == value).sum()) > 0
        np.testing.assert_array_equal(mask, result.lung_labels == value)
    geometry = segmentation.GetConversionParameter("Reference image geometry")
    values = [float(v) for v in geometry.split(";")[:16]]
    np.testing.assert_allclose(np.array(values).reshape(4, 4), small_ct.ijk_to_ras, atol=1e-5)
    # The file itself is one labelmap layer (0, 1 right, 2 left) on the input's exact grid.
    volume = fresh.logics["Volumes"].AddArchetypeVolume(str(case / files.LUNGS_FILE), "raw", 1)
    np.testing.assert_allclose(nodes.ijk_to_ras_of(volume), small_ct.ijk_to_ras, atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), result.lung_labels)


def test_lungs_in_report_json_and_mrb(written_lungs, small_ct, fresh):
    case, result = written_lungs
    with open(case / files.REPORT_FILE, encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["lungs"] == json.loads(json.dumps(result.lungs))
    assert [(f["lung"], f["zone"]) for f in report["findings"]] == [("right", "upper"),
                                                                     ("left", "lower")]
    scene = fresh.scene
    assert scene.ReadFromMRB(str(case / "small.mrb"))
    volume = scene.GetFirstNodeByName("small")
    found = nodes.find_result_nodes(scene, volume)
    assert found.lungs is not None and found.lungs.GetName() == "small lungs"
    assert found.segmentation is not None and found.segmentation is not found.lungs
    for value, name in ((1, "right lung"), (2, "left lung")):
        np.testing.assert_array_equal(nodes.segment_mask_array(found.lungs, name, volume),
                                      result.lung_labels == value)


def test_segmentation_file_round_trips(written, small_ct, fresh):
    case, result = written
    scene = fresh.scene
    reference = nodes.volume_node_from_ct(scene, small_ct, "reference")
    seg = _read_segmentation(scene, case / files.SEGMENTATION_FILE)
    segmentation = seg.GetSegmentation()
    assert sorted(segmentation.GetSegmentIDs()) == sorted(result.lesion_masks)
    for lesion_type, mask in result.lesion_masks.items():
        segment = segmentation.GetSegment(lesion_type)
        assert segment.GetName() == lesion_type
        assert segment.GetTerminology() == terminology.lesion_term(lesion_type).entry
        np.testing.assert_array_equal(nodes.segment_mask_array(seg, lesion_type, reference), mask)


def test_reconstruction_file_round_trips(written, small_ct, fresh):
    case, result = written
    volume = _read_volume(fresh, case / files.RECONSTRUCTION_FILE)
    np.testing.assert_allclose(nodes.ijk_to_ras_of(volume), small_ct.ijk_to_ras, atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), result.reconstruction_hu)


def test_one_markups_file_loads_as_one_roi_per_finding(written, fresh):
    case, result = written
    with open(case / files.MARKUPS_FILE, encoding="utf-8") as handle:
        doc = json.load(handle)
    assert [m["type"] for m in doc["markups"]] == ["ROI"] * len(result.findings)
    fresh.logics["Markups"].LoadMarkups(str(case / files.MARKUPS_FILE), "findings")
    rois = _nodes_of(fresh.scene, "vtkMRMLMarkupsROINode")
    assert len(rois) == len(result.findings) == 2
    for roi, finding in zip(rois, result.findings):
        assert roi.GetName() == nodes.roi_name(finding)
        center = [0.0, 0.0, 0.0]
        roi.GetCenter(center)
        np.testing.assert_allclose(center, finding.center_ras, atol=1e-3)
        np.testing.assert_allclose(roi.GetSize(), finding.size_ras, atol=1e-3)
        assert roi.GetLocked()


def test_findings_tsv_exact_columns_and_rows(written, fresh):
    case, result = written
    with open(case / files.FINDINGS_FILE, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == list(FINDINGS_TSV_COLUMNS)
    assert len(rows) == 1 + len(result.findings)
    for row, finding in zip(rows[1:], result.findings):
        expected = finding.row()
        for column, value in zip(FINDINGS_TSV_COLUMNS, row):
            if column in FINDINGS_TEXT_COLUMNS:
                assert value == expected[column]
            elif expected[column] == "":  # a measurement that does not apply: NaN in Slicer's table
                assert value.lower() in ("", "nan")
            else:
                assert float(value) == pytest.approx(expected[column])
    # Slicer's own table reader reads it back with numeric columns.
    table = fresh.scene.AddNewNodeByClass("vtkMRMLTableNode", "tsv")
    storage = table.CreateDefaultStorageNode()
    storage.SetFileName(str(case / files.FINDINGS_FILE))
    assert storage.ReadData(table)
    assert table.GetTable().GetNumberOfRows() == len(result.findings)
    assert table.GetTable().GetColumnByName("score").IsNumeric()


def test_report_json_schema(written, small_ct):
    case, result = written
    with open(case / files.REPORT_FILE, encoding="utf-8") as handle:
        report = json.load(handle)
    assert {"classification", "predicted_class", "findings", "model", "timings_s",
            "input"} <= set(report)
    assert list(report["classification"]) == list(CLASS_NAMES)
    assert sum(report["classification"].values()) == pytest.approx(1.0, abs=1e-6)
    assert report["predicted_class"] == max(report["classification"],
                                            key=report["classification"].get)
    assert report["findings"] == [f.row() for f in result.findings]
    assert all(list(f) == list(FINDINGS_TSV_COLUMNS) for f in report["findings"])
    assert set(report["model"]) == {"id", "version", "sha256"}
    assert all(isinstance(v, float) for v in report["timings_s"].values())
    geometry = small_ct.geometry_dict()
    assert report["input"]["path"] == "/data/small.nii.gz"
    assert report["input"]["size"] == geometry["size"] == [128, 100, 6]
    for key in ("spacing", "origin", "direction"):
        assert report["input"][key] == pytest.approx(geometry[key])


def test_mrb_opens_with_input_and_all_results(written, small_ct, fresh):
    case, result = written
    scene = fresh.scene
    assert scene.ReadFromMRB(str(case / "small.mrb"))
    volume = scene.GetFirstNodeByName("small")
    assert volume is not None and volume.IsA("vtkMRMLScalarVolumeNode")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), small_ct.array)
    np.testing.assert_allclose(nodes.ijk_to_ras_of(volume), small_ct.ijk_to_ras, atol=1e-5)
    found = nodes.find_result_nodes(scene, volume)
    assert found is not None, "the results folder must be found again after loading"
    assert len(found.rois) == len(result.findings)
    assert found.reconstruction is not None and found.table is not None
    assert found.rois[0].GetAttribute(nodes.STATUS_ATTR) == nodes.STATUS_UNREVIEWED
    for lesion_type, mask in result.lesion_masks.items():
        np.testing.assert_array_equal(
            nodes.segment_mask_array(found.segmentation, lesion_type, volume), mask)
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemAttribute(found.folder_item, nodes.PREDICTED_CLASS_ATTR) == "cancer"


def test_case_names_never_collide(tmp_path, small_ct):
    (tmp_path / "other-case").mkdir()
    (tmp_path / "other-case" / "report.json").write_text("{}")
    result = synthetic_result(small_ct)
    made = []
    for _ in range(3):
        case_dir = files.case_dir_for(tmp_path, "small")
        made.append(files.write_case(None, small_ct, result, case_dir).name)
    assert made == ["small", "small-2", "small-3"]
    assert (tmp_path / "other-case" / "report.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-case", "small", "small-2",
                                                          "small-3"]
    with pytest.raises(FileExistsError):
        files.write_case(None, small_ct, result, tmp_path / "small")


@pytest.mark.parametrize("break_at,mrb", [("write_findings_tsv", False),
                                          ("write_markups_file", True),
                                          ("preview_png.save_drawn_png", False)])
def test_failure_leaves_no_folder_and_scene_unchanged(tmp_path, small_ct, monkeypatch, break_at,
                                                      mrb):
    """Whatever fails (preview.png is encoded in a thread of its own), nothing is left."""
    app = headless.HeadlessSlicer()
    try:
        scene = app.scene
        count = scene.GetNumberOfNodes()

        def broken(*args, **kwargs):
            raise OSError("No space left on device")

        owner, _, name = break_at.rpartition(".")
        monkeypatch.setattr(files.preview_png if owner else files, name, broken)
        with pytest.raises(OSError, match="No space"):
            files.write_case(scene, small_ct, synthetic_result(small_ct), tmp_path / "small",
                             mrb=mrb)
        assert list(tmp_path.iterdir()) == [], "no partial or temporary folder may remain"
        assert scene.GetNumberOfNodes() == count
    finally:
        app.close()


def test_shared_scene_and_volume_node_input(tmp_path, small_ct):
    """In Slicer the batch builds in slicer.mrmlScene: the scene must end as it began, and a
    volume node (with its own reviewed results) is copied, never touched."""
    app = headless.HeadlessSlicer()
    try:
        scene = app.scene
        volume = nodes.volume_node_from_ct(scene, small_ct, "small")
        existing = nodes.create_result_nodes(scene, volume, synthetic_result(small_ct))
        ids = sorted(scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes()))
        case = files.write_case(scene, volume, synthetic_result(small_ct), tmp_path / "small")
        assert sorted(scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())) == ids
        assert nodes.find_result_nodes(scene, volume).folder_item == existing.folder_item
        assert (case / files.SEGMENTATION_FILE).is_file()
    finally:
        app.close()


def test_preview_is_optional_and_in_the_segment_colours(tmp_path, small_ct):
    from matplotlib.image import imread

    result = synthetic_result(small_ct)
    without = files.write_case(None, small_ct, result, tmp_path / "plain", preview=False)
    assert files.PREVIEW_FILE not in os.listdir(without)
    case = files.write_case(None, small_ct, result, tmp_path / "small")
    image = imread(str(case / files.PREVIEW_FILE))[..., :3]
    for lesion_type in result.lesion_masks:  # some pixels carry Slicer's colour exactly
        colour = np.asarray(terminology.lesion_term(lesion_type).color)
        assert (np.abs(image - colour).max(axis=-1) < 0.03).sum() > 20, lesion_type


def test_no_findings_gives_empty_but_valid_files(tmp_path, small_ct, fresh):
    result = synthetic_result(small_ct, findings=[])
    case = files.write_case(None, small_ct, result, tmp_path / "small")
    with open(case / files.MARKUPS_FILE, encoding="utf-8") as handle:
        doc = json.load(handle)
    assert doc["markups"] == []
    # the newest markups schema in Slicer 5.8.0-5.12.3 (Modules/Loadable/Markups/Resources/Schema)
    assert doc["@schema"].endswith("/Resources/Schema/markups-schema-v1.0.3.json#")
    with open(case / files.FINDINGS_FILE, encoding="utf-8") as handle:
        assert handle.read().strip().split("\t") == list(FINDINGS_TSV_COLUMNS)
    fresh.logics["Markups"].LoadMarkups(str(case / files.MARKUPS_FILE), "findings")
    assert fresh.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 0


def test_markups_file_holds_the_axis_lines_slicer_loads_back(small_ct, tmp_path, fresh):
    """The nodules' long and short axes travel in findings.mrk.json next to the ROIs, and
    Slicer's markups reader makes line nodes of them at the measured end points."""
    from mrml_testutil import with_lungs, with_measurements

    result = with_measurements(with_lungs(synthetic_result(small_ct)))
    case = files.write_case(None, small_ct, result, tmp_path / "measured", preview=False)
    with open(case / files.MARKUPS_FILE, encoding="utf-8") as handle:
        doc = json.load(handle)
    nodule = next(f for f in result.findings if f.type == "nodule-mass")
    assert sorted(m["type"] for m in doc["markups"]) == ["Line", "Line", "ROI", "ROI"]
    fresh.logics["Markups"].LoadMarkups(str(case / files.MARKUPS_FILE), "findings")
    lines = {n.GetName(): n for n in _nodes_of(fresh.scene, "vtkMRMLMarkupsLineNode")}
    assert sorted(lines) == sorted([nodes.axis_name(nodule, "long"), nodes.axis_name(nodule, "short")])
    assert len(_nodes_of(fresh.scene, "vtkMRMLMarkupsROINode")) == 2
    for which in ("long", "short"):
        line = lines[nodes.axis_name(nodule, which)]
        ends = [list(line.GetNthControlPointPositionWorld(n)) for n in range(2)]
        length = float(np.linalg.norm(np.subtract(ends[1], ends[0])))
        assert length == pytest.approx(nodule.measurements[which + "_axis_mm"], abs=0.05)
        assert line.GetLocked()


def test_writing_a_bundle_keeps_file_names_but_adds_storage_nodes(tmp_path, small_ct, fresh):
    """Why write_case builds the .mrb in a scratch scene: Slicer restores the file names after
    writing a bundle but leaves a default storage node on every node that had none
    (vtkMRMLScene::SaveSceneToSlicerDataBundleDirectory, 5.8.0 to 5.12.3)."""
    volume = nodes.volume_node_from_ct(fresh.scene, small_ct, "small")
    volume.AddDefaultStorageNode()
    volume.GetStorageNode().SetFileName(str(tmp_path / "elsewhere.nrrd"))
    table = fresh.scene.AddNewNodeByClass("vtkMRMLTableNode", "a table")
    assert table.GetStorageNode() is None
    assert fresh.scene.WriteToMRB(str(tmp_path / "scene.mrb"))
    assert volume.GetStorageNode().GetFileName() == str(tmp_path / "elsewhere.nrrd")
    assert table.GetStorageNode() is not None


def test_writing_leaves_the_result_and_the_ct_as_they_were(small_ct, tmp_path):
    """The scratch nodes use the arrays' memory (no copies): writing, with and without a
    bundle, must not change a voxel of the CT, the reconstruction or the lung labels."""
    result = with_lungs(synthetic_result(small_ct))
    result.reconstruction_hu = (small_ct.array // 2).astype(np.int16)
    before = {"ct": small_ct.array.copy(), "recon": result.reconstruction_hu.copy(),
              "lungs": result.lung_labels.copy(),
              **{k: m.copy() for k, m in result.lesion_masks.items()}}
    files.write_case(None, small_ct, result, tmp_path / "a", preview=False)
    files.write_case(None, small_ct, result, tmp_path / "b", mrb=True, preview=False)
    np.testing.assert_array_equal(small_ct.array, before["ct"])
    np.testing.assert_array_equal(result.reconstruction_hu, before["recon"])
    np.testing.assert_array_equal(result.lung_labels, before["lungs"])
    for name, mask in result.lesion_masks.items():
        np.testing.assert_array_equal(mask, before[name])


def test_written_segmentations_go_without_copying_their_shared_layer(small_ct, tmp_path, fresh):
    """Segments that share one labelmap layer would each be copied out of it when their node
    goes (vtkSegmentation::SeparateSegmentLabelmap, two full-volume passes per segment); a
    removed segmentation drops its segments' labelmaps first (nodes._remove_node), so nothing
    is left to separate, and the files keep every voxel."""
    result = with_lungs(synthetic_result(small_ct))
    scene = fresh.scene
    volume = nodes.volume_node_from_ct(scene, small_ct, "ct", share=True)
    made = nodes.create_result_nodes(scene, volume, result,
                                     options=nodes.ResultOptions(share_arrays=True))
    for node in (made.segmentation, made.lungs):
        segmentation = node.GetSegmentation()
        assert segmentation.GetNumberOfLayers() == 1 < segmentation.GetNumberOfSegments()
    nodes.remove_result_nodes(scene, made)
    for node in (made.segmentation, made.lungs):
        segmentation = node.GetSegmentation()
        assert segmentation.GetNumberOfLayers() == 0  # no voxels left to copy out
        for segment_id in segmentation.GetSegmentIDs():
            assert segmentation.GetSegment(segment_id).GetRepresentation("Binary labelmap") is None
    case = files.write_case(None, small_ct, result, tmp_path / "case", preview=False)
    lungs = _read_segmentation(fresh.scene, case / files.LUNGS_FILE)
    reference = nodes.volume_node_from_ct(fresh.scene, small_ct, "reference")
    for value, name in LUNG_NAMES.items():
        np.testing.assert_array_equal(
            nodes.segment_mask_array(lungs, name, reference) > 0, result.lung_labels == value)
