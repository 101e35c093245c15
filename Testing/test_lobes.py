"""Lobes from other segmenters: reading their files onto the CT, the Pan et al. score in the
analysis (``--lobes``), and involvement recomputed in a review from the segmentation as edited
and from lobes in the scene."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ChestCTMTLLib.errors import InputError
from ChestCTMTLLib.involvement import (LOBES, LUNGMASK_LOBE_LABELS, involvement_on_input_grid,
                                       pan_lobe_score)
from ChestCTMTLLib.lobes_io import TOTALSEGMENTATOR_LOBE_LABELS, LobesError, read_lobes
from ChestCTMTLLib.volume import CTVolume

TOTALSEG_FILES = {"right upper lobe": "lung_upper_lobe_right", "right middle lobe":
                  "lung_middle_lobe_right", "right lower lobe": "lung_lower_lobe_right",
                  "left upper lobe": "lung_upper_lobe_left", "left lower lobe": "lung_lower_lobe_left"}


def _sitk():
    import SimpleITK as sitk

    return sitk


def _oblique_ct(shape=(12, 20, 24)) -> CTVolume:
    """A CT placed like a real one (LPS-stored, 0.8 x 0.8 x 2.5 mm, tilted, origin off zero),
    so an axis swap or flip in the readers shows."""
    c, s = np.cos(0.2), np.sin(0.2)
    m = np.eye(4)
    m[:3, :3] = np.array([[-c, -s, 0], [s, -c, 0], [0, 0, 1]]) @ np.diag([0.8, 0.8, 2.5])
    m[:3, 3] = [30.0, -12.0, -90.0]
    return CTVolume(np.full(shape, -800, np.int16), m, name="oblique")


def _known_lobes(shape) -> dict:
    """Five disjoint boxes, each unique, on the (k, j, i) grid."""
    k, j, i = shape
    boxes = {"right upper lobe": (slice(8, 12), slice(0, 10), slice(0, 12)),
             "right middle lobe": (slice(4, 8), slice(0, 10), slice(0, 12)),
             "right lower lobe": (slice(0, 4), slice(0, 10), slice(0, 12)),
             "left upper lobe": (slice(6, 12), slice(10, 20), slice(12, 24)),
             "left lower lobe": (slice(0, 6), slice(12, 20), slice(12, 24))}
    out = {}
    for name, box in boxes.items():
        m = np.zeros(shape, bool)
        m[box] = True
        out[name] = m
    return out


def _image(volume: CTVolume, array: np.ndarray):
    from ChestCTMTLLib.volume_io import volume_to_image

    return volume_to_image(volume, array)


def test_totalsegmentator_folder_with_other_structures(tmp_path):
    ct = _oblique_ct()
    lobes = _known_lobes(ct.array.shape)
    sitk = _sitk()
    for name, mask in lobes.items():
        sitk.WriteImage(_image(ct, mask.astype(np.uint8)), str(tmp_path / (TOTALSEG_FILES[name] + ".nii.gz")))
    sitk.WriteImage(_image(ct, np.ones(ct.array.shape, np.uint8)), str(tmp_path / "heart.nii.gz"))
    read = read_lobes(tmp_path, ct)
    assert list(read) == list(LOBES)
    for name in LOBES:
        np.testing.assert_array_equal(read[name], lobes[name])


@pytest.mark.parametrize("convention", ["lungmask", "totalsegmentator"])
def test_label_maps_of_lungmask_and_totalsegmentator(tmp_path, convention):
    ct = _oblique_ct()
    lobes = _known_lobes(ct.array.shape)
    table = LUNGMASK_LOBE_LABELS if convention == "lungmask" else TOTALSEGMENTATOR_LOBE_LABELS
    labels = np.zeros(ct.array.shape, np.uint8)
    for value, name in table.items():
        labels[lobes[name]] = value
    if convention == "totalsegmentator":
        labels[0, 0, 0] = 51  # the heart, as in a full --ml file
    path = tmp_path / "lobes.nii.gz"
    _sitk().WriteImage(_image(ct, labels), str(path))
    read = read_lobes(path, ct)
    for name in LOBES:
        expected = lobes[name].copy()
        if convention == "totalsegmentator":
            expected[0, 0, 0] = False
        np.testing.assert_array_equal(read[name], expected)


def test_a_coarser_grid_is_resampled_onto_the_ct(tmp_path):
    """TotalSegmentator works at 1.5 mm: its masks come back on the CT grid by nearest neighbour."""
    sitk = _sitk()
    ct = _oblique_ct((12, 20, 24))
    coarse_lobes = _known_lobes((12, 20, 24))
    image = _image(ct, coarse_lobes["right upper lobe"].astype(np.uint8))
    fine = sitk.Resample(image, [48, 40, 12], sitk.Transform(), sitk.sitkNearestNeighbor,
                         image.GetOrigin(), [image.GetSpacing()[0] / 2, image.GetSpacing()[1] / 2,
                                             image.GetSpacing()[2]], image.GetDirection(), 0)
    sitk.WriteImage(fine, str(tmp_path / "lung_upper_lobe_right.nii.gz"))
    read = read_lobes(tmp_path, ct)
    assert list(read) == ["right upper lobe"]
    np.testing.assert_array_equal(read["right upper lobe"], coarse_lobes["right upper lobe"])


def test_slicer_seg_nrrd_written_by_slicer(tmp_path):
    """A .seg.nrrd as Slicer's segmentation storage node writes it (real MRML, slicer-core),
    with MONAIAuto3DSeg's segment names and an unrelated segment."""
    import slicer
    from ChestCTMTLMRML import headless, nodes

    scene = headless.get_scene()
    scene.Clear(False)
    try:
        ct = _oblique_ct()
        lobes = _known_lobes(ct.array.shape)
        volume = nodes.volume_node_from_ct(scene, ct, "CT")
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lobes")
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        names = {"right upper lobe": "Right Upper lobe of lung", "right middle lobe":
                 "Middle lobe of right lung", "right lower lobe": "Right Lower lobe of lung",
                 "left upper lobe": "Left Upper lobe of lung", "left lower lobe": "Left Lower lobe of lung"}
        for name in LOBES:
            segment_id = seg.GetSegmentation().AddEmptySegment(names[name], names[name])
            slicer.util.updateSegmentBinaryLabelmapFromArray(lobes[name].astype(np.uint8), seg,
                                                             segment_id, volume)
        other = seg.GetSegmentation().AddEmptySegment("airways", "airways")
        slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros(ct.array.shape, np.uint8), seg,
                                                         other, volume)
        path = tmp_path / "lobes.seg.nrrd"
        storage = seg.CreateDefaultStorageNode()  # what File > Save runs for a segmentation
        storage.SetFileName(str(path))
        assert storage.WriteData(seg)
    finally:
        scene.Clear(False)
    read = read_lobes(path, ct)
    assert list(read) == list(LOBES)
    for name in LOBES:
        np.testing.assert_array_equal(read[name], lobes[name])


def test_bad_lobe_inputs_say_why(tmp_path):
    ct = _oblique_ct()
    sitk = _sitk()
    with pytest.raises(LobesError, match="no such lobe file"):
        read_lobes(tmp_path / "missing.nii.gz", ct)
    with pytest.raises(LobesError, match="no lobe mask in this folder"):
        sitk.WriteImage(_image(ct, np.ones(ct.array.shape, np.uint8)), str(tmp_path / "liver.nii.gz"))
        read_lobes(tmp_path, ct)
    odd = tmp_path / "odd.nii.gz"
    sitk.WriteImage(_image(ct, np.full(ct.array.shape, 7, np.uint8)), str(odd))
    with pytest.raises(LobesError, match=r"lungmask's lobe values \(1-5\)"):
        read_lobes(odd, ct)
    far = CTVolume(ct.array, ct.ijk_to_ras.copy())
    far.ijk_to_ras[:3, 3] += 5000.0  # another frame of reference: no overlap
    path = tmp_path / "lm.nii.gz"
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[2:5, 2:5, 2:5] = 3
    sitk.WriteImage(_image(far, labels), str(path))
    with pytest.raises(LobesError, match="do not overlap the CT"):
        read_lobes(path, ct)
    assert issubclass(LobesError, InputError)


# ------------------------------------------------------------------ in the analysis, on a real CT
@pytest.fixture(scope="module")
def covid_case(data_dir, tmp_path_factory):
    """covid_ct_md P001 analysed by ``chestctmtl analyze --lobes`` with lobes in
    TotalSegmentator's folder format: boxes of the patient's right/left and thirds by height,
    limited to air-like voxels (not anatomical lobes: a known answer for the bookkeeping)."""
    from ChestCTMTLLib.volume_io import read_ct

    path = data_dir / "covid_ct_md" / "covid_P001.nii.gz"
    if not path.exists():
        pytest.skip("real data not available: %s" % path)
    ct = read_ct(path)
    k = np.arange(ct.array.shape[0])[:, None, None]
    i = np.arange(ct.array.shape[2])[None, None, :]
    x = ct.ijk_to_ras[0, 0] * i + ct.ijk_to_ras[0, 3]
    s_mm = ct.ijk_to_ras[2, 2] * k + ct.ijk_to_ras[2, 3]
    lo, hi = np.percentile(s_mm, [0, 100])
    third = (s_mm - lo) / max(hi - lo, 1e-6)
    air = ct.array < -300
    boxes = {"right upper lobe": (x > 0) & (third >= 2 / 3), "right middle lobe":
             (x > 0) & (third >= 1 / 3) & (third < 2 / 3), "right lower lobe": (x > 0) & (third < 1 / 3),
             "left upper lobe": (x <= 0) & (third >= 0.5), "left lower lobe": (x <= 0) & (third < 0.5)}
    folder = tmp_path_factory.mktemp("totalseg")
    lobes = {}
    for name, box in boxes.items():
        lobes[name] = np.broadcast_to(box, ct.array.shape) & air
        _sitk().WriteImage(_image(ct, lobes[name].astype(np.uint8)),
                           str(folder / (TOTALSEG_FILES[name] + ".nii.gz")))
    from ChestCTMTLMRML import cli

    out = tmp_path_factory.mktemp("out")
    code = cli.main(["analyze", str(path), "--output", str(out), "--lobes", str(folder),
                     "--no-preview", "--no-progress", "--device", "cpu"])
    assert code == 0
    report = json.loads(next(out.glob("*/report.json")).read_text())
    return ct, lobes, report, out


def test_analysis_with_lobes_gives_the_pan_score(covid_case):
    ct, lobes, report, out = covid_case
    lobar = report["involvement"]["lobes"]
    assert set(lobar["lobes"]) == set(LOBES)
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    total = 0
    for name in LOBES:
        entry = lobar["lobes"][name]
        assert entry["volume_ml"] == pytest.approx(lobes[name].sum() * voxel_ml, abs=0.01)
        assert entry["score"] == pan_lobe_score(entry["percent"])
        total += entry["score"]
    assert lobar["total_score"] == total
    # a COVID-19 scan with infection found: some lobe is involved, and the lung numbers stay
    assert report["involvement"]["both"]["lesion_ml"] > 0 and total > 0


def test_analysis_and_input_grid_paths_agree(covid_case):
    """The analysis (canonical lung crop) and the review's input-grid function give the same
    lung, zone and lobe numbers for the same masks: orientation and crop bookkeeping agree."""
    from ChestCTMTLLib.inference import Analyzer
    from ChestCTMTLLib.orientation import axial_view

    ct, lobes, report, out = covid_case
    result = Analyzer(None, device="cpu").apply(ct, lobes=lobes)
    assert result.involvement["lobes"] == report["involvement"]["lobes"]
    stage = result.stage
    view = axial_view(ct.ijk_to_ras, ct.array.shape)
    canon = np.zeros(view.canonical_shape, bool)
    canon[stage.crop] = stage.infection
    infection = np.ascontiguousarray(view.from_canonical(canon))
    again = involvement_on_input_grid(ct.ijk_to_ras, ct.array, result.lung_labels, infection,
                                      lobes, source=result.involvement["method"].split(":")[0])
    assert again["lobes"] == result.involvement["lobes"]
    assert again["lungs"] == result.involvement["lungs"]
    assert again["both"] == result.involvement["both"]


def test_lobes_with_several_inputs_is_refused(covid_case, tmp_path):
    from ChestCTMTLMRML import cli

    ct, lobes, report, out = covid_case
    code = cli.main(["analyze", "a.nii.gz", "b.nii.gz", "--output", str(tmp_path / "o"),
                     "--lobes", str(tmp_path), "--no-progress"])
    assert code == cli.EXIT_CANNOT_START
    assert not (tmp_path / "o").exists()
