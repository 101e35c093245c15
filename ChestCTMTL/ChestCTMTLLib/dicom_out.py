"""Write a case's DICOM objects: ``lesions.seg.dcm`` (SEG) and ``findings.sr.dcm`` (TID 1500 SR).

The one entry point for the command line and the Slicer module. Both objects are written to
hidden temporary names in the target folder and renamed into place only when both exist, so a
failure leaves neither (and never a SEG without its SR). They share the source study (patient
and study attributes copied by highdicom from the source instances) and get new series and SOP
instance UIDs.

highdicom, pynetdicom and the JPEG decoders are not part of a fresh Slicer: they are imported
only here (inside functions), and :func:`missing_dependencies` says what to install, so the
module can offer the installation the way it does for torch.
"""
from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import errors
from .dicom_seg import Code3, SegmentSpec, build_segmentation
from .dicom_source import SourceSeries
from .dicom_sr import FindingRecord, build_report
from .results import ModelIdentity

SEG_FILE = "lesions.seg.dcm"
SR_FILE = "findings.sr.dcm"

#: import name -> pinned pip requirement (requirements.txt): what DICOM output and compressed
#: DICOM input need beyond a fresh Slicer (which bundles pydicom).
DEPENDENCIES = {
    "highdicom": "highdicom==0.28.2",
    "pynetdicom": "pynetdicom==3.0.4",
    "pylibjpeg": "pylibjpeg==2.1.0",
    "libjpeg": "pylibjpeg-libjpeg==2.5.0",
}


class DicomWriteError(errors.ChestCTMTLError):
    """The DICOM objects could not be built or written; none were kept."""

    cause = "dicom-write"


def missing_dependencies() -> List[str]:
    """Pinned pip requirements of the DICOM packages that do not import here (empty: ready)."""
    missing = []
    for module, requirement in DEPENDENCIES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(requirement)
    return missing


def require_dependencies() -> None:
    missing = missing_dependencies()
    if missing:
        raise DicomWriteError("DICOM output needs packages that are not installed: {} "
                              "(pip install {})".format(", ".join(missing), " ".join(missing)))


@dataclass
class DicomObjects:
    """What :func:`write_dicom_objects` wrote."""

    seg_path: Optional[Path]
    sr_path: Path
    segment_numbers: Dict[str, int] = field(default_factory=dict)
    series_uids: Dict[str, str] = field(default_factory=dict)  # "seg" / "sr" -> UID

    @property
    def paths(self) -> List[Path]:
        return [p for p in (self.seg_path, self.sr_path) if p is not None]


def _temporary(folder: Path, name: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix="." + name + ".", suffix=".partial", dir=str(folder))
    os.close(fd)
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_dicom_objects(folder, source: SourceSeries, segments: Sequence[SegmentSpec],
                        findings: Sequence[FindingRecord], type_codes: Dict[str, Code3],
                        model: ModelIdentity, reviewer: Optional[str] = None,
                        software_version: str = "") -> DicomObjects:
    """Build the SEG (when a segment holds voxels) and the SR and write them into ``folder``.

    ``type_codes`` maps a finding type to its (scheme, value, meaning) code. Existing files of
    the same names are replaced only once both new ones are complete; if placing them fails
    half-way, the ones already placed are removed again (a SEG never stays without its SR).
    """
    require_dependencies()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        seg, numbered = None, []
        if any(spec.mask.any() for spec in segments):
            seg, numbered = build_segmentation(source, segments, model, software_version)
        numbers = {label: number for number, label in numbered}
        sr = build_report(source, findings, type_codes, model, seg=seg, segment_numbers=numbers,
                          reviewer=reviewer)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomWriteError("the DICOM objects could not be built: {}: {}".format(
            type(exc).__name__, exc), str(folder)) from exc
    written: List[str] = []
    placed: List[Path] = []
    try:
        targets = ([(seg, SEG_FILE)] if seg is not None else []) + [(sr, SR_FILE)]
        pending = []
        for dataset, name in targets:
            tmp = _temporary(folder, name)
            written.append(tmp)
            dataset.save_as(tmp, enforce_file_format=True)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide them from a PACS user
            pending.append((tmp, folder / name))
        for tmp, target in pending:
            os.replace(tmp, str(target))
            placed.append(target)
        if seg is None and (folder / SEG_FILE).exists():
            os.unlink(str(folder / SEG_FILE))  # a SEG of an earlier write no longer applies
    except BaseException:
        # a SEG without its SR (or the reverse) must not stay: remove what this call put there
        for path in written + [str(p) for p in placed]:
            if os.path.isfile(path):
                os.unlink(path)
        raise
    uids = {"sr": str(sr.SeriesInstanceUID)}
    if seg is not None:
        uids["seg"] = str(seg.SeriesInstanceUID)
    return DicomObjects(seg_path=folder / SEG_FILE if seg is not None else None,
                        sr_path=folder / SR_FILE, segment_numbers=numbers, series_uids=uids)
