"""The whole ``chestctmtl analyze`` output on a real CT stays what it was before the speed and
memory work (issue 15), within stated tolerances.

``reference/lidc0002_float32.json`` is :func:`case_summary` of the case folder that revision
``c5c294c`` (the last before issue 15) wrote for LIDC-IDRI-0002 with the bundled model, in
float32 PyTorch arithmetic (the only one it had). This test runs the command as a user does,
with ``--precision float32 --runtime torch``, and compares the same summary.

Tolerances (a different CPU's float32 kernels may change the last bits, no more):
report numbers within 1e-3 absolute or 0.5 % relative, text and counts exact except voxel
and volume counts (0.5 %); each segment's voxel count within 0.5 %; the reconstruction's mean,
spread and percentiles within 1 HU (the float32 reconstruction is now stored in 16-bit steps
of 0.01 HU before rounding to whole HU, so single voxels may move by 1 HU).

To make a reference from a case folder: ``python Testing/test_reference_outputs.py CASE_DIR``.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "reference" / "lidc0002_float32.json"
#: report.json keys that depend on the run, not on the answer
_RUN_KEYS = ("timings_s", "input", "precision", "runtime")
_NRRD_TYPES = {"short": np.int16, "unsigned char": np.uint8}


def _nrrd(path: Path):
    raw = path.read_bytes()
    end = raw.index(b"\n\n")
    fields = {}
    for line in raw[:end].decode("latin-1").splitlines()[1:]:
        if not line.startswith("#"):  # "field: value" and "key:=value" lines
            key, value = line.split(":=", 1) if ":=" in line else line.split(": ", 1)
            fields[key] = value
    voxels = np.frombuffer(gzip.decompress(raw[end + 2:]), _NRRD_TYPES[fields["type"]])
    return fields, voxels


def case_summary(case: Path) -> dict:
    """What a case folder says, in numbers that can be compared across machines."""
    report = json.loads((case / "report.json").read_text())
    for key in _RUN_KEYS:
        report.pop(key, None)
    segments = {}
    for name in ("lesions.seg.nrrd", "lungs.seg.nrrd"):
        fields, voxels = _nrrd(case / name)
        counts = np.bincount(voxels, minlength=8)
        for key, value in fields.items():
            if key.startswith("Segment") and key.endswith("_LabelValue"):
                segment = fields[key.replace("_LabelValue", "_Name")]
                segments["%s/%s" % (name, segment)] = int(counts[int(value)])
    _, recon = _nrrd(case / "reconstruction.nrrd")
    recon = recon.astype(np.float64)
    return {
        "report": report,
        "segment_voxels": segments,
        "reconstruction_hu": {"mean": float(recon.mean()), "std": float(recon.std()),
                              **{"p%d" % q: float(np.percentile(recon, q))
                                 for q in (1, 25, 50, 75, 99)}},
    }


def _compare(got, want, path: str, problems: list) -> None:
    counts = path.endswith(("_ml", "voxels", "volume_mm3"))
    if isinstance(want, dict) and isinstance(got, dict):
        if sorted(got) != sorted(want):
            problems.append("%s: keys %s, reference %s" % (path, sorted(got), sorted(want)))
        for key in want:
            if key in got:
                _compare(got[key], want[key], path + "/" + key, problems)
    elif isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            problems.append("%s: %d items, reference %d" % (path, len(got), len(want)))
        for n, (a, b) in enumerate(zip(got, want)):
            _compare(a, b, "%s[%d]" % (path, n), problems)
    elif isinstance(want, bool) or not isinstance(want, (int, float)):
        if got != want:
            problems.append("%s: %r, reference %r" % (path, got, want))
    elif not isinstance(got, (int, float)) or isinstance(got, bool):
        problems.append("%s: %r, reference %r" % (path, got, want))
    elif isinstance(want, int) and not counts:
        if got != want:
            problems.append("%s: %r, reference %r" % (path, got, want))
    elif not math.isclose(got, want, rel_tol=5e-3, abs_tol=1e-3):
        problems.append("%s: %r, reference %r" % (path, got, want))


def _compare_numbers(got: dict, want: dict, tolerance: float, path: str, problems: list) -> None:
    if sorted(got) != sorted(want):
        problems.append("%s: %s, reference %s" % (path, sorted(got), sorted(want)))
    for key, value in want.items():
        if key in got and abs(got[key] - value) > tolerance(value):
            problems.append("%s/%s: %r, reference %r" % (path, key, got[key], value))


def test_analyze_gives_the_reference_answers(lidc0002_nifti, tmp_path):
    want = json.loads(REFERENCE.read_text())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "ChestCTMTL"), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-m", "ChestCTMTLMRML", "analyze", str(lidc0002_nifti),
                          "--output", str(tmp_path), "--no-progress", "--device", "cpu",
                          "--precision", "float32", "--runtime", "torch"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    got = case_summary(tmp_path / "image")
    problems: list = []
    _compare(got["report"], want["report"], "report.json", problems)
    _compare_numbers(got["segment_voxels"], want["segment_voxels"],
                     lambda v: 0.005 * v, "segment voxels", problems)
    _compare_numbers(got["reconstruction_hu"], want["reconstruction_hu"],
                     lambda v: 1.0, "reconstruction HU", problems)
    assert not problems, "\n".join(problems)


def test_the_comparison_sees_a_changed_answer():
    """Known answers for the comparison itself: it must flag what the test is there for."""
    want = json.loads(REFERENCE.read_text())["report"]
    changed = json.loads(json.dumps(want))
    changed["findings"][0]["center_r"] += 1.0
    changed["predicted_class"] = "covid"
    changed["lungs"]["right lung"]["volume_ml"] *= 1.004  # inside the 0.5 % for volumes
    problems: list = []
    _compare(changed, want, "report.json", problems)
    assert len(problems) == 2 and "center_r" in problems[0] + problems[1]
    extra = dict(want, findings=want["findings"] * 2)
    problems = []
    _compare(extra, want, "report.json", problems)
    assert problems and "items" in problems[0]


if __name__ == "__main__":
    print(json.dumps(case_summary(Path(sys.argv[1])), indent=1, sort_keys=True))
