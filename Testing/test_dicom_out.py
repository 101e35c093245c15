"""DICOM SEG + TID 1500 SR from ``chestctmtl analyze --dicom`` on real LIDC-IDRI-0001, read back
by highdicom and by independent readers (dcmqi, dicom3tools), sent to a real Orthanc.

One full analysis for the whole module (the ``case`` fixture, ~15 s on CPU). It also asks to
send to a port where nothing listens, so the same run proves that a failed send keeps the
files, says why and exits with its own code; the Orthanc test then sends the kept files.
"""
from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="highdicom is not installed (requirements.txt pins it)")

from ChestCTMTLLib import dicom_source  # noqa: E402
from ChestCTMTLLib.volume import LPS_TO_RAS  # noqa: E402
from ChestCTMTLLib.volume_io import read_ct  # noqa: E402
from ChestCTMTLMRML import cli, terminology  # noqa: E402

from dicom_testutil import Orthanc, free_port, seg_nrrd_masks, which  # noqa: E402


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    args = cli.build_parser().parse_args(argv)
    code = cli.run_analyze(args, out=out, err=err)
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def case(lidc0001_dicom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom_case")
    closed = "127.0.0.1:{}:NOBODY".format(free_port())
    code, text = _run(["analyze", str(lidc0001_dicom_dir), "--output", str(out), "--dicom",
                       "--mrb", "--send", closed, "--no-progress", "--no-preview"])
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1, text
    return {"dir": folders[0], "code": code, "text": text,
            "report": json.loads((folders[0] / "report.json").read_text())}


@pytest.fixture(scope="module")
def source(lidc0001_dicom_dir):
    volume = read_ct(lidc0001_dicom_dir)
    return volume, dicom_source.load_source_series(volume)


def _grid(volume):
    return LPS_TO_RAS @ volume.ijk_to_ras


def _seg(case):
    import highdicom as hd

    return hd.seg.segread(str(case["dir"] / "lesions.seg.dcm"))


def _expected_masks(case, volume):
    masks = seg_nrrd_masks(case["dir"] / "lesions.seg.nrrd", _grid(volume), volume.array.shape)
    masks.update(seg_nrrd_masks(case["dir"] / "lungs.seg.nrrd", _grid(volume), volume.array.shape))
    return {name: m for name, m in masks.items() if m.any()}


# ------------------------------------------------------------------ files and the failed send
def test_failed_send_keeps_the_files_and_says_why(case):
    assert case["code"] == cli.EXIT_NOT_SENT, case["text"]
    assert "NOT SENT" in case["text"], case["text"]
    assert "cannot reach the PACS" in case["text"] and "refused" in case["text"], case["text"]
    for name in ("lesions.seg.dcm", "findings.sr.dcm", "lesions.seg.nrrd", "report.json"):
        assert (case["dir"] / name).is_file()
    assert not [p for p in case["dir"].iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ SEG
def test_seg_voxels_equal_seg_nrrd_through_highdicom(case, source):
    volume, series = source
    seg = _seg(case)
    expected = _expected_masks(case, volume)
    labels = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    assert sorted(labels.values()) == sorted(expected)
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    # frames found by the source instance each references: k order = the volume's slices
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=sorted(labels),
                                               combine_segments=False, ignore_spatial_locations=True)
    for n, number in enumerate(sorted(labels)):
        assert np.array_equal(pixels[..., n] > 0, expected[labels[number]] > 0), labels[number]
    # and by geometry: highdicom's volume of the SEG placed by its plane positions
    vol = seg.get_volume(combine_segments=False)
    offset = np.linalg.inv(_grid(volume)) @ vol.affine[:, 3]
    start = np.round(offset[:3]).astype(int)
    assert np.allclose(offset[:3], start, atol=1e-3)


def test_seg_voxels_equal_seg_nrrd_through_dcmqi(case, source, tmp_path):
    import SimpleITK as sitk

    from dicom_testutil import place_on_grid

    tool = which("segimage2itkimage")
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install dcmqi==1.5.7)")
    volume, _ = source
    subprocess.run([tool, "--inputDICOM", str(case["dir"] / "lesions.seg.dcm"),
                    "--outputDirectory", str(tmp_path), "--outputType", "nrrd"],
                   check=True, capture_output=True, timeout=300)
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    expected = _expected_masks(case, volume)
    found = {}
    for group in meta["segmentAttributes"]:
        for attrs in group:
            image = sitk.ReadImage(str(tmp_path / "{}.nrrd".format(attrs["labelID"])))
            found[attrs["SegmentLabel"]] = place_on_grid(image, _grid(volume), volume.array.shape)
            # what Slicer's DICOMSegmentationPlugin turns into the segment's terminology
            modifier = attrs.get("SegmentedPropertyTypeModifierCodeSequence")
            if attrs["SegmentLabel"].endswith("lung"):
                assert modifier["CodeMeaning"].lower() == attrs["SegmentLabel"].split()[0]
            else:
                assert attrs["AnatomicRegionSequence"]["CodeValue"] == "39607008"
    assert sorted(found) == sorted(expected)
    for name, mask in expected.items():
        assert np.array_equal(found[name] > 0, mask > 0), name


def test_seg_codes_references_and_identity(case, source):
    _, series = source
    seg = _seg(case)
    first = series.first
    assert seg.Manufacturer == "ChestCTMTL" and seg.SegmentationType == "BINARY"
    assert seg.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.PatientID == first.PatientID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    for item in seg.SegmentSequence:
        name = item.SegmentLabel
        term = terminology.lung_term(name) if name.endswith("lung") else terminology.lesion_term(name)
        parts = term.entry.split("~")
        type_code = item.SegmentedPropertyTypeCodeSequence[0]
        assert "{}^{}^{}".format(type_code.CodingSchemeDesignator, type_code.CodeValue,
                                 type_code.CodeMeaning) == parts[2]
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert "{}^{}^{}".format(category.CodingSchemeDesignator, category.CodeValue,
                                 category.CodeMeaning) == parts[1]
        if name.endswith("lung"):
            modifier = type_code.SegmentedPropertyTypeModifierCodeSequence[0]
            assert "SCT^{}^{}".format(modifier.CodeValue, modifier.CodeMeaning) == parts[3]
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion \
            == case["report"]["model"]["version"]
    # every frame: the source instance it derives from lies exactly at its plane position
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series.datasets}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose([float(v) for v in position],
                           [float(v) for v in by_uid[ref].ImagePositionPatient], atol=1e-3)


# ------------------------------------------------------------------ SR
def _groups(case):
    import highdicom as hd

    sr = hd.sr.srread(str(case["dir"] / "findings.sr.dcm"))
    return sr, sr.content.get_volumetric_roi_measurement_groups()


def test_sr_measurements_equal_report_json(case):
    sr, groups = _groups(case)
    rows = {row["id"]: row for row in case["report"]["findings"]}
    assert rows, "LIDC-IDRI-0001 should have a finding"
    assert sorted(str(g.tracking_identifier) for g in groups) == sorted(rows)
    seg = _seg(case)
    labels = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    names = {"Volume": "volume_mm3", "Long axis": "long_axis_mm", "Short axis": "short_axis_mm",
             "Diameter": "mean_diameter_mm", "Model finding score": "score"}
    for group in groups:
        row = rows[str(group.tracking_identifier)]
        values = {names[m.name.meaning]: m.value for m in group.get_measurements()}
        for key in names.values():
            expected = row[key]
            if expected in ("", None):
                assert key not in values
            else:
                assert float(values[key]) == pytest.approx(float(expected), abs=1e-9), key
        assert group.finding_type.meaning == terminology.lesion_term(row["type"]).code_meaning
        site = group.finding_sites[0]
        assert site.value.meaning == "Lung" and site.laterality.meaning.lower() == row["lung"]
        assert labels[group.referenced_segment.referenced_segment_numbers[0]
                      if hasattr(group.referenced_segment, "referenced_segment_numbers")
                      else group.referenced_segment[0].ReferencedSOPSequence[0]
                      .ReferencedSegmentNumber] == row["type"]
        evaluations = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
        if row["composition"]:
            assert evaluations["Nodule composition"] == row["composition"]
        if row["size_category"]:
            assert evaluations["Lung-RADS v2022 baseline size band"] == row["size_category"]
        assert "Review decision" not in evaluations  # no review yet
    assert sr.StudyInstanceUID == seg.StudyInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {str(s.SeriesInstanceUID) for s in evidence} >= {str(seg.SeriesInstanceUID)}


def test_sr_algorithm_identification(case):
    sr, groups = _groups(case)
    model = case["report"]["model"]
    for group in groups:  # TID 4019 in every measurement group
        items = {item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue")
                 for item in group[0].ContentSequence}
        assert items["Algorithm Name"] == model["id"]
        assert items["Algorithm Version"] == model["version"]
        assert items["Algorithm Parameters"] == "sha256=" + model["sha256"]
    assert sr.Manufacturer == "ChestCTMTL"


def test_sr_is_what_slicers_tid1500_plugin_loads(case):
    """Slicer 5.12 DICOMTID1500Plugin.isDICOMTID1500 / createLoadableAndAddReferences: an SR
    (Comprehensive 3D) with TemplateIdentifier 1500 whose evidence lists the SEG by its SOP
    class; DICOMSegmentationPlugin takes Modality SEG."""
    sr, _ = _groups(case)
    seg = _seg(case)
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    classes = {str(ref.ReferencedSOPClassUID): str(series.SeriesInstanceUID)
               for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
               for ref in series.ReferencedSOPSequence}
    assert classes["1.2.840.10008.5.1.4.1.1.66.4"] == seg.SeriesInstanceUID
    assert seg.Modality == "SEG"
    assert sr.CompletionFlag == "PARTIAL"  # no reviewer yet: a draft


def test_sr_read_by_dcmqi_tid1500reader(case, tmp_path):
    tool = which("tid1500reader")
    if tool is None:
        pytest.skip("dcmqi's tid1500reader is not installed (pip install dcmqi==1.5.7)")
    out = tmp_path / "sr.json"
    subprocess.run([tool, "--inputDICOM", str(case["dir"] / "findings.sr.dcm"),
                    "--outputMetadata", str(out)], check=True, capture_output=True, timeout=120)
    meta = json.loads(out.read_text())
    rows = {row["id"]: row for row in case["report"]["findings"]}
    groups = meta["Measurements"]
    assert sorted(g["TrackingIdentifier"] for g in groups) == sorted(rows)
    for group in groups:
        row = rows[group["TrackingIdentifier"]]
        for item in group["measurementItems"]:
            key = {"118565006": "volume_mm3", "103339001": "long_axis_mm",
                   "103340004": "short_axis_mm", "81827009": "mean_diameter_mm",
                   "SCORE": "score"}[item["quantity"]["CodeValue"]]
            assert float(item["value"]) == pytest.approx(float(row[key]), abs=1e-6), key


def test_dciodvfy_finds_no_errors(case):
    tool = which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    for name in ("lesions.seg.dcm", "findings.sr.dcm"):
        proc = subprocess.run([tool, str(case["dir"] / name)], capture_output=True, text=True,
                              timeout=300)
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, "{}: {}".format(name, errors)


# ------------------------------------------------------------------ a real PACS
def test_orthanc_receives_seg_and_sr_referencing_the_source(case, source, tmp_path):
    from ChestCTMTLMRML import dicom

    binary = which("Orthanc")
    if binary is None:
        pytest.skip("Orthanc is not installed (as root: apt-get install -y orthanc)")
    _, series = source
    pacs = Orthanc(binary, tmp_path)
    try:
        stored = dicom.send(dicom.case_dicom_files(case["dir"]),
                            "127.0.0.1:{}:{}".format(pacs.dicom_port, pacs.aet))
        assert len(stored) == 2
        instances = pacs.get("/instances")
        assert len(instances) == 2
        modalities = {}
        for orthanc_id in instances:
            tags = pacs.get("/instances/{}/simplified-tags".format(orthanc_id))
            modalities[tags["Modality"]] = tags
            assert tags["StudyInstanceUID"] == series.study_uid
        assert set(modalities) == {"SEG", "SR"}
        assert modalities["SEG"]["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] \
            == series.series_uid
        evidence = modalities["SR"]["CurrentRequestedProcedureEvidenceSequence"][0]
        assert series.series_uid in {s["SeriesInstanceUID"]
                                     for s in evidence["ReferencedSeriesSequence"]}
        # and by C-FIND, what a PACS client would ask
        from pynetdicom import AE
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
        from pydicom.dataset import Dataset

        ae = AE(ae_title="CHESTCTMTL")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID, query.Modality = \
            "SERIES", series.study_uid, ""
        query.SeriesInstanceUID = ""
        found = [ds.Modality for status, ds in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind) if ds is not None]
        assoc.release()
        assert sorted(found) == ["SEG", "SR"]
    finally:
        pacs.stop()


def test_send_to_wrong_ae_title_says_why(case, tmp_path):
    from ChestCTMTLMRML import dicom

    binary = which("Orthanc")
    if binary is None:
        pytest.skip("Orthanc is not installed (as root: apt-get install -y orthanc)")
    pacs = Orthanc(binary, tmp_path)
    try:
        with pytest.raises(dicom.SendError, match="did not accept"):
            dicom.send(dicom.case_dicom_files(case["dir"]),
                       "127.0.0.1:{}:WRONGAET".format(pacs.dicom_port))
        assert pacs.get("/instances") == []
    finally:
        pacs.stop()


# ------------------------------------------------------------------ after a review (Slicer path)
def test_review_writes_decisions_and_the_edited_segmentation(case, lidc0001_dicom_dir, tmp_path):
    """The module's Save review: the reviewed scene (here the case's .mrb on a real headless
    MRML scene) -> SR with the reviewer's decision and note, SEG of the segments as edited."""
    import highdicom as hd

    from ChestCTMTLMRML import dicom, headless, nodes, review

    app = headless.HeadlessSlicer()
    try:
        scene = app.scene
        assert scene.ReadFromMRB(str(next(case["dir"].glob("*.mrb"))))
        volume = scene.GetFirstNodeByName(case["dir"].name)
        results = nodes.find_result_nodes(scene, volume)
        roi = results.rois[0]
        review.set_finding_status(roi, "rejected", "vessel crossing, not a nodule")
        results.lungs.GetSegmentation().RemoveSegment("left lung")  # the reviewer's edit
        expected = review.review_report(scene, volume)["findings"][0]
        closed = "127.0.0.1:{}:NOBODY".format(free_port())
        written, send_error = dicom.save_review_dicom(
            scene, volume, tmp_path, reviewer="Reviewer^Test", send_to=closed,
            source_files=sorted(map(str, lidc0001_dicom_dir.glob("*.dcm"))))
        assert send_error and "cannot reach the PACS" in send_error
        # a volume that does not come from DICOM gets the specific refusal
        volume.GetStorageNode().SetFileName(str(tmp_path / "ct.nrrd"))
        with pytest.raises(dicom.DicomSourceError, match="need a DICOM source"):
            dicom.write_review_dicom(scene, volume, tmp_path / "never")
        assert not (tmp_path / "never").exists()
    finally:
        app.close()
    seg = hd.seg.segread(str(written.seg_path))
    assert "left lung" not in {s.SegmentLabel for s in seg.SegmentSequence}
    assert "right lung" in {s.SegmentLabel for s in seg.SegmentSequence}
    sr = hd.sr.srread(str(written.sr_path))
    assert sr.CompletionFlag == "COMPLETE"
    group = sr.content.get_volumetric_roi_measurement_groups()[0]
    evaluations = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
    assert evaluations["Review decision"] == "rejected"
    notes = [item.TextValue for item in group[0].ContentSequence
             if item.ConceptNameCodeSequence[0].CodeMeaning == "Comment"]
    assert notes == ["vessel crossing, not a nodule"]
    volume_mm3 = {m.name.meaning: m.value for m in group.get_measurements()}["Volume"]
    assert float(volume_mm3) == pytest.approx(expected["volume_mm3_segmentation"])
    # same finding, same tracking UID as in the analysis' SR
    _, analysed = _groups(case)
    assert str(group.tracking_uid) == str(analysed[0].tracking_uid)
    observers = [item.TextValue if "TextValue" in item else item.get("PersonName")
                 for item in sr.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeMeaning == "Person Observer Name"]
    assert [str(o) for o in observers] == ["Reviewer^Test"]


def test_a_scan_without_findings_still_gets_its_sr(source, tmp_path):
    """A normal chest has no finding: the TID 1500 report says "Finding: None" (failed before
    the fix: highdicom refuses a report without a measurement group, so no SR was written)."""
    import highdicom as hd

    from ChestCTMTLLib import dicom_out
    from ChestCTMTLLib.results import ModelIdentity

    volume, series = source
    written = dicom_out.write_dicom_objects(tmp_path, series, [], [], {},
                                            ModelIdentity("m", "1", "ab" * 32))
    assert written.seg_path is None and written.sr_path.is_file()
    sr = hd.sr.srread(str(written.sr_path))
    text = str(sr)
    assert "no findings" in text and "260413007" in text
