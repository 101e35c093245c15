"""The module's panel (ChestCTMTLWidget) executed headless: every path a user can click.

``ChestCTMTL.py`` runs unchanged on real MRML; Qt, ``slicer.app`` and the message boxes are the
stand-ins of Testing/qt_standin.py (dialogs answered by the test, timers fired by the test), the
parameter node's GUI binding is Testing/slicer_standins.py's copy of Slicer's, with 5.8's and
5.10+'s ``connectGui`` tag behaviour. Cases that differ between Slicer versions run for both.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import types
import unittest
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

import qt_standin  # noqa: E402
import slicer_standins  # noqa: E402

slicer_standins.install()

import ChestCTMTL as module  # noqa: E402
from ChestCTMTLLib import modelio  # noqa: E402
from ChestCTMTLLib.options import DEVICES  # noqa: E402
from ChestCTMTLMRML import dependencies, headless, selftest, terminology  # noqa: E402
from mrml_testutil import synthetic_result  # noqa: E402
from test_module_logic import counts, load_slices  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
Ok, Cancel, Yes = qt_standin.QMessageBox.Ok, qt_standin.QMessageBox.Cancel, qt_standin.QMessageBox.Yes


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory):
    """A registry with one untrained model (plumbing, not accuracy)."""
    folder = tmp_path_factory.mktemp("resources")
    shutil.copytree(REPO / "Resources" / "Terminology", folder / "Terminology")
    model = modelio.create_untrained_model_folder(folder / "untrained", seed=0)
    modelio.register_model(model, registry=folder / "models.json")
    return folder


@pytest.fixture(params=["5.8", "5.12"])
def slicer_version(request, monkeypatch):
    monkeypatch.setitem(slicer_standins.BEHAVIOUR, "slicer", request.param)
    return request.param


@pytest.fixture()
def app(scene, registry_dir, monkeypatch):
    monkeypatch.setenv("CHESTCTMTL_RESOURCES", str(registry_dir))
    for _ in ("Red", "Yellow", "Green"):  # what Slicer's layout adds to every scene
        scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    with qt_standin.activate(module) as app:
        yield app
        assert app.slot_errors == [], "a slot raised (PythonQt would print it): %r" % app.slot_errors
        for panel in Panel.made:  # as Slicer does when the application closes
            panel.exit()
            panel.widget.cleanup()
            if panel.widget._job is not None:
                panel.widget._job.wait(600)
        Panel.made.clear()
        node = scene.GetSingletonNode("ChestCTMTL", "vtkMRMLScriptedModuleNode")
        if node is not None:  # a singleton survives Clear(False); the next test starts afresh
            scene.RemoveNode(node)


class Panel:
    """The module panel as Slicer drives it: setup() once, enter()/exit() when shown/hidden."""

    made: list = []

    def __init__(self):
        Panel.made.append(self)
        parent = qt_standin.qMRMLWidget()
        parent.isEntered = False
        self.widget = module.ChestCTMTLWidget(parent)
        self.widget.setup()
        self.ui = self.widget.ui

    def enter(self):
        self.widget.parent.isEntered = True
        self.widget.enter()

    def exit(self):
        self.widget.parent.isEntered = False
        self.widget.exit()

    @property
    def params(self):
        return self.widget._parameterNode

    def run_until_done(self, timeout=600.0):
        """The event loop while a job runs: fire the poll timer until the job is gone."""
        end = time.monotonic() + timeout
        while self.widget._job is not None:
            assert time.monotonic() < end, "analysis did not finish"
            if not qt_standin.fire_timers():
                raise AssertionError("a job is running but no timer is active: the poll loop stopped")


@pytest.fixture()
def ct(scene, lidc_files):
    return load_slices(lidc_files, 58, 6, "CT")


# ------------------------------------------------------------------ set-up and lifecycle
def test_setup_completes_and_analyze_follows_the_selected_volume(app, scene, lidc_files):
    panel = Panel()
    assert panel.widget._pollTimer is not None  # setup ran to the end
    assert len(panel.ui.analyzeButton.clicked.slots) == 1
    panel.enter()
    assert not panel.ui.analyzeButton.enabled
    assert panel.ui.inputStatusLabel.text == "Select a CT volume to analyse."
    assert panel.ui.modelComboBox.count == 1 and "default" in panel.ui.modelComboBox.itemText(0)
    assert panel.ui.deviceInfoLabel.text == panel.widget.logic.deviceDescription()
    volume = load_slices(lidc_files, 58, 6, "CT")
    panel.ui.inputVolumeSelector.setCurrentNode(volume)  # the user picks the CT
    assert panel.params.inputVolume is volume
    assert panel.ui.analyzeButton.enabled and panel.ui.analyzeButton.text == "Analyze"


def test_enter_exit_reenter_keeps_the_device_and_one_connection(app, ct, slicer_version):
    """Failed before the fix on "5.8": connectGui's None tag left the old connectors in place,
    and the next connect's refill of the device combo wrote "auto" through them."""
    panel = Panel()
    panel.enter()
    panel.ui.deviceComboBox.currentIndex = list(DEVICES).index("cpu")  # the user picks cpu
    assert panel.params.device == "cpu"
    for _ in range(3):
        panel.exit()
        panel.enter()
    assert panel.params.device == "cpu"
    assert panel.ui.deviceComboBox.currentText == "cpu"
    assert len(panel.ui.deviceComboBox.currentIndexChanged.slots) == 1
    panel.exit()
    assert panel.ui.deviceComboBox.currentIndexChanged.slots == []  # nothing left bound while hidden


def test_scene_close_and_reopen_rebinds_the_panel(app, ct, slicer_version, scene):
    panel = Panel()
    panel.enter()
    scene.Clear(False)
    assert panel.params is not None and panel.params.inputVolume is None
    assert len(panel.ui.createSegmentationCheckBox.toggled.slots) == 1
    assert not panel.ui.analyzeButton.enabled


# ------------------------------------------------------------------ analysis
def test_analyze_shows_progress_then_results(app, ct, scene, monkeypatch):
    """The poll loop yields the GUI thread only briefly and reschedules with a zero-delay
    single-shot timer (failed before the fix: 20 ms of sleep per 25 ms poll)."""
    sleeps = []
    real_sleep = time.sleep
    monkeypatch.setattr(module.time, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))
    panel = Panel()
    panel.enter()
    panel.params.device = "cpu"
    panel.ui.analyzeButton.click()
    assert panel.widget._job is not None
    assert panel.ui.analyzeButton.text == "Cancel" and panel.ui.progressBar.visible
    timer = panel.widget._pollTimer
    assert timer.isActive() and timer.isSingleShot() and timer.interval == 0
    progress = []
    while panel.widget._job is not None:
        qt_standin.fire_timers()
        progress.append(panel.ui.progressBar.value)
    assert progress == sorted(progress) and progress[-1] == 100
    assert sleeps and max(sleeps) <= 0.005
    assert panel.ui.stageLabel.text.startswith("Done in") and not panel.ui.progressBar.visible
    assert panel.ui.analyzeButton.text == "Analyze" and panel.ui.analyzeButton.enabled
    assert panel.widget.logic.hasResults(ct)
    assert "research use only" in panel.ui.verdictLabel.text
    assert panel.ui.saveReviewButton.enabled and panel.ui.compareReconstructionButton.enabled
    assert not [d for d in app.dialogs if d.get("icon") == qt_standin.QMessageBox.Critical]


def test_cancel_leaves_the_scene_unchanged(app, ct, scene):
    panel = Panel()
    panel.enter()
    panel.params.device = "cpu"
    before = counts(scene)
    panel.ui.analyzeButton.click()
    panel.ui.analyzeButton.click()  # "Cancel"
    assert panel.ui.stageLabel.text == "Cancelling..."
    panel.run_until_done()
    assert panel.ui.stageLabel.text == "Cancelled; the scene is unchanged."
    assert counts(scene) == before and panel.ui.analyzeButton.text == "Analyze"


def test_scene_close_during_a_run_discards_it(app, ct, scene):
    panel = Panel()
    panel.enter()
    panel.params.device = "cpu"
    panel.ui.analyzeButton.click()
    job = panel.widget._job
    scene.Clear(False)
    assert job.cancelled
    panel.run_until_done()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert panel.ui.analyzeButton.text == "Analyze"
    assert not [d for d in app.dialogs if d.get("icon") == qt_standin.QMessageBox.Critical]


def test_a_click_queued_during_the_last_poll_starts_nothing(app, ct, scene):
    """Failed before the fix: the job was cleared before processEvents(), so the queued click
    on the button (still reading "Cancel") started a second analysis."""
    panel = Panel()
    panel.enter()
    panel.params.device = "cpu"
    panel.params.createReconstruction = False
    panel.ui.analyzeButton.click()
    job = panel.widget._job
    assert job.wait(600) and job.error is None

    def queued_click():
        panel.params.createReconstruction = True
        panel.ui.analyzeButton.click()

    app.on_process_events.append(queued_click)
    panel.run_until_done()
    assert app.process_events_calls >= 1
    assert panel.widget._job is None and not panel.widget._pollTimer.isActive()
    assert panel.ui.analyzeButton.text == "Analyze"
    assert panel.widget.logic.resultNodes(ct).reconstruction is None  # the finished job's options


def test_compare_toggle_resets_when_results_are_replaced(app, ct, scene):
    """Failed before the fix: the toggle stayed checked over the new results."""
    panel = Panel()
    panel.enter()
    panel.params.device = "cpu"
    panel.ui.analyzeButton.click()
    panel.run_until_done()
    panel.ui.compareReconstructionButton.checkable = True
    panel.ui.compareReconstructionButton.click()
    assert panel.ui.compareReconstructionButton.checked
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    recon = panel.widget.logic.resultNodes(ct).reconstruction
    assert composite.GetForegroundVolumeID() == recon.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    app.answers.append(Yes)  # "Replace them?"
    panel.ui.analyzeButton.click()
    assert "Replace them?" in app.dialogs[-1]["text"]
    panel.run_until_done()
    assert not panel.ui.compareReconstructionButton.checked
    assert composite.GetForegroundVolumeID() is None and composite.GetBackgroundVolumeID() == ct.GetID()


# ------------------------------------------------------------------ install offer
def test_install_offer_without_a_wait_cursor_and_declined_changes_nothing(app, ct, scene, monkeypatch):
    """Failed before the fix: the confirmation came up under the wait cursor."""
    monkeypatch.setattr(dependencies, "REQUIREMENTS",
                        dependencies.REQUIREMENTS + (("chestctmtl_no_such_pkg", "no-such-pkg"),))
    panel = Panel()
    panel.enter()
    before = counts(scene)
    app.answers.append(Cancel)
    panel.ui.analyzeButton.click()
    offer = app.dialogs[-1]
    assert "chestctmtl_no_such_pkg" in offer["text"] and offer["cursor_depth"] == 0
    assert panel.widget._job is None and counts(scene) == before and app.cursor_depth == 0


@pytest.mark.parametrize("version", ["5.8", "5.12"])
def test_after_installing_the_panel_refreshes(app, ct, scene, monkeypatch, tmp_path, version):
    """pip installs into a folder on sys.path; the check after it sees the new package
    (importlib.invalidate_caches: failed before the fix), the device line is read again, and the analysis goes on.
    "5.12": through ``slicer.packaging.pip_ensure`` (Base/Python/slicer/packaging.py, v5.12.3;
    absent before 5.12); "5.8": ``slicer.util.pip_install`` under a status box."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(dependencies, "REQUIREMENTS",
                        dependencies.REQUIREMENTS + (("chestctmtl_fresh_pkg", "fresh-pkg"),))
    installs = []

    def install(requirements):  # what pip leaves behind: a package on the path
        installs.append(requirements)
        before = os.stat(tmp_path)
        (tmp_path / "chestctmtl_fresh_pkg").mkdir()
        (tmp_path / "chestctmtl_fresh_pkg" / "__init__.py").write_text("")
        # a file system with coarse timestamps (FAT, SMB: 2 s) shows the folder unchanged, so
        # only importlib.invalidate_caches() makes the import system look again
        os.utime(tmp_path, ns=(before.st_atime_ns, before.st_mtime_ns))

    if version == "5.12":
        packaging = types.ModuleType("slicer.packaging")

        def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True,
                       prompt_restart=True, requester=None, skip_in_testing=True, show_progress=True):
            assert prompt_install is False and requester == "ChestCTMTL"  # we asked already
            install(requirements)

        packaging.pip_ensure = pip_ensure
        monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    else:
        monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # 5.8: no such module
        monkeypatch.setattr(slicer.util, "pip_install", lambda requirements, **kw: install(requirements))
    panel = Panel()
    panel.enter()
    panel.params.device = "cpu"
    panel.ui.deviceInfoLabel.text = "stale"
    app.answers.append(Ok)
    panel.ui.analyzeButton.click()
    assert installs == ([["fresh-pkg"]] if version == "5.12" else ["fresh-pkg"])
    if version == "5.8":
        status = [d for d in app.dialogs if d.get("status")]
        assert status and "fresh-pkg" in status[0]["text"] and status[0]["closed"]
    assert panel.ui.deviceInfoLabel.text == panel.widget.logic.deviceDescription()
    assert panel.widget._job is not None  # the analysis went on after installing
    panel.run_until_done()
    assert panel.widget.logic.hasResults(ct)


def test_an_installed_torch_older_than_the_minimum_is_offered_an_update(monkeypatch):
    """Failed before the fix: only a missing torch was noticed."""
    import torch

    monkeypatch.setattr(torch, "__version__", "1.13.1+cpu")
    assert dependencies.outdated_torch() == "1.13.1+cpu"
    assert any("torch 2.0 or newer" in line for line in dependencies.problems())
    with pytest.raises(module.errors.ChestCTMTLError, match="torch 2.0 or newer"):
        dependencies.ensure(gui_available=False)


# ------------------------------------------------------------------ review
def test_a_note_being_typed_survives_parameter_changes(app, ct, scene):
    """Failed before the fix: any parameter change rewrote the note field."""
    panel = Panel()
    panel.enter()
    logic = panel.widget.logic
    logic.createResultNodes(ct, synthetic_result(logic.volumeToCT(ct)))
    panel.widget.updateResults()
    panel.ui.findingsTableWidget.selectRow(0)
    assert panel.ui.findingNoteLineEdit.enabled
    panel.ui.findingNoteLineEdit.type_text("spiculated")
    panel.params.scoreThreshold = 0.4
    panel.params.createDetections = False
    assert panel.ui.findingNoteLineEdit.text == "spiculated"
    panel.ui.findingNoteLineEdit.finish_editing()
    roi = panel.widget._selectedRoi()
    assert logic.findingReview(roi) == ("unreviewed", "spiculated")
    panel.ui.acceptFindingButton.click()
    assert logic.findingReview(roi) == ("accepted", "spiculated")
    panel.ui.findingsTableWidget.selectRow(1)
    assert panel.ui.findingNoteLineEdit.text == ""


# ------------------------------------------------------------------ Slicer 5.8's API
class _Slicer58:
    """A real object with the methods Slicer 5.8 lacks hidden (AttributeError, as in 5.8)."""

    HIDDEN = ()

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        if name in self.HIDDEN:
            raise AttributeError(name)
        return getattr(self._real, name)


class Terminologies58(_Slicer58):
    """vtkSlicerTerminologiesModuleLogic.h at v5.8.0 has no IsTerminologyContextLoaded."""

    HIDDEN = ("IsTerminologyContextLoaded",)


class Segment58(_Slicer58):
    """vtkSegment.h at v5.8.0 has no GetTerminology (GetTag(tag, value&) only)."""

    HIDDEN = ("GetTerminology",)


@pytest.mark.parametrize("version", ["5.8", "5.12"])
def test_terminology_context_loads_on_every_version(version):
    """Failed before the fix on "5.8" (IsTerminologyContextLoaded is 5.10+)."""
    real = headless.get_logic("Terminologies")
    logic = Terminologies58(real) if version == "5.8" else real
    terminology.ensure_loaded(logic)
    assert terminology.is_loaded(logic)
    assert real.IsTerminologyContextLoaded(terminology.context_name())


@pytest.mark.parametrize("version", ["5.8", "5.12"])
def test_segment_terminology_reads_on_every_version(version):
    """Failed before the fix: the self-test's one-argument GetTag exists in no version."""
    segment = slicer.vtkSegment()
    entry = terminology.lesion_term("nodule-mass").entry
    segment.SetTerminology(entry)
    assert selftest.segment_terminology(Segment58(segment) if version == "5.8" else segment) == entry
    assert "~SCT^" in entry


def test_self_test_skips_the_analysis_cases_when_torch_is_missing(monkeypatch):
    monkeypatch.setattr(dependencies, "REQUIREMENTS", (("chestctmtl_no_torch_here", None),))
    monkeypatch.setattr(selftest, "ANALYSIS_PACKAGES", ("chestctmtl_no_torch_here",))
    case = module.ChestCTMTLTest()
    with pytest.raises(unittest.SkipTest, match="chestctmtl_no_torch_here"):
        case.test_ChestCTMTL_ResultsReplaceCancel()


def test_the_widget_stand_in_is_only_active_inside_the_fixture():
    assert not qt_standin.is_active()
    with pytest.raises(RuntimeError, match="Slicer application"):
        module.ChestCTMTLWidget(None)


def test_voxels_of_the_input_are_never_modified(app, ct):
    voxels = np.array(slicer.util.arrayFromVolume(ct), copy=True)
    panel = Panel()
    panel.enter()
    panel.params.device = "cpu"
    panel.ui.analyzeButton.click()
    panel.run_until_done()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), voxels)


def test_self_test_panel_case_runs_on_the_stand_ins(app, scene):
    """The module's own panel case (ChestCTMTLMRML.selftest), here on the Qt stand-in."""
    for _ in ("Red", "Yellow", "Green"):
        scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    case = module.ChestCTMTLTest()
    case.setUp()
    try:
        case.test_ChestCTMTL_Panel()
    finally:
        case.tearDown()


@pytest.mark.parametrize("version,tag", [("5.8", None), ("5.12", 0)])
def test_the_stand_in_connect_gui_tag_follows_slicer(app, scene, version, tag, monkeypatch):
    """wrapper.py's _connectGui returns None at v5.8.0/v5.8.1 and the tag from v5.10.0 on;
    connectParametersToGui returns the tag on both."""
    monkeypatch.setitem(slicer_standins.BEHAVIOUR, "slicer", version)
    panel = Panel()
    node = panel.widget.logic.getParameterNode()
    assert node.connectGui(panel.ui) == tag
    assert node.connectParametersToGui({"device": panel.ui.deviceComboBox}) == 1


def test_a_loaded_old_torch_asks_for_an_update_and_a_restart(app, ct, scene, monkeypatch):
    """The offer names the old torch; agreeing explains that the update needs the PyTorch
    module and a restart (the loaded torch cannot be replaced in the running Slicer)."""
    import torch

    monkeypatch.setattr(torch, "__version__", "1.13.1+cpu")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.ModuleType("PyTorchUtils"))
    panel = Panel()
    panel.enter()
    before = counts(scene)
    app.answers.append(Ok)
    panel.ui.analyzeButton.click()
    questions = [d for d in app.dialogs if d.get("icon") == qt_standin.QMessageBox.Question]
    errors_shown = [d for d in app.dialogs if d.get("icon") == qt_standin.QMessageBox.Critical]
    assert "torch 2.0 or newer (installed: 1.13.1+cpu)" in questions[0]["text"]
    assert errors_shown and "restart Slicer" in errors_shown[0]["text"]
    assert [type(e).__name__ for e in app.slot_errors] == ["ChestCTMTLError"]  # shown, re-raised
    app.slot_errors.clear()
    assert panel.widget._job is None and counts(scene) == before and app.cursor_depth == 0



# ------------------------------------------------------------------ lobes in the scene, DICOM out
def _lobes_segmentation(scene, volume):
    """Five lobes as TotalSegmentator's Slicer module names its segments (boxes, known masks)."""
    shape = slicer.util.arrayFromVolume(volume).shape
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    k, j, i = shape
    boxes = {"lung_upper_lobe_right": (slice(3, k), slice(0, j), slice(0, i // 2)),
             "lung_middle_lobe_right": (slice(1, 3), slice(0, j), slice(0, i // 2)),
             "lung_lower_lobe_right": (slice(0, 1), slice(0, j), slice(0, i // 2)),
             "lung_upper_lobe_left": (slice(3, k), slice(0, j), slice(i // 2, i)),
             "lung_lower_lobe_left": (slice(0, 3), slice(0, j), slice(i // 2, i))}
    for name, box in boxes.items():
        mask = np.zeros(shape, np.uint8)
        mask[box] = 1
        sid = seg.GetSegmentation().AddEmptySegment(name, name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, sid, volume)
    return seg


@pytest.fixture()
def dicom_ct(scene, lidc_files, tmp_path):
    """Six LIDC slices read from their own folder, marked as Slicer's DICOM plugin marks a
    volume it loaded (``DICOM.instanceUIDs``, DICOMScalarVolumePlugin.py at v5.8.0)."""
    import pydicom

    folder = tmp_path / "series"
    folder.mkdir()
    names = []
    for source in lidc_files[58:64]:
        target = folder / Path(source).name
        shutil.copy2(source, target)
        names.append(str(target))
    volume = load_slices(names, 0, 6, "DICOM CT")
    uids = [pydicom.dcmread(n, stop_before_pixels=True).SOPInstanceUID for n in names]
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    return volume


def test_lobes_in_the_scene_and_dicom_seg_sr_from_the_panel(app, dicom_ct, scene, tmp_path):
    pytest.importorskip("highdicom", reason="the DICOM writers need highdicom (requirements.txt)")
    _lobes_segmentation(scene, dicom_ct)
    panel = Panel()
    panel.enter()
    panel.ui.inputVolumeSelector.setCurrentNode(dicom_ct)
    panel.params.device = "cpu"
    assert not panel.ui.saveDicomButton.enabled  # no results yet
    panel.ui.analyzeButton.click()
    panel.run_until_done()
    summary = panel.widget.logic.resultsSummary(dicom_ct)
    lobes = summary["involvement"]["lobes"]  # the analysis used the lobes in the scene
    assert set(lobes["lobes"]) == {"right upper lobe", "right middle lobe", "right lower lobe",
                                   "left upper lobe", "left lower lobe"}
    assert panel.ui.saveDicomButton.enabled
    out = tmp_path / "dicom-out"
    out.mkdir()
    qt_standin.QFileDialog.answers[:] = [str(out)]
    panel.ui.saveDicomButton.click()
    written = sorted(p.name for p in out.rglob("*.dcm"))
    assert any("sr" in n for n in written), written
    infos = [d for d in app.dialogs if "DICOM SEG and SR written" in str(d.get("text", ""))]
    assert infos, app.dialogs
    assert not [d for d in app.dialogs if d.get("icon") == qt_standin.QMessageBox.Critical]


def test_dicom_button_is_off_for_a_volume_not_from_dicom(app, ct, scene):
    panel = Panel()
    panel.enter()
    panel.ui.inputVolumeSelector.setCurrentNode(ct)
    panel.widget.logic.createResultNodes(ct, synthetic_result(panel.widget.logic.volumeToCT(ct)))
    panel.widget.updateResults()
    assert panel.ui.saveReviewButton.enabled and not panel.ui.saveDicomButton.enabled


def test_save_review_of_a_dicom_ct_also_writes_seg_and_sr(app, dicom_ct, scene, tmp_path):
    pytest.importorskip("highdicom", reason="the DICOM writers need highdicom (requirements.txt)")
    panel = Panel()
    panel.enter()
    panel.ui.inputVolumeSelector.setCurrentNode(dicom_ct)
    panel.widget.logic.createResultNodes(dicom_ct, synthetic_result(panel.widget.logic.volumeToCT(dicom_ct)))
    panel.widget.updateResults()
    qt_standin.QFileDialog.answers[:] = [str(tmp_path / "session.mrb")]
    panel.ui.saveReviewButton.click()
    assert (tmp_path / "session.mrb").is_file()
    assert sorted(p.suffix for p in (tmp_path / "session-dicom").iterdir()) == [".dcm", ".dcm"]
    assert not [d for d in app.dialogs if d.get("icon") == qt_standin.QMessageBox.Critical]
