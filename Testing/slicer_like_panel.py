"""Run in the Slicer-like interpreter (Testing/slicer_like.py): open the module's panel the way
Slicer does and report what a user would see, as one JSON line on stdout.

Usage: python -S slicer_like_panel.py DICOM_FOLDER [--self-test]
Qt and slicer.app are Testing/qt_standin.py's; MRML is the slicer-core wheel's; every other
package is what a fresh Slicer bundles (no torch, safetensors, scikit-image, tqdm).
"""
from __future__ import annotations

import json
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer_standins  # noqa: E402

slicer_standins.install()

import qt_standin  # noqa: E402
import vtk  # noqa: E402

import ChestCTMTL as module  # noqa: E402
from ChestCTMTLLib.volume_io import find_dicom_series  # noqa: E402
from ChestCTMTLMRML import headless  # noqa: E402


def load_ct(folder: str):
    files = find_dicom_series(Path(folder))[0][1][58:64]
    names = vtk.vtkStringArray()
    for name in files:
        names.InsertNextValue(name)
    return headless.get_logic("Volumes").AddArchetypeVolume(files[0], "CT", 0, names)


def scene_counts(scene):
    return scene.GetNumberOfNodes()


def main() -> int:
    report = {"torch_importable": "torch" in sys.modules}
    scene = headless.get_scene()
    if "--self-test" in sys.argv:
        case = module.ChestCTMTLTest()
        try:
            case.test_ChestCTMTL_ResultsReplaceCancel()
            report["self_test"] = "ran"
        except unittest.SkipTest as e:
            report["self_test"] = "skipped: {}".format(e)
        print(json.dumps(report))
        return 0
    with qt_standin.activate(module) as app:
        parent = qt_standin.qMRMLWidget()
        parent.isEntered = False
        widget = module.ChestCTMTLWidget(parent)
        widget.setup()
        report["setup_done"] = widget._pollTimer is not None
        parent.isEntered = True
        widget.enter()
        report["enter_done"] = widget._parameterNode is not None
        report["device_line"] = widget.ui.deviceInfoLabel.text
        report["models"] = widget.ui.modelComboBox.count
        report["enabled_without_volume"] = widget.ui.analyzeButton.enabled
        volume = load_ct(sys.argv[1])
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        report["enabled_with_volume"] = widget.ui.analyzeButton.enabled
        before = scene_counts(scene)
        app.answers.append(qt_standin.QMessageBox.Cancel)
        widget.ui.analyzeButton.click()
        offers = [d for d in app.dialogs if d.get("icon") == qt_standin.QMessageBox.Question]
        report["offer"] = offers[0]["text"] if offers else None
        report["offer_cursor_depth"] = offers[0]["cursor_depth"] if offers else None
        report["errors"] = [d["text"] for d in app.dialogs
                            if d.get("icon") == qt_standin.QMessageBox.Critical]
        report["job_started"] = widget._job is not None
        report["scene_unchanged"] = scene_counts(scene) == before
        report["torch_imported"] = "torch" in sys.modules
        widget.exit()
        widget.cleanup()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
