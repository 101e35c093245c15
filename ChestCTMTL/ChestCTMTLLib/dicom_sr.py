"""A Comprehensive 3D SR holding a TID 1500 Measurement Report of the findings (highdicom).

One TID 1411 volumetric measurement group per finding: tracking identifier (the finding id)
and a tracking UID derived from the source series, the model and the finding id (so the report
of a review tracks the same finding as the analysis it reviews), the finding type (its lesion
code from the terminology file), finding site lung + laterality, the region as a reference to
the finding's lesion-type segment in the SEG, the algorithm (TID 4019: model id, version,
SHA-256 as parameter), and the measurements: volume, long/short axis, mean diameter, model
score. Composition, size band and the reviewer's decision are coded qualitative evaluations; the
reviewer's note is a TEXT item (highdicom's template takes codes only, so it is appended).

Concepts without a standard code use the private coding scheme ``99CHESTCTMTL`` (DICOM PS3.16
8.2 allows "99"-prefixed local schemes); their meanings are the words of report.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .dicom_seg import MANUFACTURER, Code3, coded
from .dicom_source import SourceSeries
from .results import ModelIdentity

SR_SERIES_NUMBER = 9102
SR_SERIES_DESCRIPTION = "ChestCTMTL findings (TID 1500)"
PRIVATE_SCHEME = "99CHESTCTMTL"

SCORE = (PRIVATE_SCHEME, "SCORE", "Model finding score")
COMPOSITION = (PRIVATE_SCHEME, "COMPOSITION", "Nodule composition")
COMPOSITIONS = {name: (PRIVATE_SCHEME, name.upper(), name)
                for name in ("solid", "part-solid", "ground-glass")}
SIZE_BAND = (PRIVATE_SCHEME, "LUNGRADS-SIZE", "Lung-RADS v2022 baseline size band")
REVIEW = (PRIVATE_SCHEME, "REVIEW", "Review decision")
REVIEW_DECISIONS = {name: (PRIVATE_SCHEME, name.upper(), name)
                    for name in ("accepted", "rejected", "uncertain")}
REVIEW_NOTE = ("DCM", "121106", "Comment")
#: report.json row key -> (concept, UCUM unit, derivation)
MEASUREMENTS = (
    ("volume_mm3", ("SCT", "118565006", "Volume"), ("UCUM", "mm3", "cubic millimeter"), None),
    ("long_axis_mm", ("SCT", "103339001", "Long axis"), ("UCUM", "mm", "millimeter"), None),
    ("short_axis_mm", ("SCT", "103340004", "Short axis"), ("UCUM", "mm", "millimeter"), None),
    ("mean_diameter_mm", ("SCT", "81827009", "Diameter"), ("UCUM", "mm", "millimeter"),
     ("SCT", "373098007", "Mean")),
    ("score", SCORE, ("UCUM", "1", "no units"), None),
)
LUNG = ("SCT", "39607008", "Lung")
FINDING = ("DCM", "121071", "Finding")
NO_FINDING = ("SCT", "260413007", "None")
PROCEDURE = ("LN", "24627-2", "CT Chest")
LATERALITY = {"right": ("SCT", "24028007", "Right"), "left": ("SCT", "7771000", "Left")}


@dataclass
class FindingRecord:
    """What the SR says about one finding (a report.json row, or a review report entry)."""

    id: str
    type: str
    values: Dict[str, Optional[float]]  # MEASUREMENTS keys
    lung: str = ""
    composition: str = ""
    size_category: str = ""
    status: str = ""  # review: accepted / rejected / uncertain ("" or "unreviewed": none)
    note: str = ""

    @classmethod
    def from_row(cls, row: dict, volume_key: str = "volume_mm3") -> "FindingRecord":
        """From a report.json finding row or a review-report entry (``volume_key`` names the
        volume to report, e.g. ``volume_mm3_segmentation`` after edits)."""
        values = {}
        for key, _, _, _ in MEASUREMENTS:
            value = row.get(volume_key if key == "volume_mm3" else key)
            values[key] = None if value in (None, "") else float(value)
        category = row.get("size_category") or ""
        if isinstance(category, dict):
            category = category.get("category") or ""
        return cls(id=str(row["id"]), type=str(row["type"]), values=values,
                   lung=row.get("lung") or "", composition=row.get("composition") or "",
                   size_category=str(category), status=row.get("status") or "",
                   note=row.get("note") or "")


def tracking_uid(source: SourceSeries, model: ModelIdentity, finding_id: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[source.series_uid, model.sha256, finding_id]))


def segment_reference(seg, number: int):
    """The SR's reference to segment ``number`` of ``seg`` with the source images of its frames.

    Built here rather than by highdicom's ``ReferencedSegment.from_segmentation``, which looks
    for the segment number in each frame only; a SEG with a single segment holds it in the
    shared functional groups.
    """
    import highdicom as hd

    shared = seg.SharedFunctionalGroupsSequence[0].get("SegmentIdentificationSequence")
    seen, images = set(), []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        identification = frame.get("SegmentIdentificationSequence") or shared
        if int(identification[0].ReferencedSegmentNumber) != number:
            continue
        for derivation in frame.DerivationImageSequence:
            for item in derivation.SourceImageSequence:
                uid = str(item.ReferencedSOPInstanceUID)
                if uid not in seen:
                    seen.add(uid)
                    images.append(hd.sr.SourceImageForSegmentation(
                        str(item.ReferencedSOPClassUID), uid))
    return hd.sr.ReferencedSegment(sop_class_uid=str(seg.SOPClassUID),
                                   sop_instance_uid=str(seg.SOPInstanceUID),
                                   segment_number=number, source_images=images)


def _group(source: SourceSeries, seg, segment_numbers: Dict[str, int], finding: FindingRecord,
           type_codes: Dict[str, Code3], model: ModelIdentity, algorithm):
    import highdicom as hd

    reference = None
    if seg is not None and finding.type in segment_numbers:
        reference = segment_reference(seg, segment_numbers[finding.type])
    sites = [hd.sr.FindingSite(anatomic_location=coded(LUNG),
                               laterality=coded(LATERALITY[finding.lung])
                               if finding.lung in LATERALITY else None)]
    measurements = []
    for key, concept, unit, derivation in MEASUREMENTS:
        value = finding.values.get(key)
        if value is None:
            continue
        measurements.append(hd.sr.Measurement(
            name=coded(concept), value=value, unit=coded(unit),
            derivation=coded(derivation) if derivation else None))
    evaluations = []
    if finding.composition in COMPOSITIONS:
        evaluations.append(hd.sr.QualitativeEvaluation(coded(COMPOSITION),
                                                       coded(COMPOSITIONS[finding.composition])))
    if finding.size_category:
        band = (PRIVATE_SCHEME, "LUNGRADS-" + finding.size_category, finding.size_category)
        evaluations.append(hd.sr.QualitativeEvaluation(coded(SIZE_BAND), coded(band)))
    if finding.status in REVIEW_DECISIONS:
        evaluations.append(hd.sr.QualitativeEvaluation(coded(REVIEW),
                                                       coded(REVIEW_DECISIONS[finding.status])))
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(source, model, finding.id), identifier=finding.id),
        referenced_segment=reference,
        finding_type=coded(type_codes.get(finding.type, (PRIVATE_SCHEME, finding.type.upper(),
                                                        finding.type))),
        algorithm_id=algorithm, finding_sites=sites, measurements=measurements or None,
        qualitative_evaluations=evaluations or None)
    if finding.status in REVIEW_DECISIONS and finding.note:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=coded(REVIEW_NOTE), value=finding.note[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def _no_findings_group(source: SourceSeries, model: ModelIdentity, algorithm):
    """A TID 1501 group stating "Finding: None" for the whole study, so a scan without
    findings still has its TID 1500 report (highdicom, like the template, needs one group)."""
    import highdicom as hd

    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=str(tracking_uid(source, model, "no-findings")), identifier="no findings"),
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=coded(FINDING), value=coded(NO_FINDING))])


def build_report(source: SourceSeries, findings: Sequence[FindingRecord],
                 type_codes: Dict[str, Code3], model: ModelIdentity, seg=None,
                 segment_numbers: Optional[Dict[str, int]] = None,
                 reviewer: Optional[str] = None, series_uid: Optional[str] = None,
                 sop_uid: Optional[str] = None):
    """The Comprehensive 3D SR (TID 1500) of ``findings``; ``seg`` is the SEG it references.

    ``reviewer`` (a person's name, DICOM PN ``Family^Given``): the decisions are theirs, so
    they are the person observer and the document is marked complete; without it the device
    (the model) is the only observer and the document is a preliminary, unverified draft.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(
        name=model.id, version=model.version, parameters=["sha256=" + model.sha256],
        family=codes.cid7162.ArtificialIntelligence, manufacturer=MANUFACTURER)
    groups = [_group(source, seg, segment_numbers or {}, f, type_codes, model, algorithm)
              for f in findings]
    if not groups:  # a normal scan: the report says so (TID 1500 needs one group)
        groups = [_no_findings_group(source, model, algorithm)]
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(tracking_uid(source, model, "device")), name=model.id,
            manufacturer_name=MANUFACTURER, model_name=model.version))
    person = None
    if reviewer:
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=reviewer))
    context = hd.sr.ObservationContext(observer_person_context=person,
                                       observer_device_context=device)
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=coded(PROCEDURE),
        imaging_measurements=groups or None)
    evidence: List = list(source.datasets) + ([seg] if seg is not None else [])
    return hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0],
        series_instance_uid=series_uid or hd.UID(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid or hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=bool(reviewer), is_final=False,
        series_description=SR_SERIES_DESCRIPTION)
