"""The source CT series a DICOM SEG/SR must reference, matched slice by slice to the CTVolume.

Why this exists: a SEG frame is only correct when it names the exact source instance it was
derived from and sits at that instance's Image Position (Patient). SimpleITK orders the slices
when it reads the series; here the headers are read again with pydicom (no pixel data) and each
instance is placed on the volume's k axis by its position along the slice normal, so the SEG
and the volume can never disagree about which slice is which. The same pass refuses a source
that cannot be referenced cleanly: several image series, a localizer or other image of a
different orientation or size inside the series, or missing slices (a gap in the positions).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import errors
from .volume import LPS_TO_RAS, CTVolume

#: A gap between neighbouring slice positions this much larger than the usual step is a
#: missing slice (a tolerance for rounding in Image Position (Patient), not for real gaps).
GAP_TOLERANCE = 1.5
_POSITION_TOLERANCE_MM = 0.05


DicomSourceError = errors.DicomSourceError
DicomSeriesError = errors.DicomSeriesError


@dataclass(frozen=True)
class SliceHeader:
    """What the slice checks need of one instance (from pydicom or from ITK's dictionary)."""

    label: str  # how the message names it (instance number)
    image_type: str
    orientation: Tuple[float, ...]  # Image Orientation (Patient), 6 values
    rows: int
    columns: int
    position: Tuple[float, float, float]  # Image Position (Patient)


@dataclass
class SourceSeries:
    """The source instances (headers only) in the volume's k order."""

    datasets: list  # pydicom Datasets, datasets[k] is slice k of the volume
    files: List[str]

    @property
    def first(self):
        return self.datasets[0]

    @property
    def series_uid(self) -> str:
        return str(self.first.SeriesInstanceUID)

    @property
    def study_uid(self) -> str:
        return str(self.first.StudyInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.FrameOfReferenceUID)


def _read_headers(paths: Sequence[str]):
    import pydicom

    out = []
    for path in paths:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - pydicom raises several types for non-DICOM files
            continue
        if "SOPInstanceUID" in ds and "ImagePositionPatient" in ds and "Rows" in ds:
            out.append((str(path), ds))
    return out


def _files_of(folder: Path) -> List[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file())


def require_dicom_input(volume: CTVolume) -> None:
    """Raise DicomSourceError unless ``volume`` was read from a DICOM series folder."""
    if (volume.metadata or {}).get("format") != "dicom":
        raise DicomSourceError("DICOM objects need a DICOM source: this input is {} (write the "
                               "case without --dicom, or analyse the DICOM series itself)".format(
                                   (volume.metadata or {}).get("format") or "not DICOM"),
                               volume.source_path)


def check_series_folder(folder) -> None:
    """The checks of :func:`load_source_series` that need no analysis: run before analysing.

    Every file of ``folder`` (recursively) that is a DICOM image must belong to one series of
    equally oriented, equally sized slices without gaps.
    """
    folder = Path(folder)
    headers = _read_headers(_files_of(folder))
    if not headers:
        raise DicomSourceError("DICOM objects need a DICOM source: no DICOM images in this "
                               "folder", str(folder))
    _check_headers([ds for _, ds in headers], str(folder))


def _check_headers(datasets: list, where: str) -> None:
    series = sorted({str(ds.SeriesInstanceUID) for ds in datasets})
    if len(series) > 1:
        counts = ", ".join("{} ({} images)".format(uid, sum(str(d.SeriesInstanceUID) == uid
                                                            for d in datasets)) for uid in series)
        raise DicomSourceError("the folder holds {} image series ({}); DICOM objects reference "
                               "exactly one: give the folder of one series".format(
                                   len(series), counts), where)
    check_slices([_slice_header(ds) for ds in datasets], where)


def _slice_header(ds) -> SliceHeader:
    return SliceHeader(label=str(ds.get("InstanceNumber", "?")),
                       image_type="\\".join(ds.get("ImageType", []) or ["?"]),
                       orientation=tuple(float(v) for v in ds.ImageOrientationPatient),
                       rows=int(ds.Rows), columns=int(ds.Columns),
                       position=tuple(float(v) for v in ds.ImagePositionPatient))


def check_slices(slices: Sequence[SliceHeader], where: str) -> None:
    """Raise DicomSeriesError unless the slices form one regular volume.

    Readers stack whatever a series holds: a localizer among the slices, or a gap where slices
    are missing, silently yields one volume with an averaged slice spacing, so every slice
    past the defect sits at the wrong place. The series is what most of its instances are;
    the odd ones are named.
    """
    def shape_of(s):
        return (tuple(round(v, 4) for v in s.orientation), s.rows, s.columns)

    shapes = [shape_of(s) for s in slices]
    usual = max(set(shapes), key=shapes.count)
    odd = [s for s, shape in zip(slices, shapes) if shape != usual]
    if odd:
        raise DicomSeriesError(
            "{} instance{} (the first: number {}, image type {}) {} another orientation or size "
            "than the series ({}x{}, orientation {}): a localizer or a reformat is mixed into "
            "the series; remove it".format(
                len(odd), "" if len(odd) == 1 else "s", odd[0].label, odd[0].image_type,
                "has" if len(odd) == 1 else "have", usual[1], usual[2],
                "/".join("{:g}".format(v) for v in usual[0])), where)
    iop = np.asarray(slices[0].orientation)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.sort([float(np.dot(normal, s.position)) for s in slices])
    steps = np.diff(positions)
    if steps.size and steps.min() < _POSITION_TOLERANCE_MM:
        raise DicomSeriesError("two instances lie at the same slice position ({:.2f} mm): the "
                               "series holds duplicates or several acquisitions".format(
                                   positions[int(np.argmin(steps))]), where)
    if steps.size >= 2:
        step = float(np.median(steps))
        big = np.nonzero(steps > GAP_TOLERANCE * step)[0]
        if big.size:
            i = int(big[0])
            raise DicomSeriesError(
                "missing slices: a gap of {:.2f} mm between slice positions {:.2f} and {:.2f} mm "
                "where the series steps {:.2f} mm ({} gap{})".format(
                    steps[i], positions[i], positions[i + 1], step, big.size,
                    "" if big.size == 1 else "s"), where)


def load_source_series(volume: CTVolume, files: Optional[Sequence[str]] = None) -> SourceSeries:
    """The source instances of ``volume`` in its k order; raises DicomSourceError.

    ``files``: the instances (e.g. from Slicer's DICOM database); default: every file under
    the volume's source folder that belongs to the series the volume was read from.
    """
    meta = volume.metadata or {}
    if files is None:
        require_dicom_input(volume)
        folder = Path(volume.source_path or "")
        files = meta.get("files") or _files_of(folder)
    headers = _read_headers(files)
    uid = meta.get("series_uid")
    if uid:
        headers = [(p, ds) for p, ds in headers if str(ds.SeriesInstanceUID) == uid]
    if not headers:
        raise DicomSourceError("DICOM objects need a DICOM source: no DICOM images of the "
                               "analysed series were found", volume.source_path)
    where = volume.source_path or "DICOM source"
    _check_headers([ds for _, ds in headers], where)
    n_slices = volume.array.shape[0]
    if len(headers) != n_slices:
        raise DicomSourceError("the series has {} instances but the volume {} slices: the "
                               "volume is not this series".format(len(headers), n_slices), where)
    ijk_to_lps = LPS_TO_RAS @ volume.ijk_to_ras
    rows, cols = volume.array.shape[1:]
    inverse = np.linalg.inv(ijk_to_lps)
    directions = ijk_to_lps[:3, :3] / np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    iop = np.asarray([float(v) for v in headers[0][1].ImageOrientationPatient])
    if not (np.allclose(directions[:, 0], iop[:3], atol=1e-4)
            and np.allclose(directions[:, 1], iop[3:], atol=1e-4)):
        raise DicomSourceError("the volume's row/column directions are not the series' Image "
                               "Orientation (Patient): the volume is not this series", where)
    ordered: list = [None] * n_slices
    paths: list = [None] * n_slices
    for path, ds in headers:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DicomSourceError("instance size {}x{} differs from the volume's {}x{}".format(
                ds.Rows, ds.Columns, rows, cols), where)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient] + [1.0])
        i, j, k = (inverse @ ipp)[:3]
        kk = int(round(k))
        if abs(i) > 1e-2 or abs(j) > 1e-2 or abs(k - kk) > 1e-2 or not 0 <= kk < n_slices \
                or ordered[kk] is not None:
            raise DicomSourceError("instance {} at {} does not fall on a slice of the analysed "
                                   "volume".format(ds.SOPInstanceUID, list(ipp[:3])), where)
        ordered[kk], paths[kk] = ds, path
    return SourceSeries(datasets=ordered, files=paths)
