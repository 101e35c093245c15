"""evaluate-volumes: the shipped pipeline on labelled whole CTs, and the FROC numbers behind it.

The real-scan tests use two scans (the PyRadiomics lung1 sample and COVID-CT-MD normal001) and
check that the evaluation's findings and verdicts are exactly what ``Analyzer.apply`` returns
on the same scans: if the evaluation ever grew its own post-processing again, they would fail.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from ChestCTMTLLib.results import Finding
from ChestCTMTLLib.volume import CTVolume
from ChestCTMTLTraining import evaluate_volumes as ev
from ChestCTMTLTraining.metrics import (confusion, detection_summary, froc, match_findings,
                                        scan_detection)


# --------------------------------------------------------------------------- known answers
def _finding(fid, centre, score, type_="nodule-mass", ijk=((0, 0, 0), (0, 0, 0))):
    return Finding(id=fid, type=type_, score=score, center_ras=list(centre), size_ras=[1, 1, 1],
                   ijk_min=list(ijk[0]), ijk_max=list(ijk[1]), volume_mm3=1.0, diameter_mm=5.0)


def _two_scans():
    """Scan A: lesion (20 mm) found by the top finding, two FPs; scan B: lesion (12 mm) found
    only by a low-scoring finding below an FP. A covid-infection finding on lesion B never
    counts (nodule/mass FROC)."""
    a = [_finding("A1", (1, 0, 0), 0.9), _finding("A2", (60, 0, 0), 0.8),
         _finding("A3", (-60, 0, 0), 0.4)]
    b = [_finding("B1", (100, 60, 0), 0.7), _finding("B2", (100, 3, 4), 0.3),
         _finding("B3", (100, 0, 0), 1.0, type_="covid-infection")]
    la = [{"center_mm": [0.0, 0.0, 0.0], "diameter_mm": 20.0}]
    lb = [{"center_mm": [100.0, 0.0, 0.0], "diameter_mm": 12.0}]
    return [scan_detection(a, la, 0.5), scan_detection(b, lb, 0.5)]


def test_froc_and_cpm_known_answer():
    scans = _two_scans()
    f = froc(scans)
    # merged by score: TP .9, FP .8, FP .7, FP .4, TP .3 -> FP/scan 0, .5, 1, 1.5, 1.5
    assert f["lesions"] == 2 and f["scans"] == 2
    assert [f["sensitivity"][k] for k in ("0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0")] \
        == [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]
    assert f["cpm"] == pytest.approx(5.0 / 7.0)


def test_scan_detection_and_operating_point_known_answer():
    a, b = _two_scans()
    assert a["n_findings"] == 3 and b["n_findings"] == 2  # the infection finding is not a nodule
    la, lb = a["lesions"][0], b["lesions"][0]
    assert (la["found"], la["score"], la["rank"], la["ranked_first"], la["finding"]) == \
        (True, 0.9, 1, True, "A1")
    assert la["false_positives_at_its_score"] == 0 and la["found_at_operating_point"]
    assert (lb["found"], lb["score"], lb["rank"], lb["ranked_first"]) == (True, 0.3, 2, False)
    assert lb["false_positives_at_its_score"] == 1 and not lb["found_at_operating_point"]
    assert a["operating_point"] == {"score_threshold": 0.5, "findings": 2, "true_positives": 1,
                                    "false_positives": 1}
    assert a["false_positives_at_0.3"] == 2 and b["hits_at_0.3"] == 1
    s = detection_summary([a, b], 0.5)
    op = s["operating_point"]
    assert op["findings_per_scan"] == 1.5 and op["fp_per_scan"] == 1.0
    assert op["sensitivity"] == 0.5
    assert (op["lesions_ge10mm"], op["ge10mm_found"], op["ge10mm_ranked_first"]) == (2, 1, 1)
    assert s["cpm"] == pytest.approx(5.0 / 7.0)


def test_hit_rule_uses_at_least_five_mm_and_matches_greedily():
    small = [{"center_mm": [0, 0, 0], "diameter_mm": 4.0}]  # radius 2 mm: the 5 mm floor rules
    near = {"center_mm": [4.9, 0, 0], "score": 0.5}
    far = {"center_mm": [5.1, 0, 0], "score": 0.9}
    tp, hits, scores = match_findings([near, far], small)
    assert tp.tolist() == [False, True] and hits.tolist() == [-1, 0]  # score order: far, near
    assert scores.tolist() == [0.9, 0.5]
    # two findings on one lesion: the better one hits, the other is a false positive
    tp, hits, _ = match_findings([{"center_mm": [1, 0, 0], "score": 0.6},
                                  {"center_mm": [0, 1, 0], "score": 0.8}], small)
    assert tp.tolist() == [True, False] and hits.tolist() == [0, -1]
    # a big lesion's own radius counts: 9 mm off a 20 mm lesion is a hit
    assert match_findings([{"center_mm": [9, 0, 0], "score": 1.0}],
                          [{"center_mm": [0, 0, 0], "diameter_mm": 20.0}])[0].tolist() == [True]
    assert froc([{"findings": [], "lesions": small}])["sensitivity"]["8.0"] == 0.0


def test_confusion_over_class_names():
    c = confusion(["cancer", "cancer", "non-covid", "covid"], ["cancer", "non-covid", "non-covid",
                                                               "cancer"],
                  ("non-covid", "covid", "cancer"))
    assert c["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [1, 0, 1]]
    assert c["accuracy"] == 0.5 and c["n"] == 4


def _tiny_result(labels, findings, masks=None):
    """An AnalysisResult stand-in on a flipped, shifted grid (RAS->IJK must really invert)."""
    m = np.array([[-2.0, 0, 0, 50.0], [0, -1.0, 0, 20.0], [0, 0, 3.0, -90.0], [0, 0, 0, 1]])
    vol = CTVolume(np.zeros(labels.shape, np.int16), m, name="tiny")
    return SimpleNamespace(volume=vol, lung_labels=labels, findings=findings,
                           lesion_masks=masks or {}), vol


def test_outside_lung_looks_up_the_centre_voxel_through_the_inverse_geometry():
    labels = np.zeros((4, 5, 6), np.uint8)  # (k, j, i)
    labels[2, 3, 1] = 1
    labels[1, 0, 5] = 2
    res, vol = _tiny_result(labels, [])
    inside = vol.ijk_to_ras_points([[1, 3, 2]])[0]
    inside2 = vol.ijk_to_ras_points([[5.2, 0.3, 0.9]])[0]  # rounds to (5, 0, 1)
    outside = vol.ijk_to_ras_points([[1, 3, 1]])[0]
    beyond = vol.ijk_to_ras_points([[40, 3, 1]])[0]
    res.findings = [_finding("in", inside, 0.9), _finding("in2", inside2, 0.8),
                    _finding("out", outside, 0.7), _finding("far", beyond, 0.6)]
    assert ev.outside_lung_ids(res, res.findings) == ["out", "far"]
    res.lung_labels = None
    assert ev.outside_lung_ids(res, res.findings) is None


def test_infection_slice_check_counts_mask_and_zone_findings():
    labels = np.zeros((6, 4, 4), np.uint8)
    mask = np.zeros((6, 4, 4), np.uint8)
    mask[1, 2, 2] = 1  # infection drawn on slice 1
    zone = _finding("Z", (0, 0, 0), 0.9, "covid-infection", ((0, 0, 3), (3, 3, 4)))  # k 3..4
    low = _finding("Q", (0, 0, 0), 0.1, "covid-infection", ((0, 0, 5), (3, 3, 5)))  # under op
    res, _ = _tiny_result(labels, [zone, low], {"covid-infection": mask})
    out = ev.infection_slice_check(res, {0: 0, 1: 1, 2: 1, 3: 1, 4: 0, 5: 0}, 0.5)
    assert out["infection_slices"] == 3 and out["clean_slices"] == 3
    assert out["infection_slices_with_infection"] == pytest.approx(2 / 3)  # 1 (mask), 3 (zone)
    assert out["clean_slices_with_infection"] == pytest.approx(1 / 3)  # 4 (zone)
    assert out["infection_slices_with_mask"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- manifests
def test_packaged_manifest_lists_the_seven_labelled_scans():
    specs, min_mm3, path = ev.load_manifest("volumes")
    assert path.name == "volumes.yaml" and min_mm3 == 14.0
    by = {s.name: s for s in specs}
    assert list(by) == ["lidc-0001", "lidc-0002", "lung1", "lung2", "normal001", "cap001",
                        "covid-P001"]
    assert {s.name for s in specs if s.role == "calibration"} == {"lidc-0001", "lung1"}
    assert by["lidc-0001"].lidc_xml and by["lung1"].lesion_mask.name == "lung1_label.nrrd"
    assert by["normal001"].lesion_free and by["cap001"].label == "non-covid"
    assert by["covid-P001"].label == "covid" and by["covid-P001"].slice_labels is not None
    assert not by["cap001"].nodule_reference


def test_csv_manifest_in_a_folder_and_bad_rows(tmp_path):
    (tmp_path / "manifest.csv").write_text("name,image,class,lesion_mask\n"
                                           "a,scans/a.nrrd,cancer,masks/a.nrrd\nb,/abs/b.nii.gz,covid,\n")
    specs, _, _ = ev.load_manifest(tmp_path)
    assert specs[0].image == tmp_path / "scans" / "a.nrrd" and specs[0].role == "validation"
    assert specs[0].lesion_mask == tmp_path / "masks" / "a.nrrd"
    assert specs[1].image == Path("/abs/b.nii.gz") and specs[1].lesion_mask is None
    bad = tmp_path / "bad.csv"
    bad.write_text("name,image,class\nx,x.nrrd,flu\n")
    with pytest.raises(ValueError, match="class 'flu'"):
        ev.load_manifest(bad)
    with pytest.raises(FileNotFoundError):
        ev.load_manifest(tmp_path / "nothing.yaml")


# --------------------------------------------------------------------------- real scans
@pytest.fixture(scope="module")
def two_scan_manifest(data_dir, tmp_path_factory):
    from ChestCTMTLLib.sample_data import SampleDataError, sample_path

    try:
        sample_path("lung1_image.nrrd")
        sample_path("lung1_label.nrrd")
    except SampleDataError as exc:
        pytest.skip("PyRadiomics sample not fetched: %s" % exc)
    normal = data_dir / "covid_ct_md" / "normal_normal001.nii.gz"
    if not normal.is_file():
        pytest.skip("real data not available: %s is missing" % normal)
    path = tmp_path_factory.mktemp("manifest") / "two.yaml"
    path.write_text(yaml.safe_dump({"scans": [
        {"name": "lung1", "image": "sample:lung1_image.nrrd", "class": "cancer",
         "role": "calibration", "lesion_mask": "sample:lung1_label.nrrd"},
        {"name": "normal001", "image": str(normal), "class": "non-covid", "role": "validation",
         "lesion_free": True}]}))
    return path


@pytest.fixture(scope="module")
def two_scan_run(two_scan_manifest, tmp_path_factory):
    """The command line on the 2-scan manifest, counting the lesion-stage calls it makes."""
    import ChestCTMTLLib.inference as inference
    from ChestCTMTLTraining.__main__ import main

    out = tmp_path_factory.mktemp("ev2")
    calls = []
    original = inference.lesion_stage

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(inference, "lesion_stage", counting)
    try:
        rc = main(["evaluate-volumes", "--manifest", str(two_scan_manifest), "--output", str(out),
                   "--device", "cpu", "--quiet"])
    finally:
        mp.undo()
    assert rc == 0
    return out, len(calls)


def test_evaluate_volumes_reports_exactly_what_the_analyzer_returns(two_scan_run, two_scan_manifest):
    from ChestCTMTLLib.inference import Analyzer
    from ChestCTMTLLib.options import AnalysisOptions
    from ChestCTMTLLib.volume_io import read_ct

    out, stage_calls = two_scan_run
    for name in ("metrics.json", "scans.tsv", "report.md", "froc.png", "confusion.png",
                 "previews/lung1.png", "previews/normal001.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert stage_calls == 2  # one Analyzer run per scan, through the shipped lesion stage
    m = json.loads((out / "metrics.json").read_text())
    with open(out / "scans.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["name"] for r in rows] == ["lung1", "normal001"]
    assert set(m["groups"]) == {"calibration", "validation", "all"}

    specs, _, _ = ev.load_manifest(two_scan_manifest)
    an = Analyzer(None, AnalysisOptions(device="cpu", score_threshold=0.0))
    assert m["model"]["score_threshold"] == an.calibration.score_threshold
    for spec, rec, row in zip(specs, m["scans"], rows):
        res = an.apply(read_ct(spec.image))
        assert rec["findings"] == [f.row() for f in res.findings]
        assert rec["verdict"] == res.predicted_class == row["verdict"]
        # float32 sums differ in the last bits with the CPU thread count the tuner picks
        assert rec["probabilities"] == pytest.approx(
            {k: float(v) for k, v in res.class_probabilities.items()}, abs=1e-6)
        op = an.calibration.score_threshold
        assert rec["findings_at_op"] == sum(f.score >= op for f in res.findings)
        assert int(row["findings"]) == len(res.findings)
        assert rec["lung_volumes_ml"]["right"] == res.lungs["right lung"]["volume_ml"]
    lung1 = m["scans"][0]["detection"]
    assert len(lung1["lesions"]) == 1 and lung1["lesions"][0]["diameter_mm"] > 10
    froc_all = m["groups"]["all"]["nodule_froc"]
    assert froc_all["lesions"] == 1 and set(froc_all["sensitivity"]) == {
        "0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0"}
    assert m["groups"]["validation"]["lesion_free_scans"]["scans"] == 1
    v = m["groups"]["all"]["verdict"]
    assert v["confusion_labels"] == ["non-covid", "covid", "cancer"] and v["n"] == 2


def test_evaluate_volumes_goes_through_the_shipped_lesion_stage(two_scan_manifest, tmp_path,
                                                                monkeypatch):
    import ChestCTMTLLib.inference as inference

    class Marker(RuntimeError):
        pass

    def refuse(*args, **kwargs):
        raise Marker("the evaluation called the shipped lesion stage")

    monkeypatch.setattr(inference, "lesion_stage", refuse)
    one = tmp_path / "one.yaml"
    doc = yaml.safe_load(two_scan_manifest.read_text())
    one.write_text(yaml.safe_dump({"scans": doc["scans"][:1]}))
    with pytest.raises(Marker):
        ev.evaluate_volumes(manifest=one, output=tmp_path / "out", progress=False)


def test_calibration_scan_scores_reads_the_same_per_scan_detection(two_scan_manifest):
    """What ``calibrate`` fits its threshold on: FP scores and big-lesion hit scores per
    nodule-annotated calibration scan (a stand-in analyzer; the real one is tested above)."""
    specs, min_mm3, _ = ev.load_manifest(two_scan_manifest)
    lung1 = specs[0]
    lesion = ev.reference_lesions(lung1, min_mm3)[0]
    far = np.asarray(lesion["center_mm"]) + [40.0, 0.0, 0.0]
    findings = [_finding("L1", far, 0.6), _finding("L2", lesion["center_mm"], 0.7),
                _finding("Z1", far, 0.95, type_="covid-infection")]
    seen = []

    class StandIn:
        calibration = SimpleNamespace(score_threshold=0.5)

        def apply(self, volume):
            seen.append(volume.name)
            return SimpleNamespace(volume=volume, findings=findings, lung_labels=None,
                                   lesion_masks={}, lungs={}, verdict={}, predicted_class="cancer",
                                   class_probabilities={"non-covid": 0.1, "covid": 0.1, "cancer": 0.8})

    out = ev.calibration_scan_scores(StandIn(), two_scan_manifest, progress=False)
    assert seen == ["lung1_image"]  # normal001 has role validation
    assert out == [{"name": "lung1", "fp_scores": [0.6], "big_lesion_scores": [0.7]}]
