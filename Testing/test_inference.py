"""Whole-volume inference on real CTs: results on the input grid whatever the file format or
orientation, air where the model did not look, findings placed correctly in RAS, cancel,
determinism and progress, options resolved once by the Analyzer. An untrained model at reduced
input size keeps this fast; what is tested is the engine's geometry and bookkeeping, which do
not depend on the weights.

An untrained model's lesion probabilities give no lung-aware 3D candidates, so tests about
finding geometry run the lung-blind pipeline (``lungs=False``: slice boxes linked in 3D),
whose findings do exist; the lung-aware pipeline (the default) is checked for the same grid,
orientation and determinism guarantees on its masks, lung labels and verdict."""
from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from ChestCTMTLLib import errors, volume_io
from ChestCTMTLLib.inference import Analyzer, analyze, findings_from_slice_boxes
from ChestCTMTLLib.options import AnalysisOptions
from ChestCTMTLLib.orientation import axial_view
from ChestCTMTLLib.postprocess import SliceBox, aggregate_slice_probabilities
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES
from ChestCTMTLLib.volume import CTVolume
from ct_testutil import (crop_volume, oblique_copy, read_cached, restored_copy, rotation,
                         small_model_folder)

LOW_SCORE = 0.05  # an untrained detector peaks around 0.1: this makes it produce findings



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from ChestCTMTLLib.modelio import load_model

    folder = small_model_folder(tmp_path_factory.mktemp("model") / "fast64", input_size=64)
    return load_model(folder, device="cpu")


@pytest.fixture(scope="module")
def nodule_crop(lidc0002_nifti) -> CTVolume:
    """16 real slices through LIDC-IDRI-0002's 23 mm nodule, all inside the lungs."""
    return crop_volume(read_cached(str(lidc0002_nifti)), 172, 188, name="nodule")


@pytest.fixture(scope="module")
def axial(nodule_crop, loaded):
    """``axial(lungs)``: the axial crop's result with either pipeline (computed once each)."""
    cache = {}

    def get(lungs: bool):
        if lungs not in cache:
            cache[lungs] = analyze(nodule_crop, loaded, device="cpu", score_threshold=LOW_SCORE,
                                   lungs=lungs)
        return cache[lungs]

    return get


@pytest.fixture(scope="module")
def axial_result(axial):
    """The lung-blind run, whose untrained detector does give findings."""
    return axial(False)


def _check_on_grid(result, volume):
    assert result.volume is volume
    assert set(result.lesion_masks) == set(LESION_TYPES)
    for mask in result.lesion_masks.values():
        assert mask.shape == volume.array.shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
    assert result.reconstruction_hu.shape == volume.array.shape
    assert result.reconstruction_hu.dtype == np.int16
    assert sorted(result.class_probabilities) == sorted(CLASS_NAMES)
    assert math.isclose(sum(result.class_probabilities.values()), 1.0, abs_tol=1e-9)
    assert result.predicted_class == max(result.class_probabilities,
                                         key=result.class_probabilities.get)
    n = len(result.analysed_slices)
    assert result.slice_probabilities.shape == (n, 3)
    np.testing.assert_allclose(result.slice_probabilities.sum(axis=1), 1.0, atol=1e-5)
    for f in result.findings:
        lo, hi = np.array(f.ijk_min), np.array(f.ijk_max)
        assert np.all(lo >= 0) and np.all(hi < np.array(volume.size_ijk)) and np.all(lo <= hi)
        assert f.type in LESION_TYPES and 0 <= f.score <= 1 and f.volume_mm3 > 0
    for stage in ("validate", "lung_region", "forward", "map_back_results", "verdict", "total"):
        assert stage in result.timings_s
    if result.lung_labels is not None:  # the lung-aware pipeline
        assert result.lung_labels.shape == volume.array.shape
        assert result.lung_labels.dtype == np.uint8
        assert set(np.unique(result.lung_labels)) <= {0, 1, 2}
        assert {"lungs", "candidates"} <= set(result.timings_s)
    assert result.model.sha256 and result.device == "cpu"


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz"])
def test_file_inputs_give_outputs_on_their_own_grid(nodule_crop, loaded, tmp_path, ext):
    vol = volume_io.read_ct(volume_io.write_ct(nodule_crop, tmp_path / ("case" + ext)))
    result = analyze(vol, loaded, device="cpu")
    _check_on_grid(result, vol)
    np.testing.assert_allclose(result.volume.ijk_to_ras, nodule_crop.ijk_to_ras, atol=1e-4)
    geo = result.report_dict()["input"]
    assert geo["size"] == [512, 512, 16]


def test_dicom_series_input(lidc0001_dicom_dir, loaded, tmp_path):
    """A real DICOM series (24 of LIDC-IDRI-0001's files, linked into a folder of their own)."""
    import SimpleITK as sitk

    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(lidc0001_dicom_dir))
    series = tmp_path / "LIDC-IDRI-0001-part"
    series.mkdir()
    for name in names[50:74]:
        (series / Path(name).name).symlink_to(name)
    vol = volume_io.read_ct(series)
    assert vol.array.shape == (24, 512, 512) and vol.name == "LIDC-IDRI-0001-part"
    result = analyze(vol, loaded, device="cpu")
    _check_on_grid(result, vol)
    assert 0 < len(result.analysed_slices) <= vol.array.shape[0]
    assert result.report_dict()["input"]["size"] == [512, 512, 24]


def test_nodule_crop_on_grid(axial_result, axial, nodule_crop):
    _check_on_grid(axial_result, nodule_crop)
    assert list(axial_result.analysed_slices) == list(range(16))
    assert axial_result.findings, "the low threshold should give the untrained head findings"
    assert axial_result.lung_labels is None and axial_result.lungs == {}
    aware = axial(True)
    _check_on_grid(aware, nodule_crop)
    assert aware.lungs["found"] and set(np.unique(aware.lung_labels)) == {0, 1, 2}
    assert aware.verdict["predicted_class"] == aware.predicted_class


# --------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("lungs", [False, True], ids=["lung-blind", "lung-aware"])
@pytest.mark.parametrize("perm,flips", [((2, 0, 1), (False, True, False)),
                                        ((1, 2, 0), (True, False, True))])
def test_restored_copy_gives_the_same_results_voxel_for_voxel(
        nodule_crop, loaded, axial, perm, flips, lungs):
    """The same voxels stored sagitally/coronally (flipped): every output is the axial run's,
    in the other storage order, and findings sit at the same RAS positions."""
    axial_result = axial(lungs)
    other = restored_copy(nodule_crop, perm, flips)
    result = analyze(other, loaded, device="cpu", score_threshold=LOW_SCORE, lungs=lungs)
    _check_on_grid(result, other)

    def store(a):
        a = np.transpose(a, perm)
        for ax, f in enumerate(flips):
            if f:
                a = np.flip(a, axis=ax)
        return a

    for name, mask in axial_result.lesion_masks.items():
        np.testing.assert_array_equal(result.lesion_masks[name], store(mask))
    np.testing.assert_array_equal(result.reconstruction_hu, store(axial_result.reconstruction_hu))
    if lungs:
        np.testing.assert_array_equal(result.lung_labels, store(axial_result.lung_labels))
        assert result.lungs == axial_result.lungs
        assert result.class_probabilities == pytest.approx(axial_result.class_probabilities)
    # slice probabilities are listed in input slice order, which may run the other way
    expected = axial_result.slice_probabilities
    other_view = axial_view(other.ijk_to_ras, other.array.shape)
    if other_view.flips[0]:
        expected = expected[::-1]
    assert result.slice_axis == other_view.perm[0] == perm.index(0)
    assert result.slice_axis != 0 and axial_result.slice_axis == 0
    np.testing.assert_array_equal(result.slice_probabilities, expected)
    assert len(result.findings) == len(axial_result.findings)
    assert lungs or result.findings, "the lung-blind run should have findings to compare"
    for a, b in zip(axial_result.findings, result.findings):
        np.testing.assert_allclose(b.center_ras, a.center_ras, atol=1e-6)
        np.testing.assert_allclose(b.size_ras, a.size_ras, atol=1e-6)
        assert b.type == a.type and b.score == a.score
        # the IJK boxes of both runs span the same RAS region
        box_a = np.sort(nodule_crop.ijk_to_ras_points([a.ijk_min, a.ijk_max]), axis=0)
        box_b = np.sort(other.ijk_to_ras_points([b.ijk_min, b.ijk_max]), axis=0)
        np.testing.assert_allclose(box_b, box_a, atol=1e-6)


@pytest.mark.parametrize("lungs", [False, True], ids=["lung-blind", "lung-aware"])
def test_oblique_volume_results_follow_its_geometry(nodule_crop, loaded, axial, tmp_path, lungs):
    """An oblique NRRD (direction rotated 20 degrees): outputs stay on its grid, voxel for voxel
    what the axial run gave, and findings are rotated with the volume."""
    axial_result = axial(lungs)
    obl = oblique_copy(nodule_crop, 20.0, "x")
    path = volume_io.write_ct(obl, tmp_path / "oblique.nrrd")
    vol = volume_io.read_ct(path)
    result = analyze(vol, loaded, device="cpu", score_threshold=LOW_SCORE, lungs=lungs)
    _check_on_grid(result, vol)
    for name, mask in axial_result.lesion_masks.items():
        np.testing.assert_array_equal(result.lesion_masks[name], mask)
    np.testing.assert_array_equal(result.reconstruction_hu, axial_result.reconstruction_hu)
    if lungs:
        np.testing.assert_array_equal(result.lung_labels, axial_result.lung_labels)
    rot = vol.ijk_to_ras @ np.linalg.inv(nodule_crop.ijk_to_ras)  # the rigid motion applied
    assert len(result.findings) == len(axial_result.findings)
    assert lungs or result.findings, "the lung-blind run should have findings to compare"
    for a, b in zip(axial_result.findings, result.findings):
        expected = rot[:3, :3] @ np.array(a.center_ras) + rot[:3, 3]
        np.testing.assert_allclose(b.center_ras, expected, atol=1e-3)
        assert b.ijk_min == a.ijk_min and b.ijk_max == a.ijk_max


# --------------------------------------------------------------------------- reconstruction
def test_reconstruction_is_air_wherever_the_model_did_not_look(lidc0002_nifti, loaded):
    from ChestCTMTLLib.representation import geometry_for_volume

    vol = crop_volume(read_cached(str(lidc0002_nifti)), 232, 261, name="apex")
    result = analyze(vol, loaded, device="cpu", tasks=("reconstruction",))
    rec = result.reconstruction_hu
    analysed = set(int(k) for k in result.analysed_slices)
    skipped = [k for k in range(vol.array.shape[0]) if k not in analysed]
    assert analysed and skipped, "the crop should have both lung and non-lung slices"
    assert np.all(rec[skipped] == -1024)
    assert np.any(vol.array[skipped] > -500), "non-lung slices hold tissue the output must not copy"
    geom, _ = geometry_for_volume(vol.array, vol.spacing, loaded.representation)
    inside = np.zeros(vol.array.shape[1:], bool)
    inside[max(0, geom.row0):geom.row0 + geom.side, max(0, geom.col0):geom.col0 + geom.side] = True
    looked = rec[sorted(analysed)]
    assert np.all(looked[:, ~inside] == -1024)
    lo, hi = loaded.representation.hu_window
    assert looked[:, inside].min() >= lo - 0.5 and looked[:, inside].max() <= hi + 0.5
    assert result.lesion_masks == {} and result.findings == []


# --------------------------------------------------------------------------- findings
def _geometry_volume(shape=(40, 64, 80), spacing=(0.7, 0.8, 2.0), origin=(10.0, -20.0, 30.0)):
    """An LPS-identity geometry (the DICOM default) with distinct spacings per axis."""
    m = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    m[:3, 3] = origin
    return CTVolume(np.zeros(shape, np.int16), m)


def _lesion(slices, r0, c0, r1, c1, score=0.9, kind="nodule-mass"):
    return [SliceBox(s, kind, score - 0.01 * abs(s - np.mean(slices)), r0, c0, r1, c1)
            for s in slices]


def test_3d_merge_known_answer():
    vol = _geometry_volume()
    view = axial_view(vol.ijk_to_ras, vol.array.shape)
    boxes = (_lesion(range(10, 18), 20, 40, 30, 52)  # the lesion, 8 slices
             + _lesion(range(11, 17), 21, 41, 31, 53, score=0.6)  # its duplicate, weaker
             + _lesion([5, 6, 8, 9], 50, 10, 56, 16, score=0.7, kind="covid-infection")  # gap at 7
             + _lesion([30], 5, 5, 9, 9, score=0.95))  # one-slice flicker (2 mm < 3 mm)
    findings = findings_from_slice_boxes(boxes, view, vol, min_extent_mm=3.0)
    assert [f.id for f in findings] == ["L1", "L2"]
    f, g = findings
    assert f.type == "nodule-mass" and math.isclose(f.score, 0.9 - 0.01 * 0.5)
    # centre: columns 40..52 -> i centre 45.5, rows 20..30 -> j 24.5, slices 10..17 -> k 13.5
    expected = np.array([10.0 - 0.7 * 45.5, -20.0 - 0.8 * 24.5, 30.0 + 2.0 * 13.5])
    np.testing.assert_allclose(f.center_ras, expected, atol=1e-9)
    np.testing.assert_allclose(f.size_ras, [12 * 0.7, 10 * 0.8, 8 * 2.0], atol=1e-9)
    assert f.ijk_min == [40, 20, 10] and f.ijk_max == [51, 29, 17]
    assert math.isclose(f.volume_mm3, math.pi / 4 * (10 * 0.8) * (12 * 0.7) * 8 * 2.0)
    assert g.type == "covid-infection" and g.ijk_min[2] == 5 and g.ijk_max[2] == 9
    row = f.row()
    assert row["center_r"] == round(expected[0], 2) and row["size_s"] == 16.0


def test_3d_merge_maps_through_any_storage_order():
    """The same boxes on the axial view of a re-stored volume give the same RAS findings."""
    vol = _geometry_volume()
    other = restored_copy(vol, (2, 0, 1), (True, False, True))
    boxes = _lesion(range(10, 18), 20, 40, 30, 52)
    f0 = findings_from_slice_boxes(boxes, axial_view(vol.ijk_to_ras, vol.array.shape), vol)
    v1 = axial_view(other.ijk_to_ras, other.array.shape)
    f1 = findings_from_slice_boxes(boxes, v1, other)
    np.testing.assert_allclose(f1[0].center_ras, f0[0].center_ras, atol=1e-9)
    np.testing.assert_allclose(f1[0].size_ras, f0[0].size_ras, atol=1e-9)
    ras0 = np.sort(vol.ijk_to_ras_points([f0[0].ijk_min, f0[0].ijk_max]), axis=0)
    ras1 = np.sort(other.ijk_to_ras_points([f1[0].ijk_min, f1[0].ijk_max]), axis=0)
    np.testing.assert_allclose(ras1, ras0, atol=1e-9)


def test_3d_merge_on_oblique_geometry_rotates_centres():
    vol = _geometry_volume()
    obl = CTVolume(vol.array, rotation("z", 30.0) @ vol.ijk_to_ras)
    boxes = _lesion(range(10, 18), 20, 40, 30, 52)
    f0 = findings_from_slice_boxes(boxes, axial_view(vol.ijk_to_ras, vol.array.shape), vol)[0]
    f1 = findings_from_slice_boxes(boxes, axial_view(obl.ijk_to_ras, obl.array.shape), obl)[0]
    np.testing.assert_allclose(f1.center_ras, rotation("z", 30.0)[:3, :3] @ f0.center_ras,
                               atol=1e-9)
    assert f1.ijk_min == f0.ijk_min and f1.size_ras[2] == pytest.approx(f0.size_ras[2])


# --------------------------------------------------------------------------- classification
def test_volume_verdict_aggregation_known_answers():
    normal = np.tile([0.95, 0.03, 0.02], (100, 1))
    p = aggregate_slice_probabilities(normal, slice_mm=1.25)
    assert max(p, key=p.get) == "non-covid" and math.isclose(sum(p.values()), 1.0)
    focal = normal.copy()
    focal[40:48] = [0.05, 0.05, 0.9]  # a 10 mm nodule: 8 slices of 1.25 mm
    p = aggregate_slice_probabilities(focal, slice_mm=1.25)
    assert max(p, key=p.get) == "cancer" and p["cancer"] > 0.8
    diffuse = normal.copy()
    diffuse[::2] = [0.1, 0.85, 0.05]
    p = aggregate_slice_probabilities(diffuse, slice_mm=1.25)
    assert max(p, key=p.get) == "covid"
    single = normal.copy()
    single[50] = [0.0, 0.0, 1.0]  # one spurious slice out of 4 averaged
    p = aggregate_slice_probabilities(single, slice_mm=1.25)
    assert max(p, key=p.get) == "non-covid"


# --------------------------------------------------------------------------- run control
def test_folded_network_matches_the_loaded_model(loaded):
    """Batch-norm folding changes speed, not results, and leaves the caller's model intact."""
    import torch

    from ChestCTMTLLib.inference import inference_network
    from ChestCTMTLLib.modelio import load_model

    loaded = load_model(loaded.folder, "cpu")  # a private copy whose statistics we change
    g = torch.Generator().manual_seed(1)
    for m in loaded.model.modules():  # trained-like batch-norm statistics, not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    net = inference_network(loaded, "cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.model.modules())
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = loaded.model.eval()(x)
        b = net(x.contiguous(memory_format=torch.channels_last))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, before[k])



def test_cancel_raises_and_returns_nothing(nodule_crop, loaded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = nodule_crop.array.copy()
    stop = threading.Event()
    seen = []

    def progress(fraction, text):
        seen.append(fraction)
        if text.startswith("Analysing") and fraction > 0.2:
            stop.set()

    result = None
    with pytest.raises(errors.Cancelled):
        result = analyze(nodule_crop, loaded, device="cpu", progress=progress, cancel=stop)
    assert result is None and seen and max(seen) < 1.0
    assert list(tmp_path.iterdir()) == []
    np.testing.assert_array_equal(nodule_crop.array, before)


def test_cancel_before_the_start_does_no_work(nodule_crop, loaded, tmp_path):
    """The Analyzer resolves model and options up front (a missing model fails there, before
    any volume); ``apply`` with cancel already set stops before the first step."""
    with pytest.raises(errors.ModelNotFoundError):
        Analyzer(tmp_path / "never-read", AnalysisOptions(device="cpu"))
    analyzer = Analyzer(loaded, AnalysisOptions(device="cpu"))
    seen = []
    with pytest.raises(errors.Cancelled):
        analyzer.apply(nodule_crop, progress=lambda f, s: seen.append(f), cancel=lambda: True)
    assert seen == []


def _assert_same_results(a, b, lungs: bool) -> None:
    """Every output of two analyses is identical (masks, reconstruction, slices, lungs, findings)."""
    for name in LESION_TYPES:
        np.testing.assert_array_equal(a.lesion_masks[name], b.lesion_masks[name])
    np.testing.assert_array_equal(a.reconstruction_hu, b.reconstruction_hu)
    np.testing.assert_array_equal(a.slice_probabilities, b.slice_probabilities)
    if lungs:
        np.testing.assert_array_equal(a.lung_labels, b.lung_labels)
        assert a.verdict == b.verdict
    assert [f.row() for f in a.findings] == [f.row() for f in b.findings]


@pytest.mark.parametrize("lungs", [False, True], ids=["lung-blind", "lung-aware"])
def test_cpu_runs_are_deterministic(nodule_crop, loaded, axial, lungs):
    first = axial(lungs)
    again = analyze(nodule_crop, loaded, device="cpu", score_threshold=LOW_SCORE, lungs=lungs)
    _assert_same_results(again, first, lungs)
    assert again.class_probabilities == first.class_probabilities


@pytest.mark.parametrize("lungs", [False, True], ids=["lung-blind", "lung-aware"])
def test_thread_count_changes_speed_not_results(nodule_crop, loaded, lungs):
    """The thread tuner may switch thread counts mid-volume; that must not change outputs."""
    import torch

    vol = crop_volume(nodule_crop, 5, 11)  # 6 slices: two threads may be slow on a busy CPU
    before = torch.get_num_threads()
    one = analyze(vol, loaded, device="cpu", num_threads=1, score_threshold=LOW_SCORE, lungs=lungs)
    two = analyze(vol, loaded, device="cpu", num_threads=2, score_threshold=LOW_SCORE, lungs=lungs)
    assert torch.get_num_threads() == before
    _assert_same_results(one, two, lungs)


# --------------------------------------------------------------------------- options, once
def test_one_analyzer_loads_the_model_once_for_many_volumes(nodule_crop, loaded, monkeypatch):
    """Device, model, tasks and calibration are resolved in the constructor; apply() only runs."""
    from ChestCTMTLLib import modelio

    calls = []
    real_load = modelio.load_model

    def counting_load(*args, **kwargs):
        calls.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(modelio, "load_model", counting_load)
    analyzer = Analyzer(loaded.folder, AnalysisOptions(device="cpu", tasks=("classification",)))
    assert len(calls) == 1 and analyzer.device == "cpu"
    assert tuple(analyzer.tasks) == ("classification",)
    results = [analyzer.apply(crop_volume(nodule_crop, k, k + 4)) for k in (0, 6, 12)]
    assert len(calls) == 1, "apply() must not load the model again"
    assert all(r.model.sha256 == loaded.identity.sha256 for r in results)
    # the thin wrapper is the same computation
    again = analyze(crop_volume(nodule_crop, 6, 10), loaded, device="cpu", tasks=("classification",))
    assert again.class_probabilities == results[1].class_probabilities


def test_score_threshold_none_is_the_models_calibrated_operating_point(loaded, tmp_path):
    import shutil

    from ChestCTMTLLib import calibration
    from ChestCTMTLLib.options import FALLBACK_SCORE_THRESHOLD

    assert AnalysisOptions().score_threshold is None
    plain = Analyzer(loaded, AnalysisOptions(device="cpu"))
    assert not plain.calibration.fitted  # an untrained folder has no calibration.json
    assert plain.score_threshold == calibration.DEFAULTS["score_threshold"] == \
        FALLBACK_SCORE_THRESHOLD
    folder = tmp_path / "calibrated"
    shutil.copytree(loaded.folder, folder)
    calibration.write_calibration(folder, dict(calibration.DEFAULTS, fitted=True,
                                               score_threshold=0.37))
    assert Analyzer(folder, AnalysisOptions(device="cpu")).score_threshold == pytest.approx(0.37)
    assert Analyzer(folder, AnalysisOptions(device="cpu", score_threshold=0.8)).score_threshold \
        == pytest.approx(0.8)


def test_display_threshold_never_changes_the_verdict(nodule_crop, loaded):
    """score_threshold picks the findings listed; the diagnosis uses the calibrated point."""
    vol = crop_volume(nodule_crop, 5, 11)
    low = analyze(vol, loaded, device="cpu", score_threshold=0.0)
    high = analyze(vol, loaded, device="cpu", score_threshold=1.0)
    assert low.predicted_class == high.predicted_class
    assert low.class_probabilities == high.class_probabilities
    assert low.verdict == high.verdict
    assert all(f.score >= 1.0 for f in high.findings)


def test_thread_tuner_keeps_the_faster_count(monkeypatch):
    import torch

    from ChestCTMTLLib.inference import _ThreadTuner

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    for slow, expected in ((2, 1), (1, 2)):
        tuner = _ThreadTuner(True, recheck=10)
        used = []
        for i in range(12):
            tuner.before_batch(i)
            used.append(tuner.current)
            tuner.after_batch(i, 3.0 if tuner.current == slow else 1.0)
        assert used[:4] == [2, 1, 1, 2] and used[4:10] == [expected] * 6
        assert used[10:] == [expected, 1]  # the next window re-checks
    assert _ThreadTuner(False).candidates == [2]


def test_progress_is_monotonic_and_reaches_one(nodule_crop, loaded):
    calls = []
    analyze(nodule_crop, loaded, device="cpu", tasks=("classification",),
            progress=lambda f, s: calls.append((f, s)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(isinstance(s, str) and s for _, s in calls)
    assert any(s.startswith("Analysing") for _, s in calls)


def test_switched_off_heads_are_not_run(nodule_crop, loaded):
    from ChestCTMTLLib.inference import inference_network, resolve_precision

    precision = resolve_precision("auto", "cpu")
    net = inference_network(loaded, "cpu", True, precision)  # the one analyze runs (cached)
    calls = {"seg": 0, "recon": 0, "det": 0}
    hooks = [net.seg_decoder.register_forward_hook(lambda *a: calls.__setitem__("seg", 1)),
             net.recon_decoder.register_forward_hook(lambda *a: calls.__setitem__("recon", 1)),
             net.det_head.register_forward_hook(lambda *a: calls.__setitem__("det", 1))]
    try:
        result = analyze(nodule_crop, loaded, device="cpu", tasks=("classification",))
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"seg": 0, "recon": 0, "det": 0}
    assert inference_network(loaded, "cpu", True, precision) is net, \
        "analyze must have run this network"
    assert result.lesion_masks == {} and result.reconstruction_hu is None and not result.findings
    assert math.isclose(sum(result.class_probabilities.values()), 1.0)
