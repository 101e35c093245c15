"""DICOM SEG + TID 1500 SR of an analysis or of a saved review, and sending them to a PACS.

The MRML side of :mod:`ChestCTMTLLib.dicom_out`: it turns results (an AnalysisResult, or the
nodes a radiologist reviewed and edited) into segment masks, codes from the terminology file
(:mod:`.terminology`, so the SEG says what the ``.seg.nrrd`` says) and finding records, and
leaves building, writing and sending to the core. Used by ``chestctmtl analyze --dicom
[--send]`` and by the module's Save review / Send to PACS.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ChestCTMTLLib import dicom_out, dicom_send, dicom_source
from ChestCTMTLLib.dicom_seg import Code3, SegmentSpec
from ChestCTMTLLib.dicom_sr import FindingRecord
from ChestCTMTLLib.lungs import LUNG_NAMES
from ChestCTMTLLib.results import AnalysisResult, ModelIdentity

from . import terminology

SEG_FILE = dicom_out.SEG_FILE
SR_FILE = dicom_out.SR_FILE
missing_dependencies = dicom_out.missing_dependencies
DicomSourceError = dicom_source.DicomSourceError
SendError = dicom_send.SendError


def _code(text: str) -> Optional[Code3]:
    parts = text.split("^")
    return tuple(parts) if len(parts) == 3 and all(parts) else None  # type: ignore[return-value]


def _entry_codes(entry: str) -> Dict[str, Optional[Code3]]:
    """A serialised Slicer terminology entry -> its codes (see terminology.py for the layout:
    ``context~category~type~typeModifier~anatomicContext~region~regionModifier``)."""
    parts = entry.split("~")
    return {"category": _code(parts[1]), "type": _code(parts[2]), "type_modifier": _code(parts[3]),
            "anatomic_region": _code(parts[5]) if len(parts) > 5 else None}


def segment_spec(name: str, mask: np.ndarray) -> SegmentSpec:
    """The SEG segment of a lesion type or a lung ("right lung"/"left lung"), coded and
    coloured like its segment in the .seg.nrrd files."""
    term = terminology.lung_term(name) if name in LUNG_NAMES.values() \
        else terminology.lesion_term(name)
    if term.entry is None:
        raise dicom_out.DicomWriteError("segment {!r} has no code in {}: it cannot be written as "
                                        "DICOM".format(name, terminology.terminology_file().name))
    codes = _entry_codes(term.entry)
    return SegmentSpec(label=name, mask=mask, category=codes["category"], type=codes["type"],
                       type_modifier=codes["type_modifier"],
                       anatomic_region=codes["anatomic_region"], color=tuple(term.color))


def type_codes(types) -> Dict[str, Code3]:
    """Finding type -> its lesion code from the terminology file (those the file knows)."""
    out = {}
    for name in types:
        term = terminology.lesion_term(name)
        if term.entry is not None:
            out[name] = _entry_codes(term.entry)["type"]
    return out


def result_segments(result: AnalysisResult) -> List[SegmentSpec]:
    """Lesion types (in the result's order), then the right and left lung."""
    specs = [segment_spec(name, mask) for name, mask in result.lesion_masks.items()]
    if result.lung_labels is not None:
        for value, name in sorted(LUNG_NAMES.items()):
            specs.append(segment_spec(name, (result.lung_labels == value).astype(np.uint8)))
    return specs


def write_result_dicom(folder, volume, result: AnalysisResult,
                       source_files: Optional[Sequence[str]] = None) -> dicom_out.DicomObjects:
    """SEG + SR of an analysis (measurements as report.json states them) into ``folder``.

    ``volume``: the analysed CTVolume, read from a DICOM series (else DicomSourceError).
    """
    source = dicom_source.load_source_series(volume, source_files)
    rows = result.report_dict()["findings"]
    findings = [FindingRecord.from_row(row) for row in rows]
    return dicom_out.write_dicom_objects(folder, source, result_segments(result), findings,
                                         type_codes({f.type for f in findings}), result.model)


def _review_masks(results) -> List[SegmentSpec]:
    from . import nodes

    specs = []
    volume = results.input_volume
    for node in (results.segmentation, results.lungs):
        if node is None:
            continue
        segmentation = node.GetSegmentation()
        for n in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(n)
            name = segmentation.GetSegment(segment_id).GetName()
            specs.append(segment_spec(name, nodes.segment_mask_array(node, segment_id, volume)))
    return specs


def write_review_dicom(scene, volume_node, folder, source_files: Optional[Sequence[str]] = None,
                       reviewer: Optional[str] = None) -> dicom_out.DicomObjects:
    """SEG of the segmentation as edited + SR with each finding's review decision and note.

    ``source_files``: the volume's DICOM instances; inside Slicer those of the DICOM database
    (``slicer.dicomDatabase.fileForInstance`` of the node's ``DICOM.instanceUIDs``); default:
    the folder the volume node was read from. Volumes are those of the edited segmentation.
    """
    from . import nodes, review

    report = review.review_report(scene, volume_node)
    results = nodes.find_result_nodes(scene, volume_node)
    volume = nodes.ct_from_volume_node(volume_node)
    if source_files is None:
        source_files = dicom_source_files(volume_node)
    if source_files is None:
        source_files = _files_beside_stored_dicom(volume_node)
    source = dicom_source.load_source_series(volume, source_files)
    findings = []
    for entry in report["findings"]:
        key = "volume_mm3_segmentation" if entry.get("volume_mm3_segmentation") is not None \
            else "volume_mm3_detected"
        findings.append(FindingRecord.from_row(entry, volume_key=key))
    model = ModelIdentity(**{k: str(report["model"].get(k, "")) for k in ("id", "version",
                                                                          "sha256")})
    return dicom_out.write_dicom_objects(folder, source, _review_masks(results), findings,
                                         type_codes({f.type for f in findings}), model,
                                         reviewer=reviewer)


def _files_beside_stored_dicom(volume_node) -> List[str]:
    """The files of the folder a volume was read from as DICOM ("Add data" of a .dcm file or
    folder); DicomSourceError for a volume read from a volume file or not read at all."""
    storage = volume_node.GetStorageNode()
    name = storage.GetFileName() if storage is not None else None
    path = Path(name) if name else None
    if path is None or not (path.is_dir() or path.suffix.lower() in (".dcm", "")):
        raise DicomSourceError("DICOM objects need a DICOM source: this volume was not loaded "
                               "from DICOM", volume_node.GetName())
    folder = path if path.is_dir() else path.parent
    return [str(p) for p in sorted(folder.iterdir()) if p.is_file()]


def save_review_dicom(scene, volume_node, folder, reviewer: Optional[str] = None,
                      send_to: Optional[str] = None,
                      source_files: Optional[Sequence[str]] = None
                      ) -> Tuple[dicom_out.DicomObjects, Optional[str]]:
    """The module's "Save review" + "Send to PACS": write the SEG + SR of the review into
    ``folder``, index them into Slicer's DICOM database (inside Slicer), and C-STORE them to
    ``send_to`` (``HOST:PORT:AET``) when given. Returns (objects written, why the send failed
    or None); a failed send keeps the files. Raises DicomSourceError / DicomWriteError (then
    nothing is written)."""
    written = write_review_dicom(scene, volume_node, folder, source_files=source_files,
                                 reviewer=reviewer)
    import_into_dicom_database(folder)
    send_error = None
    if send_to:
        try:
            send(written.paths, send_to)
        except SendError as exc:
            send_error = str(exc)
    return written, send_error


def dicom_source_files(volume_node) -> Optional[List[str]]:
    """The files of the instances a volume was loaded from by Slicer's DICOM module, or None.

    DICOMScalarVolumePlugin stores the slice-ordered instance UIDs in the node attribute
    ``DICOM.instanceUIDs`` (Slicer/Slicer Modules/Scripted/DICOMPlugins/
    DICOMScalarVolumePlugin.py, v5.8.0); the DICOM database maps each to its file.
    """
    import slicer

    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return None
    found = [database.fileForInstance(uid) for uid in uids]
    return found if all(found) else None


def import_into_dicom_database(folder) -> bool:
    """Index the DICOM files of ``folder`` into Slicer's DICOM database (inside Slicer only),
    so the SEG and SR load back through the DICOM module; False where there is no database.
    Uses DICOMLib.DICOMUtils.importDicom (Slicer/Slicer Modules/Scripted/DICOMLib/
    DICOMUtils.py, v5.8.0 to v5.12)."""
    import slicer

    if getattr(slicer, "dicomDatabase", None) is None:
        return False
    from DICOMLib import DICOMUtils

    DICOMUtils.importDicom(str(folder), slicer.dicomDatabase, False)
    return True


def send(paths: Sequence, destination: str,
         calling_aet: str = dicom_send.DEFAULT_CALLING_AET) -> List[str]:
    """C-STORE ``paths`` to ``destination`` (``HOST:PORT:AET``); SendError says why not."""
    try:
        target = dicom_send.parse_destination(destination)
    except ValueError as exc:
        raise SendError(str(exc))
    return dicom_send.send_files([str(p) for p in paths], target, calling_aet)


def case_dicom_files(case_dir) -> Tuple[Path, ...]:
    """The DICOM objects present in a case folder (SEG first), for a later send."""
    return tuple(p for p in (Path(case_dir) / SEG_FILE, Path(case_dir) / SR_FILE) if p.is_file())
