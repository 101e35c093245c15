"""Inputs of ``chestctmtl analyze --dicom``: what DICOM objects cannot reference is refused
before any analysis with its own message and nothing written; a JPEG-lossless copy of a real
series decodes to the same CT and can be referenced.

The defective series are copies of 40 real LIDC-IDRI-0001 slices with one defect each (no
analysis runs: the refusal comes first), so this file takes seconds.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from ChestCTMTLLib import dicom_source, errors  # noqa: E402
from ChestCTMTLLib.volume_io import read_ct, write_ct  # noqa: E402
from ChestCTMTLMRML import cli  # noqa: E402

from dicom_testutil import copy_series  # noqa: E402


def _run(argv):
    out = io.StringIO()
    args = cli.build_parser().parse_args(argv)
    return cli.run_analyze(args, out=out, err=out), out.getvalue()


@pytest.fixture(scope="module")
def slices(lidc0001_dicom_dir):
    """40 neighbouring slices of the real series, in position order."""
    files = sorted(lidc0001_dicom_dir.glob("*.dcm"),
                   key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                       .ImagePositionPatient[2]))
    return files[40:80]


def _refused(folder: Path, tmp_path: Path, words: str):
    out = tmp_path / "out"
    code, text = _run(["analyze", str(folder), "--output", str(out), "--dicom",
                       "--no-progress", "--no-preview"])
    assert code == cli.EXIT_SOME_FAILED, text
    assert ("[dicom-source]" in text or "[dicom-series]" in text) and words in text, text
    assert not out.exists() or not list(out.iterdir()), "something was written: {}".format(
        list(out.iterdir()))
    return text


def _modified(src: Path, dst: Path, **changes) -> None:
    ds = pydicom.dcmread(src)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dst)


def test_volume_file_with_dicom_is_refused(slices, tmp_path):
    volume = read_ct(copy_series(None, tmp_path / "series", slices))
    path = write_ct(volume, tmp_path / "ct.nrrd")
    _refused(path, tmp_path, "DICOM objects need a DICOM source")


def test_two_series_are_refused(slices, tmp_path):
    folder = copy_series(None, tmp_path / "two", slices[:20])
    other = pydicom.uid.generate_uid()
    for n, f in enumerate(slices[20:]):
        _modified(f, folder / "other{:03d}.dcm".format(n), SeriesInstanceUID=other)
    _refused(folder, tmp_path, "2 image series")


def test_missing_slices_are_refused(slices, tmp_path):
    folder = copy_series(None, tmp_path / "gap", slices[:18] + slices[21:])
    text = _refused(folder, tmp_path, "missing slices")
    assert "gap of 10.00 mm" in text  # 3 missing 2.5 mm slices: a 4-step gap


def test_localizer_in_the_series_is_refused(slices, tmp_path):
    folder = copy_series(None, tmp_path / "loc", slices)
    _modified(slices[0], folder / "000000_localizer.dcm", ImageOrientationPatient=[1, 0, 0, 0, 0, -1],
              ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], InstanceNumber=999)
    text = _refused(folder, tmp_path, "localizer")
    assert "number 999" in text  # the odd one is named even when it sorts first


def test_without_dicom_two_series_read_the_largest(slices, tmp_path):
    """Without --dicom, volume_io reads the largest series of a folder and lists the others
    (its documented behaviour), so a second series is no error there."""
    folder = copy_series(None, tmp_path / "two", slices[:30])
    other = pydicom.uid.generate_uid()
    for n, f in enumerate(slices[30:]):
        _modified(f, folder / "other{:03d}.dcm".format(n), SeriesInstanceUID=other)
    volume = read_ct(folder)
    assert volume.array.shape[0] == 30 and volume.metadata["other_series"] == [other]
    with pytest.raises(dicom_source.DicomSourceError):
        dicom_source.check_series_folder(folder)


def test_without_dicom_a_localizer_or_missing_slices_are_refused_too(slices, tmp_path):
    """ITK stacks both into one volume with an averaged slice spacing (41 slices at 2.44 mm,
    37 at 2.71 mm here), misplacing every slice past the defect: read_ct refuses them."""
    gap = copy_series(None, tmp_path / "gap", slices[:18] + slices[21:])
    with pytest.raises(errors.DicomSeriesError, match="missing slices"):
        read_ct(gap)
    localizer = copy_series(None, tmp_path / "loc", slices)
    _modified(slices[0], localizer / "000000_localizer.dcm",
              ImageOrientationPatient=[1, 0, 0, 0, 0, -1], InstanceNumber=999,
              ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.raises(errors.DicomSeriesError, match="localizer"):
        read_ct(localizer)
    assert read_ct(copy_series(None, tmp_path / "fine", slices)).array.shape[0] == 40


# ------------------------------------------------------------------ compressed input
@pytest.fixture(scope="module")
def jpeg_lossless(slices, tmp_path_factory):
    """The 40 slices transcoded to JPEG Lossless (Process 14, SV1) with GDCM."""
    gdcm = pytest.importorskip("gdcm", reason="python-gdcm is needed to encode JPEG lossless")
    folder = tmp_path_factory.mktemp("jpeg_lossless")
    syntax = gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1)
    for f in slices:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(f))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(syntax)
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.SetFileName(str(folder / f.name))
        assert writer.Write()
    return folder


def test_jpeg_lossless_series_reads_as_the_same_ct(slices, jpeg_lossless, tmp_path):
    first = pydicom.dcmread(next(jpeg_lossless.glob("*.dcm")))
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    original = read_ct(copy_series(None, tmp_path / "plain", slices))
    compressed = read_ct(jpeg_lossless)
    assert np.array_equal(original.array, compressed.array)
    assert np.allclose(original.ijk_to_ras, compressed.ijk_to_ras)
    # pydicom decodes it too (pylibjpeg / gdcm plugins): the path DICOM tools take
    plain = pydicom.dcmread(slices[0])
    assert np.array_equal(pydicom.dcmread(jpeg_lossless / slices[0].name).pixel_array,
                          plain.pixel_array)


def test_jpeg_lossless_series_can_be_referenced_by_a_seg(jpeg_lossless):
    pytest.importorskip("highdicom")
    from ChestCTMTLLib.dicom_seg import SegmentSpec, build_segmentation
    from ChestCTMTLLib.results import ModelIdentity

    volume = read_ct(jpeg_lossless)
    source = dicom_source.load_source_series(volume)
    mask = np.zeros(volume.array.shape, np.uint8)
    mask[5:9, 100:140, 300:330] = 1  # off-centre: a flip would move it
    seg, numbered = build_segmentation(
        source, [SegmentSpec("nodule-mass", mask, ("SCT", "49755003", "Morphologically Altered "
                                                   "Structure"), ("SCT", "27925004", "Nodule"))],
        ModelIdentity("m", "1", "0" * 64))
    uids = [str(ds.SOPInstanceUID) for ds in source.datasets]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1],
                                               ignore_spatial_locations=True)
    assert np.array_equal(pixels[..., 0] > 0, mask > 0)


def test_fresh_slicer_imports_the_dicom_code_and_names_what_to_install(tmp_path):
    """In a fresh Slicer (no highdicom/pynetdicom/pylibjpeg) the module can import the DICOM
    adapter and learn the pinned packages to offer, instead of failing at import."""
    import slicer_like

    folder = slicer_like.make_site(tmp_path / "site")
    code = ("import ChestCTMTLMRML.dicom as d\n"
            "print('|'.join(d.missing_dependencies()))\n")
    proc = slicer_like.run(["-c", code], folder)
    assert proc.returncode == 0, proc.stderr
    missing = proc.stdout.strip().split("|")
    assert missing == ["highdicom==0.28.2", "pynetdicom==3.0.4", "pylibjpeg==2.1.0",
                       "pylibjpeg-libjpeg==2.5.0"]
    requirements = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text().split()
    assert set(missing) <= set(requirements)  # offered = pinned


def test_a_failed_write_leaves_neither_object(jpeg_lossless, tmp_path):
    """The SR cannot be placed (a folder holds its name): the SEG written just before it and
    every temporary file are gone again."""
    pytest.importorskip("highdicom")
    from ChestCTMTLLib import dicom_out
    from ChestCTMTLLib.dicom_seg import SegmentSpec
    from ChestCTMTLLib.dicom_sr import FindingRecord
    from ChestCTMTLLib.results import ModelIdentity

    volume = read_ct(jpeg_lossless)
    source = dicom_source.load_source_series(volume)
    mask = np.zeros(volume.array.shape, np.uint8)
    mask[5:9, 100:140, 300:330] = 1
    nodule = ("SCT", "27925004", "Nodule")
    spec = SegmentSpec("nodule-mass", mask, ("SCT", "49755003", "Morphologically Altered "
                                             "Structure"), nodule)
    finding = FindingRecord("L1", "nodule-mass", {"volume_mm3": 12.5, "score": 0.9}, lung="left")
    (tmp_path / dicom_out.SR_FILE).mkdir()  # the SR's place is taken
    with pytest.raises(OSError):
        dicom_out.write_dicom_objects(tmp_path, source, [spec], [finding],
                                      {"nodule-mass": nodule}, ModelIdentity("m", "1", "0" * 64))
    assert sorted(p.name for p in tmp_path.iterdir()) == [dicom_out.SR_FILE]
    (tmp_path / dicom_out.SR_FILE).rmdir()
    written = dicom_out.write_dicom_objects(tmp_path, source, [spec], [finding],
                                            {"nodule-mass": nodule}, ModelIdentity("m", "1", "0" * 64))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dicom_out.SEG_FILE,
                                                                  dicom_out.SR_FILE])
    assert written.segment_numbers == {"nodule-mass": 1}


@pytest.mark.parametrize("bad, words", [("pacs:104", "HOST:PORT:AET"),
                                        ("pacs:port:AET", "must be a number"),
                                        ("pacs:104:" + "A" * 17, "at most 16")])
def test_a_bad_send_destination_stops_before_anything(bad, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["analyze", str(tmp_path), "--output", str(tmp_path / "out"), "--send", bad])
    assert stop.value.code == cli.EXIT_CANNOT_START
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
