"""Reading CT volumes from disk into :class:`CTVolume`, and checking they are analysable CT.

Why this module exists: every entry point (the Slicer module's "load file" path, the
``chestctmtl analyze`` command, the batch script, training's volume adapters) must refuse the
same bad inputs with the same specific error *before* anything is computed or written.
SimpleITK does the decoding (NRRD, NIfTI, MetaImage, DICOM series); we add what it does not:

* a truncated ``.nii.gz`` / ``.nii`` is *not* reported by ITK's NIfTI reader (it silently
  returns a partly empty image), so NIfTI payload length is checked here;
* a header that reads but a body that does not is called "truncated", a header that does not
  read is "unreadable";
* geometry is converted once, LPS -> RAS, with :func:`volume.ijk_to_ras_from_itk`.
"""
from __future__ import annotations

import gzip
import os
import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from . import errors
from .orientation import axial_view
from .volume import CTVolume, ijk_to_ras_from_itk, itk_geometry_from_ijk_to_ras

VOLUME_EXTENSIONS = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")

# Limits of what the engine will analyse (see validate_ct); module constants so the UI can
# state them and tests can build inputs just past them.
MIN_SLICES = 3
MIN_INPLANE_VOXELS = 64
MIN_INPLANE_MM = 80.0
AIR_THRESHOLD_HU = -500.0
MIN_AIR_FRACTION = 0.005  # a chest CT always has air (outside the body, in the lungs)
MIN_TISSUE_FRACTION = 0.005
MAX_PLAUSIBLE_HU = 40000.0
MIN_PLAUSIBLE_HU = -4000.0


# --------------------------------------------------------------------------- helpers
def case_name(path) -> str:
    """The file name without its (possibly double) extension, or a DICOM folder's name."""
    p = Path(path)
    if p.is_dir():
        return p.resolve().name or "volume"
    name = p.name
    lower = name.lower()
    for ext in VOLUME_EXTENSIONS + (".seg.nrrd", ".nrrd.gz"):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return p.stem or name


def _sitk():
    import SimpleITK as sitk  # local: keeps `import ChestCTMTLLib` light

    return sitk


class _QuietITK:
    """Silence ITK's global warning printer while probing folders (restored afterwards)."""

    def __enter__(self):
        sitk = _sitk()
        self._old = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        return self

    def __exit__(self, *exc):
        _sitk().ProcessObject.SetGlobalWarningDisplay(self._old)
        return False


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else exc.__class__.__name__


# --------------------------------------------------------------------------- NIfTI integrity
def _nifti_expected_bytes(header: bytes) -> Optional[int]:
    """Header + voxel bytes a single-file NIfTI-1/2 must hold, or None if not recognisable."""
    if len(header) >= 348:
        for endian in ("<", ">"):
            if struct.unpack(endian + "i", header[0:4])[0] == 348:
                dims = struct.unpack(endian + "8h", header[40:56])
                bitpix = struct.unpack(endian + "h", header[72:74])[0]
                vox_offset = struct.unpack(endian + "f", header[108:112])[0]
                n = int(np.prod([max(1, d) for d in dims[1:1 + max(1, min(dims[0], 7))]]))
                return int(vox_offset) + n * bitpix // 8
    if len(header) >= 540:
        for endian in ("<", ">"):
            if struct.unpack(endian + "i", header[0:4])[0] == 540:
                dims = struct.unpack(endian + "8q", header[16:80])
                bitpix = struct.unpack(endian + "h", header[14:16])[0]
                vox_offset = struct.unpack(endian + "q", header[168:176])[0]
                n = int(np.prod([max(1, d) for d in dims[1:1 + max(1, min(dims[0], 7))]]))
                return int(vox_offset) + n * bitpix // 8
    return None


def _check_nifti_payload(path: Path) -> Optional[str]:
    """Return a reason string if a NIfTI file's voxel data is incomplete, else None.

    For ``.gz`` first the cheap test: gzip's trailer stores the uncompressed size (mod 2**32);
    if it equals what the header announces the file is complete (a cut file ends in arbitrary
    compressed bytes, which match with probability 2**-32). Otherwise (cut, multi-member or
    padded files) the whole stream is decompressed (zlib releases the GIL, so this runs in a
    thread beside ITK's own read), keeping only byte counts, never the data.
    """
    gz = path.name.lower().endswith(".gz")
    try:
        if gz:
            with gzip.open(path, "rb") as g:
                expected = _nifti_expected_bytes(g.read(544))
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", f.read(4))[0]
            if expected is not None and isize == expected % (1 << 32):
                return None
        if not gz:
            with open(path, "rb") as f:
                header = f.read(544)
            expected = _nifti_expected_bytes(header)
            actual = path.stat().st_size
            if expected is not None and actual < expected:
                return "file holds %d of the %d bytes its header announces" % (actual, expected)
            return None
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        total = 0
        header = b""
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                out = d.decompress(chunk)
                if len(header) < 544:
                    header += out[: 544 - len(header)]
                total += len(out)
                if d.eof:
                    break
        if not d.eof:
            return "compressed stream ends early (%d bytes decompressed)" % total
        expected = _nifti_expected_bytes(header)
        if expected is not None and total < expected:
            return "decompressed %d of the %d bytes its header announces" % (total, expected)
        return None
    except (OSError, zlib.error, EOFError, gzip.BadGzipFile) as exc:  # type: ignore[attr-defined]
        return "compressed data is damaged (%s)" % exc


# --------------------------------------------------------------------------- DICOM
def find_dicom_series(folder) -> List[Tuple[str, List[str]]]:
    """All (series UID, sorted file names) under ``folder`` (recursively), largest first."""
    sitk = _sitk()
    found = []
    with _QuietITK():
        for root, dirs, files in os.walk(str(folder)):
            dirs.sort()
            if not files:
                continue
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(root):
                names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, uid))
                if names:
                    found.append((uid, names))
    found.sort(key=lambda s: -len(s[1]))
    return found


def _read_dicom_folder(folder: Path):
    sitk = _sitk()
    series = find_dicom_series(folder)
    if not series:
        raise errors.EmptyDicomFolderError("no DICOM image series found in this folder",
                                           str(folder))
    uid, names = series[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice headers for _check_slices, no re-read
    try:
        with _QuietITK():
            image = reader.Execute()
    except RuntimeError as exc:
        raise errors.UnreadableFileError(
            "DICOM series %s could not be read (%s)" % (uid, _last_line(exc)), str(folder))
    _check_slices(reader, len(names), str(folder))
    meta = {"format": "dicom", "series_uid": uid, "n_files": len(names),
            "other_series": [s[0] for s in series[1:]]}
    return image, meta


_SLICE_TAGS = ("0020|0037", "0028|0010", "0028|0011", "0020|0032")


def _check_slices(reader, n: int, where: str) -> None:
    """Refuse a series that does not stack into one regular volume (a localizer mixed in,
    missing slices, duplicates): ITK would stack it anyway with an averaged slice spacing.
    Series whose headers lack the geometry tags are left to ITK."""
    from .dicom_source import SliceHeader, check_slices

    slices = []
    for i in range(n):
        if not all(reader.HasMetaDataKey(i, tag) for tag in _SLICE_TAGS):
            return

        def values(tag):
            return [float(v) for v in reader.GetMetaData(i, tag).strip().split("\\") if v.strip()]

        label = reader.GetMetaData(i, "0020|0013").strip() \
            if reader.HasMetaDataKey(i, "0020|0013") else str(i + 1)
        image_type = reader.GetMetaData(i, "0008|0008").strip() \
            if reader.HasMetaDataKey(i, "0008|0008") else "?"
        orientation, position = values("0020|0037"), values("0020|0032")
        if len(orientation) != 6 or len(position) != 3:
            return
        slices.append(SliceHeader(label=label or str(i + 1), image_type=image_type,
                                  orientation=tuple(orientation),
                                  rows=int(values("0028|0010")[0]),
                                  columns=int(values("0028|0011")[0]), position=tuple(position)))
    check_slices(slices, where)


# --------------------------------------------------------------------------- files
def _format_name(path: Path) -> str:
    lower = path.name.lower()
    for ext, name in ((".nii.gz", "nifti"), (".nii", "nifti"), (".nrrd", "nrrd"),
                      (".nhdr", "nrrd"), (".mha", "metaimage"), (".mhd", "metaimage")):
        if lower.endswith(ext):
            return name
    return path.suffix.lstrip(".").lower() or "unknown"


def _read_file(path: Path):
    sitk = _sitk()
    if path.stat().st_size == 0:
        raise errors.EmptyFileError("the file is empty (0 bytes)", str(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise errors.UnreadableFileError(
            "not a readable image file (%s)" % _last_line(exc), str(path))
    lower = path.name.lower()
    nifti_problem: List[Optional[str]] = []
    checker = None
    if lower.endswith(".nii") or lower.endswith(".nii.gz"):
        checker = threading.Thread(target=lambda: nifti_problem.append(_check_nifti_payload(path)))
        checker.start()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise errors.TruncatedFileError(
            "the header reads but the voxel data does not (%s)" % _last_line(exc), str(path))
    finally:
        if checker is not None:
            checker.join()
    if nifti_problem and nifti_problem[0]:
        raise errors.TruncatedFileError("truncated NIfTI: " + nifti_problem[0], str(path))
    return image, {"format": _format_name(path)}


class _ITKPixels:
    """Exports a SimpleITK image's own pixel buffer to numpy, read-only, and keeps the image.

    ``sitk.GetArrayViewFromImage`` gives a view that does *not* keep its image alive (its
    docstring, SimpleITK 2.x: the image must be "kept around while the buffer is being used").
    An array made with ``np.asarray`` of this object has it as its ``base``, so the image lives
    as long as the array or any view of it. Read-only because the array is the CT that was
    read: no stage may write into its input.
    """

    def __init__(self, image, view: np.ndarray) -> None:
        self._image = image
        interface = dict(view.__array_interface__)
        interface["data"] = (interface["data"][0], True)
        self.__array_interface__ = interface


def _image_to_volume(image, meta: dict, name: str, source: str) -> CTVolume:
    """SimpleITK image -> CTVolume (int16 when the values fit, else float32), RAS geometry.

    The voxels are read-only. When ITK's pixel type is already the volume's (int16 or float32,
    as CTs are stored) the array *is* ITK's buffer, so a read holds the voxels once instead of
    twice; otherwise they are converted once, straight from ITK's buffer.
    """
    sitk = _sitk()
    dim = image.GetDimension()
    ncomp = image.GetNumberOfComponentsPerPixel()
    size = tuple(int(v) for v in image.GetSize())
    if dim != 3 or ncomp != 1:
        what = ("a %dD image" % dim) if dim != 3 else ("a %d-component (vector/colour) image"
                                                       % ncomp)
        raise errors.NotAVolumeError(
            "%s of size %s: only single-channel 3D CT volumes can be analysed" % (what, size),
            source, dimension=dim if ncomp == 1 else dim + 1)
    pixel = image.GetPixelIDTypeAsString()
    meta = dict(meta, pixel_type=pixel)
    pid = image.GetPixelID()
    integer_ids = (sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16,
                   sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64)
    dtype = np.float32
    if pid == sitk.sitkInt16:
        dtype = np.int16
    elif pid in integer_ids:
        mm = sitk.MinimumMaximumImageFilter()
        mm.Execute(image)
        if mm.GetMinimum() >= -32768 and mm.GetMaximum() <= 32767:
            dtype = np.int16
    ijk_to_ras = ijk_to_ras_from_itk(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    view = sitk.GetArrayViewFromImage(image)
    if view.dtype == dtype and view.flags.c_contiguous:
        array = np.asarray(_ITKPixels(image, view))
    else:
        array = np.empty(size[::-1], dtype=dtype)
        np.copyto(array, view, casting="unsafe")
        array.flags.writeable = False
    del view
    return CTVolume(array=array, ijk_to_ras=ijk_to_ras, name=name, source_path=source,
                    metadata=meta)


def read_ct(path, validate: bool = True) -> CTVolume:
    """Read a CT from a volume file (.nrrd/.nhdr/.nii/.nii.gz/.mha/.mhd) or a DICOM series folder.

    A folder may hold the series directly or below it (e.g. a patient/study/series tree); the
    series with the most slices is read and the others are listed in ``metadata``. Raises a
    specific :class:`errors.InputError` subclass for every way the input can be unusable; with
    ``validate`` (default) the checks of :func:`validate_ct` run too.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise errors.InputNotFoundError("no such file or folder", str(p))
    if p.is_dir():
        image, meta = _read_dicom_folder(p)
    else:
        image, meta = _read_file(p)
    volume = _image_to_volume(image, meta, case_name(p), str(p))
    del image
    if validate:
        validate_ct(volume)
    return volume


def volume_to_image(volume: CTVolume, array: Optional[np.ndarray] = None):
    """A SimpleITK image of ``array`` (default: the volume's voxels) with the volume's geometry."""
    sitk = _sitk()
    a = volume.array if array is None else array
    image = sitk.GetImageFromArray(np.ascontiguousarray(a))
    spacing, origin, direction = itk_geometry_from_ijk_to_ras(volume.ijk_to_ras)
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def write_ct(volume: CTVolume, path, array: Optional[np.ndarray] = None,
             compress: bool = True) -> Path:
    """Write ``array`` (default: the voxels) with the volume's geometry, atomically.

    The file appears complete or not at all: ITK writes a temporary sibling with the same
    extension (ITK picks the format from it) which is then renamed into place.
    """
    sitk = _sitk()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(p.suffixes[-2:]) if p.name.lower().endswith(".nii.gz") else p.suffix
    fd, tmp = tempfile.mkstemp(prefix="." + p.name + ".", suffix=suffix, dir=str(p.parent))
    os.close(fd)
    try:
        sitk.WriteImage(volume_to_image(volume, array), tmp, useCompression=compress)
        os.replace(tmp, str(p))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


# --------------------------------------------------------------------------- validation
def slice_axis(ijk_to_ras: np.ndarray, shape=(1, 1, 1)) -> int:
    """The numpy axis of a (k, j, i) array whose direction is closest to superior (S)."""
    return axial_view(ijk_to_ras, shape).perm[0]


def _sample(array: np.ndarray, target: int = 2_000_000) -> np.ndarray:
    """A strided subsample (a view-derived small copy) for cheap intensity statistics."""
    step = max(1, int(round((array.size / float(target)) ** (1.0 / 3.0))))
    return np.asarray(array[::step, ::step, ::step])


def validate_ct(volume: CTVolume) -> dict:
    """Raise the specific InputError if ``volume`` cannot be analysed; else return a summary.

    The intensity test asks for what every chest CT in HU has: some voxels below -500 HU (air
    outside the body and in the lungs) and some above (tissue), within physically possible HU.
    MR, unscaled CT (raw stored values), label maps and blank images all fail it.
    """
    a = volume.array
    src = volume.source_path
    if not isinstance(a, np.ndarray):
        raise errors.InputError("the voxels are not a numpy array", src)
    if a.ndim != 3:
        raise errors.NotAVolumeError(
            "a %dD array of shape %s: only 3D CT volumes can be analysed" % (a.ndim, a.shape),
            src, dimension=a.ndim)
    if a.dtype.kind not in "iuf":
        raise errors.NotCTIntensityError("voxel type %s is not a CT intensity" % a.dtype, src)
    m = np.asarray(volume.ijk_to_ras, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise errors.InvalidGeometryError("the voxel-to-RAS matrix is singular or not finite", src)
    if min(a.shape) <= 1:
        raise errors.NotAVolumeError(
            "a single slice (shape %s) is a 2D image: a 3D CT volume is needed" % (a.shape,), src,
            dimension=2)
    ax = slice_axis(m, a.shape)
    spacing_np = volume.spacing[::-1]  # per numpy axis (k, j, i)
    n_slices = a.shape[ax]
    inplane = [d for d in range(3) if d != ax]
    fov = [a.shape[d] * spacing_np[d] for d in inplane]
    if n_slices < MIN_SLICES:
        raise errors.VolumeTooSmallError(
            "%d axial slices; at least %d are needed" % (n_slices, MIN_SLICES), src)
    if min(a.shape[d] for d in inplane) < MIN_INPLANE_VOXELS or min(fov) < MIN_INPLANE_MM:
        raise errors.VolumeTooSmallError(
            "the axial plane is %dx%d voxels (%.0fx%.0f mm); at least %d voxels and %.0f mm "
            "across are needed" % (a.shape[inplane[0]], a.shape[inplane[1]], fov[0], fov[1],
                                   MIN_INPLANE_VOXELS, MIN_INPLANE_MM), src)
    if a.dtype.kind == "f":
        for start in range(0, a.shape[0], 16):  # chunked: no full-volume boolean temporary
            block = a[start:start + 16]
            if not np.isfinite(block).all():
                bad = int(np.count_nonzero(~np.isfinite(block)))
                raise errors.NonFiniteValuesError(
                    "NaN or infinite voxels (at least %d, from slice %d on)" % (bad, start), src)
    s = _sample(a)
    lo, hi = float(s.min()), float(s.max())
    air = float(np.mean(s < AIR_THRESHOLD_HU))
    tissue = float(np.mean(s >= AIR_THRESHOLD_HU))
    if (air < MIN_AIR_FRACTION or tissue < MIN_TISSUE_FRACTION or lo < MIN_PLAUSIBLE_HU
            or hi > MAX_PLAUSIBLE_HU):
        raise errors.NotCTIntensityError(
            "intensities %.0f..%.0f with %.1f%% below %d do not look like CT in Hounsfield units "
            "(MR, unscaled scanner values or a label map?)" % (lo, hi, 100 * air,
                                                               AIR_THRESHOLD_HU), src)
    return {"slice_axis": ax, "n_slices": int(n_slices), "min": lo, "max": hi,
            "air_fraction": air}
