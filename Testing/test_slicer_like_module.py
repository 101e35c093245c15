"""The module in an interpreter with only what a fresh Slicer bundles (Testing/slicer_like.py):
it imports, its panel sets up and enters, Analyze is enabled once a CT is selected and leads to
the install offer, which declined leaves the scene as it was; a broken torch still gives a
panel; the self-test's analysis case skips with the reason instead of failing.
"""
from __future__ import annotations

import json

import pytest

import slicer_like

pytest.importorskip("slicer")


def _run(tmp_path, *args, extra_path=None):
    env = None
    if extra_path is not None:
        import os

        env = {"PYTHONPATH": os.pathsep.join([str(extra_path), slicer_like.environment(
            tmp_path / "site")["PYTHONPATH"]])}
    result = slicer_like.run(["Testing/slicer_like_panel.py", *map(str, args)], tmp_path / "site",
                             timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_panel_in_a_fresh_slicer_reaches_the_install_offer(tmp_path, lidc0001_dicom_dir):
    report = _run(tmp_path, lidc0001_dicom_dir)
    assert report["setup_done"] and report["enter_done"]
    assert report["device_line"] == "PyTorch is not installed yet (it will be offered on Analyze)."
    assert report["models"] >= 1
    assert not report["enabled_without_volume"] and report["enabled_with_volume"]
    assert report["offer"] and "torch" in report["offer"] and "safetensors" in report["offer"]
    assert report["offer_cursor_depth"] == 0
    assert report["errors"] == [] and not report["job_started"] and report["scene_unchanged"]
    assert not report["torch_imported"]


def test_panel_comes_up_with_a_broken_torch(tmp_path, lidc0001_dicom_dir):
    """A torch that fails to load (here: its shared library is missing) is not an ImportError;
    failed before the fix: deviceDescription() let it escape and setup() stopped."""
    broken = tmp_path / "broken"
    (broken / "torch").mkdir(parents=True)
    (broken / "torch" / "__init__.py").write_text(
        "raise OSError('libtorch_cpu.so: cannot open shared object file')\n")
    report = _run(tmp_path, lidc0001_dicom_dir, extra_path=broken)
    assert report["setup_done"] and report["enter_done"]
    assert report["device_line"].startswith("PyTorch cannot be loaded (libtorch_cpu.so")


def test_self_test_analysis_case_skips_without_torch(tmp_path, lidc0001_dicom_dir):
    report = _run(tmp_path, lidc0001_dicom_dir, "--self-test")
    assert report["self_test"].startswith("skipped: Python packages missing: torch, safetensors")
