"""Reading real CTs (DICOM series, NIfTI) into CTVolume with Slicer's RAS geometry, writing
them back, and the axial view used by inference."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from ChestCTMTLLib import volume_io
from ChestCTMTLLib.orientation import axial_view
from ct_testutil import crop_volume, oblique_copy, read_cached, restored_copy


def test_dicom_series_geometry_matches_simpleitk_in_ras(lidc0001_dicom_dir):
    import SimpleITK as sitk

    vol = volume_io.read_ct(lidc0001_dicom_dir)
    assert vol.array.shape == (133, 512, 512)
    assert vol.array.dtype == np.int16
    np.testing.assert_allclose(vol.spacing, [0.703125, 0.703125, 2.5], atol=1e-4)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(lidc0001_dicom_dir)))
    ref = reader.Execute()
    # ITK index (i, j, k) -> LPS point; RAS = LPS with R, A negated
    for idx in [(0, 0, 0), (511, 0, 0), (100, 300, 77), (511, 511, 132)]:
        lps = np.array(ref.TransformIndexToPhysicalPoint(idx))
        ras = vol.ijk_to_ras_points([idx])[0]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-3)
    np.testing.assert_array_equal(vol.array[77], sitk.GetArrayViewFromImage(ref)[77])
    assert vol.metadata["format"] == "dicom" and vol.metadata["n_files"] == 133


def test_dicom_patient_folder_finds_the_series_below(lidc0001_dicom_dir):
    """A patient/study/series tree is searched; the case name is the folder given."""
    patient = lidc0001_dicom_dir.parent.parent
    vol = volume_io.read_ct(patient, validate=False)
    assert vol.array.shape == (133, 512, 512)
    assert vol.name == patient.name


def test_nifti_nodule_centroid_lands_at_its_published_lps_position(lidc0002_nifti):
    """Known answer from nodules.csv (centroid in LPS mm): our RAS = (-L, -P, S)."""
    from scipy import ndimage

    folder = lidc0002_nifti.parent
    vol = read_cached(str(lidc0002_nifti))
    assert vol.array.shape == (261, 512, 512) and vol.name == "image"
    mask = volume_io.read_ct(folder / "nodule_mask.nii.gz", validate=False)
    np.testing.assert_allclose(mask.ijk_to_ras, vol.ijk_to_ras)
    with open(folder / "nodules.csv") as f:
        rows = [r for r in csv.DictReader(f) if float(r["volume_mm3"]) > 100]
    assert rows, "nodules.csv lists no nodule >= 100 mm3"
    labels, n = ndimage.label(mask.array > 0)
    sizes = np.bincount(labels.ravel())[1:]
    k, j, i = ndimage.center_of_mass(labels == (1 + int(np.argmax(sizes))))
    ras = vol.ijk_to_ras_points([[i, j, k]])[0]
    lps = np.array([float(rows[0][c]) for c in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")])
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1.0)


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_write_read_round_trip_keeps_voxels_and_geometry(lidc0002_nifti, tmp_path, ext):
    vol = crop_volume(read_cached(str(lidc0002_nifti)), 120, 126)
    out = volume_io.write_ct(vol, tmp_path / ("crop" + ext))
    assert [p.name for p in tmp_path.iterdir()] == ["crop" + ext], "temporary file left behind"
    back = volume_io.read_ct(out)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.ijk_to_ras, vol.ijk_to_ras, atol=1e-4)
    assert back.name == "crop"


def test_oblique_nrrd_round_trip(lidc0002_nifti, tmp_path):
    vol = oblique_copy(crop_volume(read_cached(str(lidc0002_nifti)), 120, 126), 25.0, "x")
    assert abs(vol.directions_ras[2, 2]) < 0.95  # really oblique
    back = volume_io.read_ct(volume_io.write_ct(vol, tmp_path / "oblique.nrrd"))
    np.testing.assert_allclose(back.ijk_to_ras, vol.ijk_to_ras, atol=1e-4)
    np.testing.assert_array_equal(back.array, vol.array)


def test_case_names(tmp_path):
    assert volume_io.case_name("/x/image.nii.gz") == "image"
    assert volume_io.case_name("/x/a.b.nrrd") == "a.b"
    assert volume_io.case_name("/x/scan.mha") == "scan"
    (tmp_path / "LIDC-X").mkdir()
    assert volume_io.case_name(tmp_path / "LIDC-X") == "LIDC-X"


# --------------------------------------------------------------------------- axial view
@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (False, False, False)),
                                        ((2, 0, 1), (False, True, False)),
                                        ((1, 2, 0), (True, False, True)),
                                        ((0, 2, 1), (True, True, True))])
def test_axial_view_undoes_any_storage_order(lidc0002_nifti, perm, flips):
    """A volume stored sagitally/coronally/flipped has the same axial view as the original."""
    vol = crop_volume(read_cached(str(lidc0002_nifti)), 100, 108, 100, 140, 50, 110)
    other = restored_copy(vol, perm, flips)
    v0 = axial_view(vol.ijk_to_ras, vol.array.shape)
    v1 = axial_view(other.ijk_to_ras, other.array.shape)
    np.testing.assert_array_equal(v1.to_canonical(other.array), v0.to_canonical(vol.array))
    np.testing.assert_allclose(v1.spacing, v0.spacing)
    # continuous canonical coordinates map to the same RAS point through both
    pts = np.array([[0, 0, 0], [3.5, 10.25, 40.0], [7, 39, 59]], float)
    np.testing.assert_allclose(other.ijk_to_ras_points(v1.canonical_to_ijk(pts)),
                               vol.ijk_to_ras_points(v0.canonical_to_ijk(pts)), atol=1e-6)
    # and the inverse view restores input order exactly
    np.testing.assert_array_equal(v1.from_canonical(v1.to_canonical(other.array)), other.array)


def test_axial_view_orders_slices_rows_columns_radiologically():
    m = np.diag([-0.7, -0.7, 2.0, 1.0])  # LPS identity (DICOM default) in RAS
    v = axial_view(m, (10, 20, 30))
    assert v.perm == (0, 1, 2) and v.flips == (False, False, False) and v.is_identity
    m2 = np.diag([0.7, 0.7, -2.0, 1.0])  # RAS-aligned, slices running downwards
    v2 = axial_view(m2, (10, 20, 30))
    assert v2.flips == (True, True, True)
    ijk = v2.canonical_to_ijk([[0, 0, 0]])[0]
    np.testing.assert_allclose(ijk, [29, 19, 9])  # R-most column, A-most row, lowest slice


def test_nifti_gzip_with_trailing_member_is_accepted(lidc0002_nifti, tmp_path):
    """The truncation check's fast path (gzip trailer size) fails on multi-member files; the
    full check must then accept a complete file rather than call it truncated."""
    import gzip

    vol = crop_volume(read_cached(str(lidc0002_nifti)), 120, 124)
    path = volume_io.write_ct(vol, tmp_path / "multi.nii.gz")
    with open(path, "ab") as f:
        f.write(gzip.compress(b"\0" * 16))  # a second gzip member, as bgzip-style tools write
    back = volume_io.read_ct(path)
    np.testing.assert_array_equal(back.array, vol.array)


@pytest.mark.parametrize("stored", ["int16", "int32", "float32"])
def test_the_voxels_read_are_read_only_and_int16_ones_are_itks_own(lidc0002_nifti, tmp_path,
                                                                   stored):
    """No stage may write into the CT it was given: read_ct's array refuses writes. A CT
    stored as int16 (most are) is not copied: the array is ITK's buffer, kept alive by the
    array itself (and by any view of it) after the reader's image is gone."""
    import gc

    import SimpleITK as sitk

    source = volume_io.read_ct(lidc0002_nifti)
    path = tmp_path / ("ct-%s.nrrd" % stored)
    volume_io.write_ct(source, path, array=source.array[90:110].astype(stored))
    vol = volume_io.read_ct(path, validate=False)
    with pytest.raises(ValueError, match="read-only"):
        vol.array[0, 0, 0] = 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert vol.array.dtype == (np.float32 if stored == "float32" else np.int16)
    assert (vol.array.base is not None) == (stored != "int32")  # a copy only to narrow int32
    part = vol.array[5:15, ::3]
    del vol
    gc.collect()
    np.ones(part.size * 8, dtype=np.int64)  # reuse freed memory, if the buffer had been freed
    np.testing.assert_array_equal(part, expected[5:15, ::3])
