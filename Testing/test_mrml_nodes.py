"""Results -> MRML nodes on a real headless scene: node types, names, geometry identical to the
input, terminology-coded segments, replace semantics, and all-or-nothing building.

Results are hand-made on real CT grids (LIDC-IDRI-0002 cropped, LIDC-IDRI-0001 DICOM) so every
voxel and millimetre has a known right answer.
"""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from ChestCTMTLLib.results import CLASS_NAMES, FINDINGS_TSV_COLUMNS  # noqa: E402
from ChestCTMTLLib.volume_io import read_ct  # noqa: E402
from ChestCTMTLMRML import headless, nodes, terminology  # noqa: E402
from mrml_testutil import (box_finding, synthetic_result, with_lungs,  # noqa: E402
                           with_measurements)



@pytest.fixture()
def scene():
    app = headless.HeadlessSlicer()
    yield app.scene
    app.close()


def _snapshot(scene):
    """Every node ID and every subject-hierarchy item (id, name, parent) in the scene."""
    ids = sorted(scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes()))
    sh = scene.GetSubjectHierarchyNode()
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    tree = sorted((items.GetId(n), sh.GetItemName(items.GetId(n)), sh.GetItemParent(items.GetId(n)))
                  for n in range(items.GetNumberOfIds()))
    return ids, tree


def _matrix(node):
    return nodes.ijk_to_ras_of(node)


def test_volume_node_round_trip_copies_and_keeps_geometry(scene, small_ct):
    node = nodes.volume_node_from_ct(scene, small_ct, "small")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), small_ct.array)
    np.testing.assert_allclose(_matrix(node), small_ct.ijk_to_ras, atol=1e-9)
    back = nodes.ct_from_volume_node(node)
    np.testing.assert_array_equal(back.array, small_ct.array)
    np.testing.assert_allclose(back.ijk_to_ras, small_ct.ijk_to_ras, atol=1e-9)
    back.array[:] = 0  # a copy: the node must not change
    assert slicer.util.arrayFromVolume(node).max() == small_ct.array.max()
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
    with pytest.raises(nodes.InputError):
        nodes.ct_from_volume_node(label)


def test_result_nodes_types_names_geometry(scene, small_ct):
    volume = nodes.volume_node_from_ct(scene, small_ct, "small")
    before = slicer.util.arrayFromVolume(volume).copy()
    result = synthetic_result(small_ct)
    made = nodes.create_result_nodes(scene, volume, result)
    sh = scene.GetSubjectHierarchyNode()

    assert sh.GetItemName(made.folder_item) == "ChestCTMTL \u2013 small"
    assert sh.GetItemParent(made.folder_item) == sh.GetSceneItemID()
    for node in made.data_nodes():
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == made.folder_item
        assert node.GetNodeReference(nodes.INPUT_REFERENCE_ROLE) is volume

    seg = made.segmentation
    assert seg.IsA("vtkMRMLSegmentationNode")
    segmentation = seg.GetSegmentation()
    assert sorted(segmentation.GetSegmentIDs()) == sorted(result.lesion_masks)
    for lesion_type, mask in result.lesion_masks.items():
        np.testing.assert_array_equal(nodes.segment_mask_array(seg, lesion_type, volume), mask)
        assert segmentation.GetSegment(lesion_type).GetName() == lesion_type
    display = seg.GetDisplayNode()
    assert display.GetVisibility2DFill() and display.GetVisibility2DOutline()
    assert made.lungs is None, "no lung labels, no lung segmentation"
    # The segmentation's reference geometry is the input's grid.
    geometry = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    values = [float(v) for v in geometry.split(";")[:16]]
    np.testing.assert_allclose(np.array(values).reshape(4, 4), small_ct.ijk_to_ras, atol=1e-6)

    recon = made.reconstruction
    assert recon.IsA("vtkMRMLScalarVolumeNode") and recon.GetName() == "small reconstruction"
    np.testing.assert_allclose(_matrix(recon), _matrix(volume), atol=0)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(recon), result.reconstruction_hu)
    rdisplay = recon.GetDisplayNode()
    assert (rdisplay.GetWindow(), rdisplay.GetLevel()) == nodes.CT_LUNG_WINDOW_LEVEL
    assert not rdisplay.GetAutoWindowLevel()

    assert [r.GetName() for r in made.rois] == ["covid-infection 0.90", "nodule-mass 0.70"]
    for roi, finding in zip(made.rois, result.findings):
        assert roi.IsA("vtkMRMLMarkupsROINode") and roi.GetLocked()
        center = [0.0, 0.0, 0.0]
        roi.GetCenter(center)
        np.testing.assert_allclose(center, finding.center_ras, atol=1e-6)
        np.testing.assert_allclose(roi.GetSize(), finding.size_ras, atol=1e-6)
        assert roi.GetAttribute(nodes.TYPE_ATTR) == finding.type
        assert roi.GetAttribute(nodes.ID_ATTR) == finding.id
        assert float(roi.GetAttribute(nodes.SCORE_ATTR)) == pytest.approx(finding.score)
        assert roi.GetAttribute(nodes.STATUS_ATTR) == nodes.STATUS_UNREVIEWED
        assert roi.GetAttribute(nodes.NOTE_ATTR) == ""

    table = made.table.GetTable()
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert columns == list(FINDINGS_TSV_COLUMNS) + ["status", "note"]
    assert table.GetNumberOfRows() == len(result.findings)
    assert table.GetValueByName(1, "id").ToString() == "L2"
    assert table.GetValueByName(1, "volume_mm3").ToDouble() == pytest.approx(
        result.findings[1].row()["volume_mm3"])
    assert made.table.GetUseColumnTitleAsColumnHeader()  # the setter every Slicer >= 5.8 has
    assert made.classification_table.GetUseColumnTitleAsColumnHeader()
    classification = made.classification_table.GetTable()
    assert [classification.GetValue(r, 0).ToString() for r in range(3)] == list(CLASS_NAMES)
    probabilities = [classification.GetValue(r, 1).ToDouble() for r in range(3)]
    assert probabilities == pytest.approx([result.class_probabilities[c] for c in CLASS_NAMES])
    assert sh.GetItemAttribute(made.folder_item, nodes.PREDICTED_CLASS_ATTR) == "cancer"
    assert float(sh.GetItemAttribute(made.folder_item, nodes.PROBABILITY_ATTR_PREFIX + "covid")) \
        == pytest.approx(0.3)

    # The input is never modified.
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
    np.testing.assert_allclose(_matrix(volume), small_ct.ijk_to_ras, atol=1e-9)

    found = nodes.find_result_nodes(scene, volume)
    assert found.folder_item == made.folder_item
    assert [n.GetID() for n in found.data_nodes()] == [n.GetID() for n in made.data_nodes()]


def test_segments_carry_the_terminology(scene, small_ct):
    volume = nodes.volume_node_from_ct(scene, small_ct, "small")
    made = nodes.create_result_nodes(scene, volume, synthetic_result(small_ct))
    logic = headless.get_logic("Terminologies")
    terminology.ensure_loaded(logic)
    expected = {"covid-infection": ("SCT", "840539006"), "nodule-mass": ("SCT", "27925004")}
    for segment_id, (scheme, code) in expected.items():
        segment = made.segmentation.GetSegmentation().GetSegment(segment_id)
        entry_text = segment.GetTerminology()
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(entry_text, entry)
        assert entry.GetTerminologyContextName() == terminology.context_name()
        assert (entry.GetTypeObject().GetCodingSchemeDesignator(),
                entry.GetTypeObject().GetCodeValue()) == (scheme, code)
        assert entry.GetAnatomicRegionObject().GetCodeValue() == "39607008"  # lung
        np.testing.assert_allclose(segment.GetColor(), terminology.lesion_term(segment_id).color)


def test_rerun_replaces_only_that_volumes_results(scene, small_ct):
    a = nodes.volume_node_from_ct(scene, small_ct, "A")
    b = nodes.volume_node_from_ct(scene, small_ct, "B")
    result = synthetic_result(small_ct)
    first_a = nodes.create_result_nodes(scene, a, result)
    first_b = nodes.create_result_nodes(scene, b, result)
    snapshot = _snapshot(scene)
    with pytest.raises(nodes.ResultsExistError):
        nodes.create_result_nodes(scene, a, result)
    assert _snapshot(scene) == snapshot, "a refused re-run must not touch the scene"

    other = synthetic_result(small_ct, probabilities=(0.7, 0.2, 0.1))
    second_a = nodes.create_result_nodes(scene, a, other, replace=True)
    assert all(node.GetScene() is None for node in first_a.data_nodes())
    assert all(node.GetScene() is scene for node in first_b.data_nodes())
    assert all(node.GetScene() is scene for node in second_a.data_nodes())
    folders = nodes.find_all_result_nodes(scene)
    assert sorted(f.input_volume.GetName() for f in folders) == ["A", "B"]
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemAttribute(nodes.find_result_nodes(scene, a).folder_item,
                               nodes.PREDICTED_CLASS_ATTR) == "non-covid"
    assert nodes.find_result_nodes(scene, b).folder_item == first_b.folder_item
    assert sh.GetItemName(first_a.folder_item) in ("", None), "the old folder must be gone"
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2


@pytest.mark.parametrize("fail_at", ["lungs", "roi", "table"])
def test_failure_leaves_the_scene_as_it_was(scene, small_ct, monkeypatch, fail_at):
    volume = nodes.volume_node_from_ct(scene, small_ct, "small")
    previous = nodes.create_result_nodes(scene, volume, with_lungs(synthetic_result(small_ct)))
    assert previous.lungs is not None
    snapshot = _snapshot(scene)
    name = {"lungs": "_build_lungs", "roi": "_build_roi", "table": "_build_tables"}[fail_at]
    real = getattr(nodes, name)

    def failing(*args, **kwargs):
        real(*args, **kwargs)  # let it create its nodes, then fail
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(nodes, name, failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        nodes.create_result_nodes(scene, volume, with_lungs(synthetic_result(small_ct)),
                                  replace=True)
    assert _snapshot(scene) == snapshot, "no half-made node (a lungs node included) may remain"
    assert all(node.GetScene() is scene for node in previous.data_nodes())
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2  # the previous two


def _line_points(line):
    return np.array([line.GetNthControlPointPosition(n)
                     for n in range(line.GetNumberOfControlPoints())])


def test_nodule_axes_become_locked_lines_and_roi_descriptions(scene, small_ct):
    import json

    volume = nodes.volume_node_from_ct(scene, small_ct, "small")
    result = with_measurements(synthetic_result(small_ct))
    nodule = next(f for f in result.findings if f.type == "nodule-mass")
    made = nodes.create_result_nodes(scene, volume, result)
    sh = scene.GetSubjectHierarchyNode()
    assert [a.GetName() for a in made.axes] == [nodule.id + " long axis", nodule.id + " short axis"]
    for line, which in zip(made.axes, ("long", "short")):
        assert line.IsA("vtkMRMLMarkupsLineNode") and line.GetLocked()
        assert line.GetNumberOfControlPoints() == 2
        np.testing.assert_allclose(_line_points(line), nodule.measurements[which + "_axis_ras"],
                                   atol=1e-6)
        assert line.GetLineLengthWorld() == pytest.approx(nodule.measurements[which + "_axis_mm"],
                                                          abs=0.06)
        assert line.GetAttribute(nodes.ROLE_ATTR) == nodes.ROLE_AXIS
        assert line.GetAttribute(nodes.ID_ATTR) == nodule.id
        assert line.GetAttribute(nodes.AXIS_ATTR) == which
        assert line.GetNodeReference(nodes.INPUT_REFERENCE_ROLE) is volume
        assert sh.GetItemParent(sh.GetItemByDataNode(line)) == made.folder_item
    found = nodes.find_result_nodes(scene, volume)
    assert [a.GetID() for a in found.axes] == [a.GetID() for a in made.axes]
    assert [r.GetID() for r in found.rois] == [r.GetID() for r in made.rois]

    rois = {r.GetAttribute(nodes.ID_ATTR): r for r in made.rois}
    m = nodule.measurements
    text = rois[nodule.id].GetDescription()
    assert text == ("long {:.1f} mm \u00d7 short {:.1f} mm, mean {:.1f} mm, part-solid (solid "
                    "2.5 mm), size band 4B (research aid \u2014 not a Lung-RADS assessment)"
                    ).format(m["long_axis_mm"], m["short_axis_mm"], m["mean_diameter_mm"])
    assert rois[nodule.id].GetAttribute(nodes.MEASUREMENTS_ATTR) == text
    assert m["long_axis_mm"] > m["short_axis_mm"]
    zone = next(f for f in result.findings if f.type != "nodule-mass")
    assert not rois[zone.id].GetDescription(), "a zone finding has no measurements"
    assert json.loads(sh.GetItemAttribute(made.folder_item, nodes.INVOLVEMENT_ATTR)) == \
        result.involvement
    assert nodes.involvement_of(scene, made) == result.involvement
    table = made.table.GetTable()
    assert table.GetValueByName(1, "composition").ToString() == "part-solid"
    assert table.GetValueByName(1, "size_category").ToString() == "4B"

    # replaced with the results; a failure keeps the previous lines; switched off by option
    old = list(made.axes)
    again = nodes.create_result_nodes(scene, volume, with_measurements(synthetic_result(small_ct)),
                                      replace=True)
    assert all(a.GetScene() is None for a in old) and len(again.axes) == 2
    assert all(a.GetScene() is scene for a in again.axes)
    snapshot = _snapshot(scene)
    real = nodes._build_axes

    def failing(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("disk on fire")

    nodes._build_axes = failing
    try:
        with pytest.raises(RuntimeError, match="disk on fire"):
            nodes.create_result_nodes(scene, volume,
                                      with_measurements(synthetic_result(small_ct)), replace=True)
    finally:
        nodes._build_axes = real
    assert _snapshot(scene) == snapshot
    assert all(a.GetScene() is scene for a in again.axes)
    off = nodes.create_result_nodes(scene, volume, with_measurements(synthetic_result(small_ct)),
                                    replace=True, options=nodes.ResultOptions(measurements=False))
    assert off.axes == [] and all(a.GetScene() is None for a in again.axes)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode") == 0
    assert {r.GetAttribute(nodes.ID_ATTR): r for r in off.rois}[nodule.id].GetDescription() == text
    plain = nodes.create_result_nodes(scene, volume, synthetic_result(small_ct), replace=True)
    assert plain.axes == [] and nodes.involvement_of(scene, plain) is None
    nodes.remove_result_nodes(scene, again)  # already gone: harmless
    with_axes = nodes.create_result_nodes(scene, volume,
                                          with_measurements(synthetic_result(small_ct)),
                                          replace=True)
    nodes.remove_result_nodes(scene, nodes.find_result_nodes(scene, volume))
    assert all(a.GetScene() is None for a in with_axes.axes)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode") == 0


def test_lungs_become_a_terminology_coded_segmentation(scene, small_ct):
    volume = nodes.volume_node_from_ct(scene, small_ct, "small")
    result = with_lungs(synthetic_result(small_ct))
    made = nodes.create_result_nodes(scene, volume, result)
    sh = scene.GetSubjectHierarchyNode()
    lungs = made.lungs
    assert lungs.IsA("vtkMRMLSegmentationNode") and lungs.GetName() == "small lungs"
    assert lungs.GetAttribute(nodes.ROLE_ATTR) == nodes.ROLE_LUNGS
    assert sh.GetItemParent(sh.GetItemByDataNode(lungs)) == made.folder_item
    assert lungs.GetNodeReference(nodes.INPUT_REFERENCE_ROLE) is volume
    assert made.segmentation is not None and made.segmentation is not lungs
    segmentation = lungs.GetSegmentation()
    assert list(segmentation.GetSegmentIDs()) == ["right lung", "left lung"]
    geometry = segmentation.GetConversionParameter("Reference image geometry")
    values = [float(v) for v in geometry.split(";")[:16]]
    np.testing.assert_allclose(np.array(values).reshape(4, 4), small_ct.ijk_to_ras, atol=1e-6)

    logic = headless.get_logic("Terminologies")
    terminology.ensure_loaded(logic)
    for value, name, laterality in ((1, "right lung", ("24028007", "Right")),
                                    (2, "left lung", ("7771000", "Left"))):
        segment = segmentation.GetSegment(name)
        assert segment.GetName() == name
        mask = nodes.segment_mask_array(lungs, name, volume)
        assert int(mask.sum()) == int((result.lung_labels == value).sum()) > 0
        np.testing.assert_array_equal(mask, result.lung_labels == value)
        np.testing.assert_allclose(segment.GetColor(), terminology.lung_term(value).color)
        np.testing.assert_allclose(segment.GetColor(), np.array([197, 165, 145]) / 255.0)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
        assert entry.GetTerminologyContextName() == terminology.context_name()
        assert entry.GetCategoryObject().GetCodeValue() == "123037004"  # anatomical structure
        assert (entry.GetTypeObject().GetCodingSchemeDesignator(),
                entry.GetTypeObject().GetCodeValue()) == ("SCT", "39607008")  # lung
        assert (entry.GetTypeModifierObject().GetCodeValue(),
                entry.GetTypeModifierObject().GetCodeMeaning()) == laterality
        assert not entry.GetRegionObject().GetCodeValue()
        # Slicer's own lookup by label finds the same codes and colour in our context file
        found = slicer.vtkSlicerTerminologyEntry()
        assert logic.FindTypeInTerminologyBy3dSlicerLabel(terminology.context_name(), name, found)
        assert logic.SerializeTerminologyEntry(found).split("~")[:4] == \
            segment.GetTerminology().split("~")[:4]
        assert tuple(found.GetTypeModifierObject().GetRecommendedDisplayRGBValue()) == \
            (197, 165, 145)
    display = lungs.GetDisplayNode()
    assert display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    assert nodes.find_result_nodes(scene, volume).lungs is lungs
    table = made.table.GetTable()
    assert table.GetValueByName(0, "lung").ToString() == "right"
    assert table.GetValueByName(1, "zone").ToString() == "lower"

    # replaced with the results, removed with them; switched off by option
    again = nodes.create_result_nodes(scene, volume, with_lungs(synthetic_result(small_ct)),
                                      replace=True)
    assert lungs.GetScene() is None and again.lungs.GetScene() is scene
    plain = nodes.create_result_nodes(scene, volume, synthetic_result(small_ct), replace=True)
    assert plain.lungs is None and again.lungs.GetScene() is None
    for options in (nodes.ResultOptions(lungs=False), nodes.ResultOptions(segmentation=False)):
        off = nodes.create_result_nodes(scene, volume, with_lungs(synthetic_result(small_ct)),
                                        replace=True, options=options)
        assert off.lungs is None
        assert scene.GetFirstNodeByName("small lungs") is None


def test_mismatching_result_is_refused_without_changes(scene, small_ct):
    volume = nodes.volume_node_from_ct(scene, small_ct, "small")
    result = synthetic_result(small_ct)
    result.reconstruction_hu = result.reconstruction_hu[:-1]
    snapshot = _snapshot(scene)
    with pytest.raises(nodes.GeometryMismatchError):
        nodes.create_result_nodes(scene, volume, result)
    assert _snapshot(scene) == snapshot
    short_lungs = with_lungs(synthetic_result(small_ct))
    short_lungs.lung_labels = short_lungs.lung_labels[:, :-1]
    with pytest.raises(nodes.GeometryMismatchError):
        nodes.create_result_nodes(scene, volume, short_lungs)
    assert _snapshot(scene) == snapshot
    moved = synthetic_result(small_ct)
    moved.volume = type(small_ct)(small_ct.array, small_ct.ijk_to_ras + np.diag([0, 0, 0, 0]) +
                                  np.pad(np.ones((3, 1)), ((0, 1), (3, 0))), "moved")
    with pytest.raises(nodes.GeometryMismatchError):
        nodes.create_result_nodes(scene, volume, moved)
    assert _snapshot(scene) == snapshot


def test_options_and_study_folder(scene, small_ct):
    volume = nodes.volume_node_from_ct(scene, small_ct, "small")
    sh = scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "patient")
    study = sh.CreateStudyItem(patient, "study")
    sh.SetItemParent(sh.GetItemByDataNode(volume), study)
    result = synthetic_result(small_ct)
    options = nodes.ResultOptions(reconstruction=False, score_threshold=0.8)
    made = nodes.create_result_nodes(scene, volume, result, options=options)
    assert sh.GetItemParent(made.folder_item) == study
    assert made.reconstruction is None and made.segmentation is not None
    assert [r.GetAttribute(nodes.ID_ATTR) for r in made.rois] == ["L1"]
    assert made.table.GetTable().GetNumberOfRows() == 1
    off = nodes.ResultOptions(segmentation=False, detections=False)
    again = nodes.create_result_nodes(scene, volume, result, replace=True, options=off)
    assert again.segmentation is None and again.rois == [] and again.table is not None


def test_dicom_series_geometry_is_kept(scene, lidc0001_dicom_dir):
    ct = read_ct(lidc0001_dicom_dir)
    volume = nodes.volume_node_from_ct(scene, ct, "LIDC-IDRI-0001")
    np.testing.assert_allclose(_matrix(volume), ct.ijk_to_ras, atol=1e-9)
    k, j, i = ct.array.shape
    finding = box_finding(ct, "L1", "nodule-mass", 0.8, (300, 200, 80), (330, 230, 90))
    result = synthetic_result(ct, findings=[finding])
    made = nodes.create_result_nodes(scene, volume, result)
    np.testing.assert_allclose(_matrix(made.reconstruction), ct.ijk_to_ras, atol=0)
    mask = nodes.segment_mask_array(made.segmentation, "nodule-mass", volume)
    np.testing.assert_array_equal(np.argwhere(mask), np.argwhere(result.lesion_masks["nodule-mass"]))
    center = [0.0, 0.0, 0.0]
    made.rois[0].GetCenter(center)
    # The ROI centre is the RAS centre of its voxel box on this (LPS-stored) DICOM grid.
    expected = ct.ijk_to_ras_points([[315, 215, 85]])[0]
    np.testing.assert_allclose(center, expected, atol=1e-6)


def test_oblique_volume_geometry_is_kept(scene, small_ct):
    angle = np.deg2rad(17.0)
    rotation = np.eye(4)
    rotation[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                        [0, 0, 1]]
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]]
    oblique = type(small_ct)(small_ct.array, tilt @ rotation @ small_ct.ijk_to_ras, "oblique")
    volume = nodes.volume_node_from_ct(scene, oblique, "oblique")
    result = synthetic_result(oblique)
    made = nodes.create_result_nodes(scene, volume, result)
    np.testing.assert_allclose(_matrix(volume), oblique.ijk_to_ras, atol=1e-9)
    np.testing.assert_allclose(_matrix(made.reconstruction), oblique.ijk_to_ras, atol=0)
    for lesion_type, mask in result.lesion_masks.items():
        np.testing.assert_array_equal(
            nodes.segment_mask_array(made.segmentation, lesion_type, volume), mask)


@pytest.mark.parametrize("overlap", [False, True])
def test_lesion_segments_share_one_layer_unless_they_overlap(scene, overlap):
    """Non-overlapping lesion types share one labelmap layer (label 1, 2), as Slicer stores
    such segments (faster to build and to write); overlapping ones get a layer each. Either
    way every segment holds exactly its mask."""
    from ChestCTMTLLib.volume import CTVolume

    ct = CTVolume(np.full((6, 20, 24), -700, np.int16), np.diag([-0.7, -0.7, 2.5, 1.0]), name="ct")
    result = synthetic_result(ct)
    infection = np.zeros(ct.array.shape, np.uint8)
    infection[1:4, 2:8, 2:9] = 1
    nodule = np.zeros(ct.array.shape, np.uint8)
    nodule[2:5, 10:15, 12:20] = 1
    if overlap:
        nodule[2, 5, 5] = 1  # one voxel inside the infection too
    result.lesion_masks = {"covid-infection": infection, "nodule-mass": nodule}
    volume = nodes.volume_node_from_ct(scene, ct, "ct")
    made = nodes.create_result_nodes(scene, volume, result)
    segmentation = made.segmentation.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == (2 if overlap else 1)
    for name, mask in result.lesion_masks.items():
        np.testing.assert_array_equal(nodes.segment_mask_array(made.segmentation, name, volume), mask)
