"""The headless scene is real MRML: Slicer's readers give the geometry SimpleITK reads, and
Slicer's own storage nodes round-trip every file type the extension writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from ChestCTMTLLib.volume import ijk_to_ras_from_itk  # noqa: E402
from ChestCTMTLMRML import headless  # noqa: E402


def _ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _expected(image: sitk.Image) -> np.ndarray:
    return ijk_to_ras_from_itk(image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def _fresh_scene():
    scene = headless.get_scene()
    scene.Clear(False)
    return scene


def _load_volume(paths, name):
    files = vtk.vtkStringArray()
    for p in paths:
        files.InsertNextValue(str(p))
    logic = headless.get_logic("Volumes")
    return logic.AddArchetypeVolume(str(paths[0]), name, 0, files)


def test_scene_has_module_logics_and_subject_hierarchy():
    scene = _fresh_scene()
    for name in ("Volumes", "Segmentations", "Markups", "SubjectHierarchy", "Tables",
                 "Terminologies"):
        assert headless.get_logic(name) is not None
    assert scene.GetSubjectHierarchyNode() is not None
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "t")
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemByDataNode(table) != 0, "new data nodes must get subject-hierarchy items"


def test_nifti_geometry_matches_simpleitk(lidc0002_nifti):
    _fresh_scene()
    node = _load_volume([lidc0002_nifti], "nifti")
    image = sitk.ReadImage(str(lidc0002_nifti))
    np.testing.assert_allclose(_ijk_to_ras(node), _expected(image), atol=1e-4)
    assert slicer.util.arrayFromVolume(node).shape == sitk.GetArrayViewFromImage(image).shape


def test_dicom_geometry_and_voxels_match_simpleitk(lidc0001_dicom_dir):
    _fresh_scene()
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(lidc0001_dicom_dir))
    assert len(files) == 133
    reader.SetFileNames(files)
    image = reader.Execute()
    node = _load_volume(list(files), "dicom")
    np.testing.assert_allclose(_ijk_to_ras(node), _expected(image), atol=1e-3)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image))


def test_nrrd_geometry_matches_simpleitk(lidc0002_nifti, tmp_path):
    # An oblique NRRD made from real data: a rotated direction must survive too.
    image = sitk.ReadImage(str(lidc0002_nifti))[:, :, 100:110]
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    image.SetDirection(tuple((rot @ np.array(image.GetDirection()).reshape(3, 3)).ravel()))
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(path))
    _fresh_scene()
    node = _load_volume([path], "oblique")
    np.testing.assert_allclose(_ijk_to_ras(node), _expected(image), atol=1e-4)


def _write(node, path):
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(node), f"writing {path} failed"
    return path


def _read(scene, class_name, path):
    node = scene.AddNewNodeByClass(class_name)
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"reading {path} failed"
    return node


def test_files_round_trip_in_a_fresh_scene(lidc0002_nifti, tmp_path):
    scene = _fresh_scene()
    image = sitk.ReadImage(str(lidc0002_nifti))[:, :, 120:130]
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    volume = _load_volume([path], "ct")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = seg.GetSegmentation().AddEmptySegment("nodule-mass")
    mask = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    mask[2:6, 200:230, 150:170] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, segment_id, volume)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "finding 1")
    roi.SetCenter(10.0, -20.0, 30.0)
    roi.SetSize(5.0, 6.0, 7.0)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "findings")
    column = table.AddColumn()
    column.SetName("score")
    table.AddEmptyRow()
    table.SetCellText(0, 0, "0.75")

    _write(seg, tmp_path / "lesions.seg.nrrd")
    _write(roi, tmp_path / "findings.mrk.json")
    _write(table, tmp_path / "findings.tsv")
    assert json.loads((tmp_path / "findings.mrk.json").read_text())["markups"][0]["type"] == "ROI"
    assert scene.WriteToMRB(str(tmp_path / "case.mrb"))

    scene.Clear(False)
    seg2 = _read(scene, "vtkMRMLSegmentationNode", tmp_path / "lesions.seg.nrrd")
    volume2 = _load_volume([path], "ct2")
    got = slicer.util.arrayFromSegmentBinaryLabelmap(
        seg2, seg2.GetSegmentation().GetNthSegmentID(0), volume2)
    np.testing.assert_array_equal(got, mask)
    roi2 = _read(scene, "vtkMRMLMarkupsROINode", tmp_path / "findings.mrk.json")
    np.testing.assert_allclose(roi2.GetCenter(), (10.0, -20.0, 30.0), atol=1e-6)
    np.testing.assert_allclose(roi2.GetSize(), (5.0, 6.0, 7.0), atol=1e-6)
    table2 = _read(scene, "vtkMRMLTableNode", tmp_path / "findings.tsv")
    assert table2.GetCellText(0, 0) == "0.75"

    scene.Clear(False)
    assert scene.ReadFromMRB(str(tmp_path / "case.mrb"))
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    reloaded = scene.GetFirstNodeByName("ct")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(reloaded),
                                  sitk.GetArrayFromImage(image))
