"""Helpers shared by the MRML adapter tests: small real CTs and results with known answers.

The node/file mapping is tested with hand-made results (a box of known voxels, findings at
known RAS positions) on real CT grids, because only a known answer shows that a voxel or a
millimetre ended up exactly where it belongs.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from ChestCTMTLLib.results import AnalysisResult, Finding, ModelIdentity
from ChestCTMTLLib.volume import CTVolume


def crop_ct_file(source: Path, target: Path, first: int, count: int, step: int = 1,
                 rows: Optional[int] = None) -> Path:
    """A few axial slices of a real CT (every ``step``-th in-plane voxel, optionally only the
    first ``rows`` rows so that i and j differ and a swapped axis shows), written with ITK."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(source))
    size = list(image.GetSize())
    cropped = image[::step, ::step, first:min(first + count, size[2])]
    if rows is not None:
        cropped = cropped[:, :rows, :]
    sitk.WriteImage(cropped, str(target), True)
    return target


def box_finding(volume: CTVolume, fid: str, kind: str, score: float, ijk_min, ijk_max) -> Finding:
    """A finding whose RAS centre/size are the exact RAS bounds of an IJK box."""
    lo = np.asarray(ijk_min, float) - 0.5
    hi = np.asarray(ijk_max, float) + 0.5
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])
    ras = volume.ijk_to_ras_points(corners)
    center = (ras.min(0) + ras.max(0)) / 2
    size = ras.max(0) - ras.min(0)
    n_vox = int(np.prod(np.asarray(ijk_max) - np.asarray(ijk_min) + 1))
    return Finding(id=fid, type=kind, score=score, center_ras=[float(v) for v in center],
                   size_ras=[float(v) for v in size], ijk_min=list(map(int, ijk_min)),
                   ijk_max=list(map(int, ijk_max)),
                   volume_mm3=float(n_vox * np.prod(volume.spacing)))


def synthetic_result(volume: CTVolume, findings: Optional[List[Finding]] = None,
                     probabilities=(0.2, 0.3, 0.5), model_id: str = "test-model") -> AnalysisResult:
    """Known answers on ``volume``'s grid: one box per lesion type, HU = input - 100 as the
    reconstruction, the given findings (default: one per box)."""
    k, j, i = volume.array.shape
    masks = {"covid-infection": np.zeros((k, j, i), np.uint8),
             "nodule-mass": np.zeros((k, j, i), np.uint8)}
    boxes = {"covid-infection": ((i // 4, j // 4, 0), (i // 4 + 9, j // 4 + 7, k - 1)),
             "nodule-mass": ((i // 2, j // 2, k // 2), (i // 2 + 4, j // 2 + 5, k // 2))}
    for kind, (lo, hi) in boxes.items():
        masks[kind][lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = 1
    if findings is None:
        findings = [box_finding(volume, "L{}".format(n + 1), kind, 0.9 - 0.2 * n, lo, hi)
                    for n, (kind, (lo, hi)) in enumerate(boxes.items())]
    recon = (np.clip(volume.array.astype(np.int32) - 100, -1024, 3071)).astype(np.int16)
    names = ("non-covid", "covid", "cancer")
    probs = dict(zip(names, (float(p) for p in probabilities)))
    return AnalysisResult(
        volume=volume, class_probabilities=probs,
        predicted_class=max(probs, key=probs.get), slice_probabilities=None,
        analysed_slices=np.arange(k), lesion_masks=masks, reconstruction_hu=recon,
        findings=list(findings), model=ModelIdentity(model_id, "0.0.1", "ab" * 32),
        timings_s={"read": 0.1, "inference": 1.25}, device="cpu")


def with_lungs(result: AnalysisResult) -> AnalysisResult:
    """``result`` plus known lung labels: a right lung box on the patient's right (larger, so
    a swapped side shows in the counts) and a left lung box; findings get a lung and zone."""
    from ChestCTMTLLib.lungs import LEFT, RIGHT

    volume = result.volume
    k, j, i = volume.array.shape
    labels = np.zeros((k, j, i), np.uint8)
    i_to_right = volume.ijk_to_ras[0, 0] > 0  # does i run towards the patient's right?
    near, far = (slice(i // 16, i // 2 - 4), slice(i // 2 + 8, i - i // 16))
    right, left = (far, near) if i_to_right else (near, far)
    labels[:, j // 5:j - j // 5, right] = RIGHT
    labels[1:, j // 4:j - j // 4, left] = LEFT
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    result.lung_labels = labels
    result.lungs = {"found": True, "split": "separate",
                    "right lung": {"volume_ml": float((labels == RIGHT).sum()) * voxel_ml},
                    "left lung": {"volume_ml": float((labels == LEFT).sum()) * voxel_ml}}
    for number, finding in enumerate(result.findings):
        finding.lung, finding.zone = ("right", "upper") if number % 2 == 0 else ("left", "lower")
        finding.diameter_mm = 4.0 + number
    return result


def with_measurements(result: AnalysisResult) -> AnalysisResult:
    """``result`` with known measurements on its nodule-mass findings (axes across the box's
    middle slice: long along i, short along j, end points at voxel centres) and a known lung
    involvement, as inference and involvement.lung_involvement produce them."""
    from ChestCTMTLLib.orientation import axial_view
    from ChestCTMTLLib.preview import ijk_to_canonical

    volume = result.volume
    view = axial_view(volume.ijk_to_ras, volume.array.shape)
    for finding in result.findings:
        if finding.type != "nodule-mass":
            continue
        lo, hi = np.asarray(finding.ijk_min, float), np.asarray(finding.ijk_max, float)
        mid = np.rint((lo + hi) / 2.0)
        ends = {"long": [[lo[0], mid[1], mid[2]], [hi[0], mid[1], mid[2]]],
                "short": [[mid[0], lo[1], mid[2]], [mid[0], hi[1], mid[2]]]}
        m = {}
        for which, ijk in ends.items():
            ras = volume.ijk_to_ras_points(np.asarray(ijk))
            m[which + "_axis_mm"] = round(float(np.linalg.norm(ras[1] - ras[0])), 1)
            m[which + "_axis_ras"] = [[round(float(v), 2) for v in p] for p in ras]
            m[which + "_axis_points"] = ijk_to_canonical(view, ijk).tolist()
        if m["long_axis_mm"] < m["short_axis_mm"]:  # the long axis is the longer one
            for key in ("_axis_mm", "_axis_ras", "_axis_points"):
                m["long" + key], m["short" + key] = m["short" + key], m["long" + key]
        m.update(mean_diameter_mm=round((m["long_axis_mm"] + m["short_axis_mm"]) / 2.0, 1),
                 feret_diameter_mm=m["long_axis_mm"] + 0.4, composition="part-solid",
                 solid_component_mm=2.5,
                 size_category={"category": "4B",
                                "label": "research aid \u2014 not a Lung-RADS assessment",
                                "rule": "test"})
        finding.measurements = m
    result.involvement = {
        "method": "test",
        "lungs": {"right lung": {"volume_ml": 2500.0, "lesion_ml": 70.0, "percent": 2.8,
                                 "ground_glass_ml": 50.0, "consolidation_ml": 20.0, "zones": {}},
                  "left lung": {"volume_ml": 2000.0, "lesion_ml": 150.0, "percent": 7.5,
                                "ground_glass_ml": 91.0, "consolidation_ml": 35.0, "zones": {}}},
        "both": {"volume_ml": 4500.0, "lesion_ml": 220.0, "percent": 4.89,
                 "ground_glass_ml": 141.0, "consolidation_ml": 55.0}}
    return result
