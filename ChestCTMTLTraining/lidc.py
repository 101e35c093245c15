"""LIDC-IDRI: a DICOM series + its reader XML -> HU volume, consensus nodule mask, nodule list.

Follows the LIDC conventions (and pylidc's reading of them): every reader's nodule is a stack
of per-slice polygons (``edgeMap`` pixel coordinates, boundary included) flagged
``inclusion`` TRUE (add) or FALSE (a hole to cut out); a nodule < 3 mm is a single point
without a contour and is kept as a centroid only. Readers are not matched by their private
nodule ids; instead each reader's union mask is rasterised and the consensus is every voxel
outlined by at least ``min_readers`` readers, whose 3D connected components are the nodules.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np


@dataclass
class ReaderNodule:
    reader: int
    nodule_id: str
    malignancy: Optional[int]
    # (sop_uid, z, inclusion, xs, ys) per contour
    rois: List[tuple] = field(default_factory=list)

    @property
    def is_small(self) -> bool:
        """< 3 mm: LIDC gives one point per slice and no characteristics."""
        return all(len(r[3]) <= 1 for r in self.rois)


@dataclass
class LidcNodule:
    """A consensus nodule (>= min_readers) or a small nodule's centroid."""

    label: int
    centroid_kji: Tuple[float, float, float]
    bbox_kji: Tuple[int, int, int, int, int, int]  # k0, k1, j0, j1, i0, i1 (half-open)
    voxels: int
    volume_mm3: float
    diameter_mm: float  # largest in-plane extent x spacing (LIDC's usual "size")
    equivalent_diameter_mm: float
    readers: int
    malignancy: Optional[float]
    small: bool = False


@dataclass
class LidcCase:
    hu: np.ndarray  # (K, H, W) int16, K sorted inferior -> superior (ITK order)
    spacing: Tuple[float, float, float]  # (i, j, k) mm
    reader_count: np.ndarray  # (K, H, W) uint8
    consensus: np.ndarray  # (K, H, W) uint8 label image of consensus nodules
    nodules: List[LidcNodule]
    small_nodules: List[LidcNodule]
    ijk_to_ras: np.ndarray
    xml_path: Path
    series_dir: Path


def _ns(tag: str) -> str:
    return tag.split("}", 1)[-1]


def _children(el, name):
    return [c for c in el if _ns(c.tag) == name]


def _text(el, name, default=None):
    for c in el:
        if _ns(c.tag) == name:
            return (c.text or "").strip()
    return default


def parse_lidc_xml(path) -> List[ReaderNodule]:
    """All reader nodules (with contours and malignancy) of one LIDC XML file."""
    try:
        root = ET.parse(str(path)).getroot()
    except ET.ParseError as e:
        raise ValueError("LIDC XML %s cannot be parsed: %s" % (path, e)) from None
    out: List[ReaderNodule] = []
    sessions = [el for el in root.iter() if _ns(el.tag) == "readingSession"]
    if not sessions:
        raise ValueError("LIDC XML %s has no readingSession" % path)
    for reader, session in enumerate(sessions):
        for nod in _children(session, "unblindedReadNodule"):
            chars = _children(nod, "characteristics")
            mal = None
            if chars:
                m = _text(chars[0], "malignancy")
                mal = int(m) if m and m.isdigit() else None
            rn = ReaderNodule(reader, _text(nod, "noduleID", ""), mal)
            for roi in _children(nod, "roi"):
                z = float(_text(roi, "imageZposition", "nan"))
                uid = _text(roi, "imageSOP_UID", "")
                inc = _text(roi, "inclusion", "TRUE").upper() == "TRUE"
                xs, ys = [], []
                for em in _children(roi, "edgeMap"):
                    xs.append(int(float(_text(em, "xCoord"))))
                    ys.append(int(float(_text(em, "yCoord"))))
                rn.rois.append((uid, z, inc, np.array(xs), np.array(ys)))
            out.append(rn)
    return out


def _series_slices(series_dir: Path):
    """(files sorted by z ascending, z list, sop uid list) using pydicom headers only."""
    import pydicom

    rows = []
    for p in sorted(series_dir.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception as e:  # pydicom raises many types for damaged files
            raise ValueError("DICOM file %s cannot be read: %s" % (p, e)) from None
        rows.append((float(ds.ImagePositionPatient[2]), str(ds.SOPInstanceUID), p))
    if not rows:
        raise ValueError("no DICOM files in %s" % series_dir)
    rows.sort(key=lambda r: r[0])
    return [r[2] for r in rows], np.array([r[0] for r in rows]), [r[1] for r in rows]


def read_lidc_case(series_dir, xml_path=None, min_readers: int = 2) -> LidcCase:
    """Read the series with SimpleITK and rasterise the XML contours onto its grid."""
    import SimpleITK as sitk
    from scipy import ndimage
    from skimage.draw import polygon

    from ChestCTMTLLib.volume import ijk_to_ras_from_itk

    series_dir = Path(series_dir)
    if xml_path is None:
        xmls = sorted(series_dir.glob("*.xml"))
        if not xmls:
            raise ValueError("no LIDC XML file in %s" % series_dir)
        xml_path = xmls[0]
    files, zs, uids = _series_slices(series_dir)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    img = reader.Execute()
    hu = sitk.GetArrayFromImage(img).astype(np.int16)
    spacing = tuple(float(v) for v in img.GetSpacing())
    k_n, h, w = hu.shape
    uid_to_k = {u: k for k, u in enumerate(uids)}

    def k_of(uid, z):
        if uid in uid_to_k:
            return uid_to_k[uid]
        k = int(np.argmin(np.abs(zs - z)))
        return k if abs(zs[k] - z) < 0.5 * max(spacing[2], 1e-3) else None

    nodules = parse_lidc_xml(xml_path)
    n_readers = max([n.reader for n in nodules], default=-1) + 1
    per_reader = np.zeros((max(n_readers, 1), k_n, h, w), bool)
    small_points = []
    for rn in nodules:
        if rn.is_small:
            for uid, z, _inc, xs, ys in rn.rois:
                k = k_of(uid, z)
                if k is not None and len(xs):
                    small_points.append((rn.reader, k, int(ys[0]), int(xs[0]), rn.malignancy))
            continue
        # inclusion contours first, exclusions cut afterwards (per slice, per reader nodule)
        mask = np.zeros((k_n, h, w), bool)
        for uid, z, inc, xs, ys in sorted(rn.rois, key=lambda r: not r[2]):
            k = k_of(uid, z)
            if k is None or len(xs) == 0:
                continue
            rr, cc = polygon(ys, xs, shape=(h, w))
            sl = np.zeros((h, w), bool)
            sl[rr, cc] = True
            sl[np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)] = True  # boundary included
            if inc:
                mask[k] |= sl
            else:
                mask[k] &= ~sl
        per_reader[rn.reader] |= mask
    count = per_reader.sum(axis=0).astype(np.uint8)
    labels, n = ndimage.label(count >= min_readers, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = spacing[0] * spacing[1] * spacing[2]
    out = []
    for lab in range(1, n + 1):
        kk, jj, ii = np.nonzero(labels == lab)
        readers = int(per_reader[:, kk, jj, ii].any(axis=1).sum())
        mal = [rn.malignancy for rn in nodules if not rn.is_small and rn.malignancy is not None
               and _overlaps(rn, labels == lab, k_of, h, w)]
        extent = max((jj.max() - jj.min() + 1) * spacing[1], (ii.max() - ii.min() + 1) * spacing[0])
        vol = len(kk) * voxel_mm3
        out.append(LidcNodule(
            lab, (float(kk.mean()), float(jj.mean()), float(ii.mean())),
            (int(kk.min()), int(kk.max()) + 1, int(jj.min()), int(jj.max()) + 1, int(ii.min()), int(ii.max()) + 1),
            int(len(kk)), float(vol), float(extent), float((6 * vol / np.pi) ** (1 / 3)), readers,
            float(np.mean(mal)) if mal else None))
    small = [LidcNodule(-1, (float(k), float(j), float(i)), (k, k + 1, j, j + 1, i, i + 1), 1, voxel_mm3,
                        0.0, 0.0, 1, float(m) if m is not None else None, small=True)
             for _r, k, j, i, m in small_points]
    return LidcCase(hu, spacing, count, labels.astype(np.uint8), out, small,
                    ijk_to_ras_from_itk(img.GetSpacing(), img.GetOrigin(), img.GetDirection()),
                    Path(xml_path), series_dir)


def _overlaps(rn: ReaderNodule, region: np.ndarray, k_of, h: int, w: int) -> bool:
    for uid, z, inc, xs, ys in rn.rois:
        k = k_of(uid, z)
        if k is None or not inc or len(xs) == 0:
            continue
        yy = np.clip(ys, 0, h - 1)
        xx = np.clip(xs, 0, w - 1)
        if region[k, int(np.round(yy.mean())), int(np.round(xx.mean()))] or region[k, yy, xx].any():
            return True
    return False


def find_series_dirs(root) -> List[Path]:
    """Folders under ``root`` that hold .dcm files (one per series)."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob("*.dcm")})
