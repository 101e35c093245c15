"""Evaluate the shipped pipeline on labelled whole CTs: verdicts, nodule FROC, lungs, infection.

``python -m ChestCTMTLTraining evaluate-volumes --model DIR --manifest volumes --output DIR``.

Every scan goes through :meth:`ChestCTMTLLib.inference.Analyzer.apply` exactly once - the
stages ``chestctmtl analyze`` and the Slicer module run, nothing re-implemented here - with
``score_threshold=0`` so its findings list holds every candidate the pipeline keeps; the
FROC sweeps thresholds over that list and the operating-point numbers use the model's own
threshold (``calibration.score_threshold``). The verdict does not depend on the listing
threshold, so the same run gives it.

Per scan: verdict vs label; nodule/mass detection against the reference lesions (hit rule and
summaries in :mod:`.metrics`, shared with ``evaluate``); findings whose centre voxel lies
outside the lung labels; for scans with per-slice infection labels, how often labelled and
unlabelled slices carry infection (mask or a covid-infection zone finding); lung volumes.
Everything is reported for role=calibration, role=validation and all scans.

The manifest (``configs/volumes.yaml`` or a YAML / CSV of one's own) lists scans with name,
image, class, role and optional ``lesion_mask`` / ``lidc_xml`` / ``lesion_free`` /
``slice_labels``; see that file.
"""
from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ChestCTMTLLib.paths import atomic_write_text, data_root
from ChestCTMTLLib.results import CLASS_NAMES

from .sources.base import json_default
from .metrics import confusion, detection_summary, scan_detection
from .volume_report import (INFECTION, ROLES, plot_confusion, plot_froc, plot_scan, ras_to_ijk,
                            write_report, write_scans_tsv)

log = logging.getLogger("ChestCTMTLTraining")

SAMPLE_PREFIX = "sample:"
DEFAULT_MIN_LESION_MM3 = 14.0  # a 3 mm sphere: LIDC's lower limit for outlined nodules


# --------------------------------------------------------------------------- the manifest
@dataclass(frozen=True)
class ScanSpec:
    """One manifest row, paths resolved."""

    name: str
    image: Path
    label: str  # one of CLASS_NAMES
    role: str = "validation"
    lesion_mask: Optional[Path] = None
    lidc_xml: bool = False
    lesion_free: bool = False
    slice_labels: Optional[Path] = None

    @property
    def nodule_reference(self) -> bool:
        """Whether the scan's nodules/masses are known (it counts in the nodule numbers)."""
        return self.lidc_xml or self.lesion_mask is not None or self.lesion_free


def resolve_path(value: str, base: Path) -> Path:
    """``sample:NAME`` -> the PyRadiomics sample file; absolute as is; else ``base / value``."""
    value = str(value)
    if value.startswith(SAMPLE_PREFIX):
        from ChestCTMTLLib.sample_data import sample_dir

        return sample_dir() / value[len(SAMPLE_PREFIX):]
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y")


def _spec(row: dict, base: Path, where: str) -> ScanSpec:
    for key in ("name", "image", "class"):
        if not str(row.get(key) or "").strip():
            raise ValueError("%s: a scan without %r: %r" % (where, key, row))
    unknown = set(row) - {"name", "image", "class", "role", "lesion_mask", "lidc_xml",
                          "lesion_free", "slice_labels"}
    if unknown:
        raise ValueError("%s: unknown key(s) %s in scan %r" % (where, sorted(unknown), row["name"]))
    label, role = str(row["class"]).strip(), str(row.get("role") or "validation").strip()
    if label not in CLASS_NAMES:
        raise ValueError("%s: scan %r has class %r (use one of %s)"
                         % (where, row["name"], label, ", ".join(CLASS_NAMES)))
    if role not in ROLES:
        raise ValueError("%s: scan %r has role %r (use %s)" % (where, row["name"], role,
                                                              " or ".join(ROLES)))
    opt = lambda k: resolve_path(row[k], base) if str(row.get(k) or "").strip() else None  # noqa: E731
    return ScanSpec(str(row["name"]).strip(), resolve_path(row["image"], base), label, role,
                    opt("lesion_mask"), _truthy(row.get("lidc_xml", False)),
                    _truthy(row.get("lesion_free", False)), opt("slice_labels"))


def load_manifest(manifest="volumes"):
    """(scans, min_lesion_mm3, manifest path) from a packaged name (``volumes``), a YAML file
    (paths relative to the data root, or to its ``data_root:`` key), a CSV file (columns
    name,image,class[,role,lesion_mask,lidc_xml,lesion_free,slice_labels]; paths relative to
    the CSV's folder) or a folder holding ``manifest.csv`` beside its CTs."""
    import yaml

    from .config import CONFIG_DIR

    p = Path(str(manifest)).expanduser()
    if not p.exists() and p.suffix == "" and (CONFIG_DIR / (str(manifest) + ".yaml")).is_file():
        p = CONFIG_DIR / (str(manifest) + ".yaml")
    if p.is_dir():
        p = p / "manifest.csv"
    if not p.is_file():
        raise FileNotFoundError("manifest %s not found (packaged: volumes; or a YAML/CSV file, or "
                                "a folder with manifest.csv)" % manifest)
    min_mm3 = DEFAULT_MIN_LESION_MM3
    if p.suffix.lower() == ".csv":
        with open(p, newline="") as fh:
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k}
                    for r in csv.DictReader(fh)]
        base = p.parent
    else:
        doc = yaml.safe_load(p.read_text()) or {}
        if not isinstance(doc, dict) or not isinstance(doc.get("scans"), list):
            raise ValueError("%s: a YAML manifest needs a list under 'scans'" % p)
        rows = doc["scans"]
        base = Path(doc["data_root"]).expanduser() if doc.get("data_root") else data_root()
        if not base.is_absolute():
            base = p.parent / base
        min_mm3 = float(doc.get("min_lesion_mm3", min_mm3))
    specs = [_spec(dict(r), base, str(p)) for r in rows]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError("%s: duplicate scan names %s" % (p, dup))
    if not specs:
        raise ValueError("%s lists no scans" % p)
    return specs, min_mm3, p


# --------------------------------------------------------------------------- references
def mask_lesions(path: Path, min_volume_mm3: float = DEFAULT_MIN_LESION_MM3) -> List[dict]:
    """Lesions of a label mask (> 0): 26-connected 3D components of at least ``min_volume_mm3``,
    each {"center_mm" (RAS centroid), "diameter_mm" (equivalent sphere), "volume_mm3"}."""
    from scipy import ndimage

    from ChestCTMTLLib.volume_io import read_ct

    mask = read_ct(path, validate=False)
    labels, n = ndimage.label(mask.array > 0, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = float(abs(np.linalg.det(mask.ijk_to_ras[:3, :3])))
    out = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        kk, jj, ii = np.nonzero(labels[sl] == lab)
        vol = len(kk) * voxel_mm3
        if vol < min_volume_mm3:
            continue
        ijk = [ii.mean() + sl[2].start, jj.mean() + sl[1].start, kk.mean() + sl[0].start]
        out.append({"center_mm": mask.ijk_to_ras_points(ijk)[0],
                    "diameter_mm": float((6.0 * vol / np.pi) ** (1.0 / 3.0)), "volume_mm3": vol})
    return out


def lidc_lesions(series_root: Path, min_diameter_mm: float = 3.0) -> List[dict]:
    """Consensus nodules (>= 2 readers) of the LIDC XML beside the DICOM series, >= 3 mm."""
    from .lidc import find_series_dirs, read_lidc_case

    series = find_series_dirs(series_root)
    if not series:
        raise FileNotFoundError("no DICOM series under %s" % series_root)
    case = read_lidc_case(series[0])
    out = []
    for nod in case.nodules:
        if nod.small or nod.equivalent_diameter_mm < min_diameter_mm:
            continue
        k, j, i = nod.centroid_kji
        centre = np.asarray(case.ijk_to_ras, float) @ np.array([i, j, k, 1.0])
        out.append({"center_mm": centre[:3], "diameter_mm": float(nod.equivalent_diameter_mm),
                    "volume_mm3": float(nod.volume_mm3)})
    return out


def reference_lesions(spec: ScanSpec, min_volume_mm3: float) -> Optional[List[dict]]:
    """The scan's nodule/mass reference (RAS), [] if lesion-free, None if not annotated."""
    if spec.lidc_xml:
        return lidc_lesions(spec.image)
    if spec.lesion_mask is not None:
        return mask_lesions(spec.lesion_mask, min_volume_mm3)
    return [] if spec.lesion_free else None


def read_slice_labels(path: Path) -> Dict[int, int]:
    """{k: infection 0/1} from a CSV with columns ``k`` and ``infection``."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "k" not in rows[0] or "infection" not in rows[0]:
        raise ValueError("%s: slice labels need columns k and infection" % path)
    return {int(r["k"]): int(float(r["infection"])) for r in rows}


# --------------------------------------------------------------------------- per scan
def outside_lung_ids(result, findings) -> Optional[List[str]]:
    """Ids of ``findings`` whose centre voxel is not in ``result.lung_labels`` (None: no lungs)."""
    labels = result.lung_labels
    if labels is None:
        return None
    if not findings:
        return []
    ijk = np.rint(ras_to_ijk(result.volume, [f.center_ras for f in findings])).astype(int)
    shape = labels.shape  # (k, j, i)
    out = []
    for f, (i, j, k) in zip(findings, ijk):
        inside = 0 <= k < shape[0] and 0 <= j < shape[1] and 0 <= i < shape[2]
        if not inside or labels[k, j, i] == 0:
            out.append(f.id)
    return out


def infection_slice_check(result, slice_labels: Dict[int, int], score_threshold: float) -> dict:
    """A coarse per-slice check: a slice "carries infection" when the covid-infection mask has
    a voxel on it or it lies within a covid-infection zone finding (at the operating point).
    ``k`` is the index along the volume array's first axis (the file's third axis)."""
    n_k = result.volume.array.shape[0]
    mask = result.lesion_masks.get(INFECTION)
    on_mask = (mask.reshape(n_k, -1).any(axis=1) if mask is not None else np.zeros(n_k, bool))
    in_zone = np.zeros(n_k, bool)
    for f in result.findings:
        if f.type == INFECTION and f.score >= score_threshold:
            in_zone[max(0, f.ijk_min[2]):min(n_k, f.ijk_max[2] + 1)] = True
    ks = np.array([k for k in sorted(slice_labels) if 0 <= k < n_k], int)
    y = np.array([slice_labels[k] for k in ks], int)
    if len(ks) != len(slice_labels):
        log.warning("%s: %d slice label(s) outside the volume's %d slices", result.volume.name,
                    len(slice_labels) - len(ks), n_k)
    carried = on_mask[ks] | in_zone[ks]

    def frac(sel, which):
        return float(which[sel].mean()) if sel.any() else float("nan")

    pos, neg = y == 1, y == 0
    return {"infection_slices": int(pos.sum()), "clean_slices": int(neg.sum()),
            "infection_slices_with_infection": frac(pos, carried),
            "clean_slices_with_infection": frac(neg, carried),
            "infection_slices_with_mask": frac(pos, on_mask[ks]),
            "clean_slices_with_mask": frac(neg, on_mask[ks]),
            "_counts": [int((carried & pos).sum()), int(pos.sum()), int((carried & neg).sum()),
                        int(neg.sum())]}


def lung_volumes_ml(result) -> Dict[str, Optional[float]]:
    lungs = result.lungs or {}
    return {side: (lungs.get("%s lung" % side) or {}).get("volume_ml") for side in ("right", "left")}


def evaluate_scan(analyzer, spec: ScanSpec, min_lesion_mm3: float = DEFAULT_MIN_LESION_MM3):
    """(record, result) of one scan: ``analyzer.apply`` once, then every per-scan number."""
    from ChestCTMTLLib.volume_io import read_ct

    op = float(analyzer.calibration.score_threshold)
    t0 = time.perf_counter()
    volume = read_ct(spec.image)
    result = analyzer.apply(volume)
    seconds = time.perf_counter() - t0
    at_op = [f for f in result.findings if f.score >= op]
    outside_all = outside_lung_ids(result, result.findings)
    outside_op = outside_lung_ids(result, at_op)
    rec = {"name": spec.name, "role": spec.role, "class": spec.label, "image": str(spec.image),
           "verdict": result.predicted_class,
           "probabilities": {k: float(v) for k, v in result.class_probabilities.items()},
           "evidence": (result.verdict or {}).get("evidence"),
           "findings": [f.row() for f in result.findings],
           "findings_at_op": len(at_op),
           "outside_lung": {"at_op": None if outside_op is None else len(outside_op),
                            "all": None if outside_all is None else len(outside_all),
                            "ids": outside_all},
           "lung_volumes_ml": lung_volumes_ml(result), "lungs_found": bool(
               (result.lungs or {}).get("found", False)),
           "seconds": round(seconds, 2)}
    lesions = reference_lesions(spec, min_lesion_mm3)
    if lesions is not None:
        rec["detection"] = scan_detection(result.findings, lesions, op)
    if spec.slice_labels is not None:
        rec["infection_slices"] = infection_slice_check(result, read_slice_labels(spec.slice_labels),
                                                        op)
    return rec, result


# --------------------------------------------------------------------------- summaries
def _mean(values) -> float:
    v = [float(x) for x in values if x is not None and x == x]
    return float(np.mean(v)) if v else float("nan")


def summarise(records: List[dict], score_threshold: float) -> dict:
    """One group's numbers (see the module docstring)."""
    out = {"scans": len(records), "names": [r["name"] for r in records],
           "verdict": confusion([r["class"] for r in records], [r["verdict"] for r in records],
                                CLASS_NAMES)}
    with_lesions = [r["detection"] for r in records if r.get("detection", {}).get("lesions")]
    if with_lesions:
        out["nodule_froc"] = detection_summary(with_lesions, score_threshold)
    free = [r["detection"] for r in records
            if "detection" in r and not r["detection"]["lesions"]]
    if free:
        out["lesion_free_scans"] = {
            "scans": len(free), "nodule_fp_per_scan_at_op": _mean(
                [d["operating_point"]["false_positives"] for d in free])}
    out["findings_per_scan_at_op"] = _mean([r["findings_at_op"] for r in records])
    out["outside_lung_per_scan"] = {
        "at_op": _mean([r["outside_lung"]["at_op"] for r in records]),
        "all": _mean([r["outside_lung"]["all"] for r in records]),
        "scans_without_lungs": sum(r["outside_lung"]["at_op"] is None for r in records)}
    labelled = [r for r in records if "infection_slices" in r]
    if labelled:
        c = np.sum([r["infection_slices"]["_counts"] for r in labelled], axis=0)
        out["infection_slices"] = {
            "scans": len(labelled), "infection_slices": int(c[1]), "clean_slices": int(c[3]),
            "infection_slices_with_infection": float(c[0] / c[1]) if c[1] else float("nan"),
            "clean_slices_with_infection": float(c[2] / c[3]) if c[3] else float("nan")}
    out["lung_volumes_ml"] = {r["name"]: r["lung_volumes_ml"] for r in records}
    return out


def headline(metrics: dict) -> dict:
    """The few numbers the command prints, per group."""
    h = {}
    for g, m in metrics["groups"].items():
        d = {"scans": m["scans"], "verdict_accuracy": m["verdict"]["accuracy"]}
        if "nodule_froc" in m:
            f = m["nodule_froc"]
            op = f["operating_point"]
            d.update({"lesions": f["lesions"], "cpm": f["cpm"],
                      "sensitivity_at_1fp": f["sensitivity"].get("1.0"),
                      "op_sensitivity": op["sensitivity"], "op_fp_per_scan": op["fp_per_scan"],
                      "op_ge10mm_found": "%d/%d" % (op["ge10mm_found"], op["lesions_ge10mm"]),
                      "op_ge10mm_ranked_first": "%d/%d" % (op["ge10mm_ranked_first"],
                                                           op["lesions_ge10mm"])})
        if "lesion_free_scans" in m:
            d["lesion_free_nodule_fp_per_scan"] = m["lesion_free_scans"]["nodule_fp_per_scan_at_op"]
        d["findings_per_scan_at_op"] = m["findings_per_scan_at_op"]
        d["outside_lung_per_scan_at_op"] = m["outside_lung_per_scan"]["at_op"]
        if "infection_slices" in m:
            d["infection_slices_with_infection"] = m["infection_slices"]["infection_slices_with_infection"]
            d["clean_slices_with_infection"] = m["infection_slices"]["clean_slices_with_infection"]
        h[g] = d
    return h


# --------------------------------------------------------------------------- the command
def _with_roles(specs: List[ScanSpec], roles: Optional[Sequence[str]]) -> List[ScanSpec]:
    if not roles:
        return list(specs)
    bad = sorted(set(roles) - set(ROLES))
    if bad:
        raise ValueError("unknown role(s) %s (use %s)" % (bad, ", ".join(ROLES)))
    return [s for s in specs if s.role in roles]


def available_scans(specs: Sequence[ScanSpec], manifest_path) -> tuple:
    """(scans whose files exist, ["name: missing ..." for the others]); none at all is an error."""
    skipped, ready = [], []
    for s in specs:
        missing = [p for p in (s.image, s.lesion_mask, s.slice_labels) if p is not None and not p.exists()]
        if missing:
            skipped.append("%s: missing %s" % (s.name, ", ".join(map(str, missing))))
            log.warning("skipping %s", skipped[-1])
        else:
            ready.append(s)
    if not ready:
        raise FileNotFoundError("no scan of %s is available: %s" % (manifest_path, "; ".join(skipped)
                                                                     or "none selected"))
    return ready, skipped


def calibration_scan_scores(analyzer, manifest="volumes", roles: Sequence[str] = ("calibration",),
                            progress: bool = True) -> List[dict]:
    """What ``calibrate`` fits the score threshold on: per nodule-annotated scan of ``roles``,
    {"name", "fp_scores": scores of the nodule/mass findings hitting no lesion,
    "big_lesion_scores": per lesion >= 10 mm the score of the finding hitting it, 0 if none}.
    ``analyzer`` must list every candidate (``score_threshold=0``); each scan is analysed once
    through :func:`evaluate_scan`, as ``evaluate-volumes`` does."""
    from tqdm import tqdm

    specs, min_mm3, manifest_path = load_manifest(manifest)
    specs = [s for s in _with_roles(specs, roles) if s.nodule_reference]
    ready, _ = available_scans(specs, manifest_path)
    out = []
    for spec in tqdm(ready, desc="calibration scans", unit="scan", disable=not progress):
        rec, _result = evaluate_scan(analyzer, spec, min_mm3)
        det = rec["detection"]
        out.append({"name": spec.name,
                    "fp_scores": [f["score"] for f in det["findings"] if f["lesion"] is None],
                    "big_lesion_scores": [les["score"] or 0.0 for les in det["lesions"] if les["big"]]})
    return out


def evaluate_volumes(model=None, manifest="volumes", output="runs/eval-volumes",
                     roles: Optional[Sequence[str]] = None, device: str = "cpu",
                     progress: bool = True) -> dict:
    """Evaluate ``model`` (None: the bundled default) on the manifest's scans (optionally only
    those of ``roles``); writes metrics.json, scans.tsv, report.md, froc.png, confusion.png
    and previews/<scan>.png under ``output`` and returns the metrics."""
    from tqdm import tqdm

    from ChestCTMTLLib.inference import Analyzer
    from ChestCTMTLLib.options import AnalysisOptions

    t_start = time.time()
    specs, min_mm3, manifest_path = load_manifest(manifest)
    specs = _with_roles(specs, roles)
    ready, skipped = available_scans(specs, manifest_path)
    out = Path(output)
    (out / "previews").mkdir(parents=True, exist_ok=True)
    analyzer = Analyzer(model, AnalysisOptions(device=device, score_threshold=0.0))
    op = float(analyzer.calibration.score_threshold)
    records, pictures = [], []
    bar = tqdm(ready, desc="evaluate-volumes", unit="scan", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        rec, result = evaluate_scan(analyzer, spec, min_mm3)
        lesions = None
        if rec.get("detection") is not None:
            lesions = [{"center_mm": x["center_mm"], "diameter_mm": x["diameter_mm"]}
                       for x in rec["detection"]["lesions"]]
        picture = "previews/%s.png" % spec.name
        plot_scan(result, rec, lesions, op, out / picture)
        rec["preview"] = picture
        records.append(rec)
        del result
    groups = {"calibration": [r for r in records if r["role"] == "calibration"],
              "validation": [r for r in records if r["role"] == "validation"], "all": records}
    ident = analyzer.loaded.identity
    metrics = {
        "model": {"id": ident.id, "version": ident.version, "sha256": ident.sha256,
                  "folder": str(analyzer.loaded.folder), "score_threshold": op,
                  "calibration_fitted": analyzer.calibration.fitted},
        "manifest": str(manifest_path), "roles": list(roles) if roles else list(ROLES),
        "options": analyzer.options.to_dict(), "device": analyzer.device,
        "precision": analyzer.precision,
        "groups": {g: summarise(rs, op) for g, rs in groups.items() if rs},
        "scans": records, "skipped": skipped}
    metrics["headline"] = headline(metrics)
    for r in records:
        r.get("infection_slices", {}).pop("_counts", None)
    if plot_froc({g: [r["detection"] for r in rs if r.get("detection", {}).get("lesions")]
                  for g, rs in groups.items()}, out / "froc.png"):
        pictures.append("froc.png")
    plot_confusion(metrics, out / "confusion.png")
    pictures.append("confusion.png")
    pictures += [r["preview"] for r in records]
    metrics["elapsed_s"] = round(time.time() - t_start, 1)
    write_scans_tsv(records, out / "scans.tsv")
    write_report(metrics, out / "report.md", pictures)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=json_default))
    return metrics
