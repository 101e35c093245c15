"""A model's operating points and calibration, stored beside its weights (calibration.json).

Why a file: the score threshold, the slice temperature, the nodule shape rules and the
verdict thresholds belong to one set of weights - a retrained model needs its own, fitted by
``python -m ChestCTMTLTraining calibrate`` - and must not hide as constants in code. The file
is checksummed in the model card (``calibration_sha256``) like the weights, so an edited or
foreign calibration is refused, not silently used. A model folder without one (a fresh
training run) runs on :data:`DEFAULTS` and says so in every report.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .candidates import ShapeRules

CALIBRATION_FILE = "calibration.json"
SCHEMA = "chestctmtl-calibration/1"

#: What a model without calibration.json runs on (and what ``calibrate`` starts from).
DEFAULTS: dict = {
    "schema": SCHEMA,
    "fitted": False,
    "temperature": 1.0,
    "score_threshold": 0.5,
    # display rules: 1st / 99th percentile of expert-outlined LIDC nodules, by slice thickness
    "shape_rules": {"by_slice_mm": [[0.0, {"min_z_ratio": 0.38, "max_elongation": 3.0}]]},
    # evidence rules: the central 95 % of the same nodules
    "evidence_shape_rules": {"by_slice_mm": [[0.0, {"min_z_ratio": 0.47, "max_elongation": 2.4}]]},
    "verdict": {
        # a nodule/mass finding is evidence for cancer from this size and score on
        "cancer_min_diameter_mm": 8.0,
        # a diffuse process: shape-plausible lesion volume in *each* lung at least this
        "diffuse_min_ml_per_lung": 10.0,
        # infection zones of a lung are listed from this much infection in that lung on
        "infection_min_ml_per_lung": 10.0,
        # typical COVID-19 (RSNA consensus 2020): multifocal - no zone holds more than this
        "covid_max_zone_share": 0.5,
        "peripheral_mm": 10.0,  # reported only
        # classifier slices used: lung cross-section at least this fraction of the largest
        "lung_slice_min_fraction": 0.2,
    },
}


class CalibrationError(ValueError):
    """calibration.json is unreadable, of another schema or not the card's."""


@dataclass
class Calibration:
    """The parsed calibration of one model folder."""

    data: dict = field(default_factory=lambda: copy.deepcopy(DEFAULTS))
    path: Optional[Path] = None
    sha256: Optional[str] = None

    @property
    def fitted(self) -> bool:
        return bool(self.data.get("fitted"))

    @property
    def temperature(self) -> float:
        return float(self.data.get("temperature", 1.0))

    @property
    def score_threshold(self) -> float:
        return float(self.data.get("score_threshold", DEFAULTS["score_threshold"]))

    @property
    def verdict(self) -> dict:
        v = dict(DEFAULTS["verdict"])
        v.update(self.data.get("verdict") or {})
        return v

    def _rules(self, key: str, slice_mm: float) -> ShapeRules:
        table = (self.data.get(key) or DEFAULTS[key]).get("by_slice_mm") or DEFAULTS[key]["by_slice_mm"]
        return interpolate_rules(table, slice_mm)

    def shape_rules(self, slice_mm: float) -> ShapeRules:
        """Rules for listing a nodule candidate at this slice spacing."""
        return self._rules("shape_rules", slice_mm)

    def evidence_rules(self, slice_mm: float) -> ShapeRules:
        """Stricter rules for a nodule to count as evidence for the verdict."""
        return self._rules("evidence_shape_rules", slice_mm)

    def summary(self) -> dict:
        """What report.json says about the calibration that was used."""
        return {"fitted": self.fitted, "sha256": self.sha256,
                "temperature": round(self.temperature, 4),
                "score_threshold": round(self.score_threshold, 4),
                "fitted_on": self.data.get("fitted_on")}


def interpolate_rules(table: Sequence, slice_mm: float) -> ShapeRules:
    """Linear interpolation of ShapeRules between fitted slice spacings (clamped at the ends)."""
    rows = sorted(((float(t), dict(r)) for t, r in table), key=lambda x: x[0])
    xs = [t for t, _ in rows]
    keys = ("min_z_ratio", "max_elongation")
    vals = {k: np.interp(float(slice_mm), xs, [float(r.get(k, getattr(ShapeRules(), k)))
                                               for _, r in rows]) for k in keys}
    return ShapeRules(min_z_ratio=float(vals["min_z_ratio"]),
                      max_elongation=float(vals["max_elongation"]))


def load_calibration(folder, card: Optional[dict] = None) -> Calibration:
    """The folder's calibration.json verified against the card, or the defaults if absent.

    Raises :class:`CalibrationError` when the file is damaged, of another schema, or its
    SHA-256 differs from the card's ``calibration_sha256`` (or the card names one and the file
    is missing).
    """
    from .registry import sha256_file

    folder = Path(folder)
    path = folder / CALIBRATION_FILE
    expected = (card or {}).get("calibration_sha256")
    if not path.is_file():
        if expected:
            raise CalibrationError("model card names calibration %s... but %s is missing"
                                   % (str(expected)[:12], path))
        return Calibration()
    digest = sha256_file(path)
    if expected and digest != expected:
        raise CalibrationError("%s changed: SHA-256 %s does not match the card's %s"
                               % (path, digest[:12], str(expected)[:12]))
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise CalibrationError("%s is not valid JSON: %s" % (path, exc)) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CalibrationError("%s is not a %s file" % (path, SCHEMA))
    if card and data.get("model_sha256") and data["model_sha256"] != card.get("sha256"):
        raise CalibrationError("%s was fitted for weights %s..., not these (%s...)"
                               % (path, str(data["model_sha256"])[:12], str(card.get("sha256"))[:12]))
    merged = copy.deepcopy(DEFAULTS)
    merged.update(data)
    return Calibration(merged, path, digest)


def temperature_scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax probabilities -> those of logits / T (rows renormalised)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    q = np.power(p, 1.0 / max(float(temperature), 1e-6))
    return q / q.sum(axis=-1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: Sequence[int]) -> Tuple[float, dict]:
    """The temperature minimising the negative log-likelihood of ``labels`` (1-D search)."""
    from scipy.optimize import minimize_scalar

    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    y = np.asarray(labels, dtype=np.int64)

    def nll(log_t: float) -> float:
        q = temperature_scale(p, float(np.exp(log_t)))
        return float(-np.mean(np.log(q[np.arange(len(y)), y])))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    t = float(np.exp(res.x))
    return t, {"n": int(len(y)), "nll_before": round(nll(0.0), 4), "nll_after": round(float(res.fun), 4)}


def write_calibration(folder, data: dict) -> Path:
    """Write calibration.json atomically and record its SHA-256 in the model card."""
    from .modelio import update_card
    from .registry import sha256_file
    from .paths import atomic_write_text

    folder = Path(folder)
    out = dict(data)
    out["schema"] = SCHEMA
    path = folder / CALIBRATION_FILE
    atomic_write_text(path, json.dumps(out, indent=2, sort_keys=False) + "\n")
    update_card(folder, {"calibration_sha256": sha256_file(path)})
    return path


def fit_shape_rules(masks: Sequence[Tuple[np.ndarray, Sequence[float]]],
                    slice_mm: Sequence[float] = (0.0, 1.25, 2.0, 2.5, 5.0, 8.0),
                    low_pct: float = 1.0, high_pct: float = 99.0) -> List[list]:
    """Percentiles of nodule shape features over expert masks, as if scanned at each spacing.

    Each mask (thin-slice, spacing (slice, row, col) mm) is re-sliced to every thickness in
    ``slice_mm`` (0: as is) by averaging whole slabs and keeping voxels at least half covered,
    at two slab phases; ``low_pct`` of the z-ratios and ``high_pct`` of the elongations are the
    bounds for that thickness. Thick slices make small nodules look taller than they are, so
    the bounds must follow the scan's spacing.
    """
    from .candidates import shape_features

    table = []
    for t in slice_mm:
        zr, el = [], []
        for m, sp in masks:
            sp = np.asarray(sp, dtype=np.float64)
            phases = (0,) if not t else (0, 1)
            for phase in phases:
                mm, s2 = reslice_mask(m, sp, float(t), phase)
                if mm.sum() < 2:
                    continue
                f = shape_features(mm, s2)
                if f["diameter_mm"] < 3.0:
                    continue
                zr.append(f["z_ratio"])
                el.append(f["elongation"])
        if not zr:
            continue
        table.append([float(t), {"min_z_ratio": round(float(np.percentile(zr, low_pct)), 4),
                                 "max_elongation": round(float(np.percentile(el, high_pct)), 4),
                                 "n": len(zr)}])
    return table


def reslice_mask(mask: np.ndarray, spacing, thickness: float, phase: int = 0):
    """A thin-slice mask as a scan with slices ``thickness`` mm apart would show it."""
    sp = np.asarray(spacing, dtype=np.float64)
    f = max(1, int(round(thickness / sp[0]))) if thickness else 1
    if f == 1:
        return np.asarray(mask, bool), sp
    m = np.asarray(mask, bool)
    phase = int(phase) % f
    pad = (-(m.shape[0] + phase)) % f
    mm = np.concatenate([np.zeros((phase,) + m.shape[1:], bool), m,
                         np.zeros((pad,) + m.shape[1:], bool)])
    mm = mm.reshape(-1, f, *m.shape[1:]).mean(axis=1) >= 0.5
    return mm, np.array([sp[0] * f, sp[1], sp[2]])
