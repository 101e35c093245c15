"""ChestCTMTL: multi-task analysis of a chest CT inside 3D Slicer (research use only).

Structure follows Slicer's scripted-module template: the module class (metadata), a typed
parameter node, a thin Qt widget, the Logic (all processing; usable from scripts and batch runs
without the GUI and without ``slicer.modules.chestctmtl`` being registered) and the self-test.

The numbers come from :mod:`ChestCTMTLLib` (pure Python + PyTorch), the MRML nodes from
:mod:`ChestCTMTLMRML`; this file only connects them to the scene and the panel. Heavy imports
(torch) happen inside the Logic after the dependency check, so the module always loads, even in
a Slicer without PyTorch, and can offer to install it.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Annotated, Callable, Dict, List, Optional

import ctk  # noqa: F401 - as in Slicer's module template
import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import *  # noqa: F401,F403 - Slicer's template does the same
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode

# Slicer puts the module's folder on sys.path; a script that loads this file by path may not.
_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)

from ChestCTMTLLib import errors, registry  # noqa: E402  (numpy-only imports; torch is imported lazily)
from ChestCTMTLLib.options import (DEVICES, FALLBACK_SCORE_THRESHOLD, RANGES,  # noqa: E402
                                   AnalysisOptions)
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES  # noqa: E402
from ChestCTMTLMRML import nodes as resultnodes  # noqa: E402  (slicer/vtk only, no Qt)

#: The three class probabilities as the panel labels them.
CLASS_LABELS = {"non-covid": "Non-COVID", "covid": "COVID-19", "cancer": "Cancer"}
#: Python packages the core needs, as (import name, pip requirement). torch goes through the
#: PyTorch extension (it picks the CUDA build matching the driver), the rest through pip.
PYTHON_REQUIREMENTS = (("torch", None), ("safetensors", "safetensors"),
                       ("SimpleITK", "SimpleITK"), ("skimage", "scikit-image"))
MINIMUM_TORCH_VERSION = "2.0"


#: Raised when a volume already has results and replacing them was not allowed.
ResultsExistError = resultnodes.ResultsExistError


#
# ChestCTMTL
#


class ChestCTMTL(ScriptedLoadableModule):
    """Module metadata. Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Chest CT Multi-Task Analysis"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["ChestCTMTL developers"]
        self.parent.helpText = """
<p><b>Research use only. Not a medical device; not for diagnosis or treatment decisions.</b></p>
<p>Analyses a chest CT with one multi-task deep-learning model: the scan's class (non-COVID,
COVID-19, cancer) with its probabilities, a lesion segmentation (one segment per lesion type),
a reconstruction of the CT, and detected lesions as boxes. Results are placed in a
subject-hierarchy folder next to the CT; the CT itself is never modified.</p>
<p>Review each finding (accept / reject / uncertain, with a note), correct the segmentation with
the Segment Editor, and <i>Save review</i> to write the session (.mrb) and a report whose lesion
volumes are recomputed from the corrected segmentation.</p>
<p>From Python: <code>ChestCTMTL.ChestCTMTLLogic().process(volumeNode, interactive=False)</code>.
See the extension's README for the model card, its training data and its limits.</p>
"""
        self.parent.acknowledgementText = """
Built on 3D Slicer, PyTorch, MONAI, SimpleITK and scikit-image. Development data: LIDC-IDRI
(The Cancer Imaging Archive, CC BY 3.0), COVID-SemiSeg / MedSeg, IQ-OTH/NCCD and the Medical
Segmentation Decathlon (see the model card for licences and citations).
"""
        app = getattr(slicer, "app", None)
        if app is not None:
            app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Offer the real chest CT the main job uses (PyRadiomics' lung1, BSD-3) in Sample Data.

    Downloaded only when the user clicks it, and checked against the same SHA-256 the core's
    sample fetcher uses.
    """
    try:
        import SampleData
        from ChestCTMTLLib import sample_data
    except ImportError:
        return
    name = "lung1_image.nrrd"
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="ChestCTMTL",
        sampleName="ChestCTMTL-lung1",
        thumbnailFileName=os.path.join(_MODULE_DIR, "Resources", "Icons", "ChestCTMTL.png"),
        uris=sample_data.MEMBER_URL.format(name=name),
        fileNames="ChestCTMTL-" + name,
        checksums="SHA256:" + sample_data.MEMBER_SHA256[name],
        nodeNames="ChestCTMTL-lung1",
    )


#
# ChestCTMTLParameterNode
#


@parameterNodeWrapper
class ChestCTMTLParameterNode:
    """Every choice on the panel, stored in the scene (and restored with it).

    inputVolume - the CT to analyse.
    modelId - registry id of the model ("" = the registry's default).
    device - "auto" (GPU when available), "cpu" or "cuda".
    createSegmentation/createReconstruction/createDetections - which results to create.
    scoreThreshold - findings scoring below are not listed. Its range is
      ``ChestCTMTLLib.options.RANGES``; the Logic sets it to the selected model's calibrated
      operating point when the node is created and the widget whenever the model changes
      (the class default is only the value for a model without calibration).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelId: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = AnalysisOptions().device
    createSegmentation: bool = True
    createReconstruction: bool = True
    createDetections: bool = True
    scoreThreshold: Annotated[float, WithinRange(*RANGES["score_threshold"])] = \
        FALLBACK_SCORE_THRESHOLD


#
# ChestCTMTLWidget
#


class ChestCTMTLWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to the Logic; no processing happens here.

    Analysis runs in a worker thread (:class:`AnalysisJob`, no MRML access) while a QTimer on the
    main thread shows its progress and yields the Python GIL to it, as Slicer's SimpleFilters
    does; nodes are created on the main thread once the numbers are ready.
    """

    POLL_INTERVAL_MS = 25

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobVolume = None
        self._jobOptions = {}
        self._pollTimer = None
        self._updatingFindings = False

    # -------------------------------------------------------------------- set-up
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ChestCTMTL.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ChestCTMTLLogic()

        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.visible = False
        self.ui.findingsTableWidget.setColumnCount(5)
        self.ui.findingsTableWidget.setHorizontalHeaderLabels(
            ["Type", "Score", "Size (mm)", "Volume (mm\u00b3)", "Status"])
        self.ui.findingsTableWidget.horizontalHeader().setStretchLastSection(True)
        self._populateModels()
        self.ui.deviceInfoLabel.text = self.logic.deviceDescription()
        low, high = RANGES["score_threshold"]  # the one range (the .ui file's is replaced)
        self.ui.scoreThresholdSliderWidget.minimum = low
        self.ui.scoreThresholdSliderWidget.maximum = high

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyzeButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.findingsTableWidget.connect("itemSelectionChanged()", self.onFindingSelected)
        self.ui.acceptFindingButton.connect("clicked(bool)", lambda _: self.onSetStatus("accepted"))
        self.ui.rejectFindingButton.connect("clicked(bool)", lambda _: self.onSetStatus("rejected"))
        self.ui.uncertainFindingButton.connect("clicked(bool)", lambda _: self.onSetStatus("uncertain"))
        self.ui.findingNoteLineEdit.connect("editingFinished()", self.onNoteEdited)
        self.ui.saveReviewButton.connect("clicked(bool)", self.onSaveReview)
        self.ui.compareReconstructionButton.connect("toggled(bool)", self.onCompareReconstruction)
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3D)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """A loaded scene (e.g. a saved review) brings its own results and review state.

        The review state (ROI colours, table status) is re-applied always; the panel is bound
        to the parameter node only while the module is shown, as in onSceneEndClose (enter()
        binds it otherwise, and exit() must stay the last word while hidden).
        """
        self.logic.loadReview()
        if self.parent.isEntered:
            self.initializeParameterNode()
            self.updateResults()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[ChestCTMTLParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode:
            # modelId has no GUI connector (the combo lists registry entries): follow it by hand,
            # so a loaded scene or a script that sets it is shown too (signals are blocked).
            self._selectModelInCombo(self._parameterNode.modelId)
        self._updateAnalyzeButton()
        self.updateResults()

    # -------------------------------------------------------------------- models
    def _populateModels(self) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        try:
            models = self.logic.availableModels()
        except errors.ChestCTMTLError as e:
            models = []
            self.ui.modelInfoLabel.text = str(e)
        for entry in models:
            label = "{} (v{}){}".format(entry["id"], entry.get("version", "?"),
                                        " - default" if entry.get("default") else "")
            combo.addItem(label, entry["id"])
            combo.setItemData(combo.count - 1, entry.get("tooltip", ""), qt.Qt.ToolTipRole)
        if not models:
            self.ui.modelInfoLabel.text = ("No model is registered in the extension (Resources/models.json). "
                                           "Install a model folder to analyse.")
        combo.blockSignals(wasBlocked)

    def _selectModelInCombo(self, modelId: str) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        for index in range(combo.count):
            if combo.itemData(index) == modelId or (not modelId and "default" in combo.itemText(index)):
                combo.currentIndex = index
                break
        combo.blockSignals(wasBlocked)
        self._showModelInfo()

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            modelId = self.ui.modelComboBox.itemData(index) or ""
            self._parameterNode.modelId = modelId
            # operating points belong to a model: start from the new model's calibrated one
            self._parameterNode.scoreThreshold = self.logic.calibratedScoreThreshold(modelId or None)
        self._showModelInfo()

    def _showModelInfo(self) -> None:
        combo = self.ui.modelComboBox
        if combo.currentIndex >= 0:
            self.ui.modelInfoLabel.text = combo.itemData(combo.currentIndex, qt.Qt.ToolTipRole) or ""

    # -------------------------------------------------------------------- analysis
    def _updateAnalyzeButton(self) -> None:
        if self._job is not None:
            self.ui.analyzeButton.text = "Cancel"
            self.ui.analyzeButton.toolTip = "Stop the running analysis; nothing is added to the scene."
            self.ui.analyzeButton.enabled = True
            return
        self.ui.analyzeButton.text = "Analyze"
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        problem = self.logic.inputProblem(volume)
        if problem is None and self.ui.modelComboBox.count == 0:
            problem = "No model is installed."
        self.ui.analyzeButton.enabled = problem is None
        self.ui.analyzeButton.toolTip = problem or "Analyse the selected CT."
        self.ui.inputStatusLabel.text = problem or ""

    def onAnalyzeButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.stageLabel.text = "Cancelling..."
            return
        p = self._parameterNode
        volume = p.inputVolume
        with slicer.util.tryWithErrorDisplay("Failed to start the analysis.", waitCursor=True):
            if not self.logic.ensurePythonPackages(askConfirmation=True):
                return
            problem = self.logic.inputProblem(volume, thorough=True)
            if problem:
                raise ValueError(problem)
            if self.logic.hasResults(volume) and not slicer.util.confirmYesNoDisplay(
                    "'{}' already has ChestCTMTL results. Replace them?".format(volume.GetName()),
                    windowTitle="ChestCTMTL"):
                return
            ct = self.logic.volumeToCT(volume)
            self._jobVolume = volume
            self._jobOptions = dict(createSegmentation=p.createSegmentation,
                                    createReconstruction=p.createReconstruction,
                                    createDetections=p.createDetections)
            self._job = self.logic.startAnalysis(
                ct, model=p.modelId or None, device=p.device, scoreThreshold=p.scoreThreshold,
                **self._jobOptions)
        if self._job is None:
            return
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.stageLabel.text = "Starting..."
        self._updateAnalyzeButton()
        self._pollTimer.start()

    def _onPollJob(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        # Slicer's main thread holds the GIL while idle in the Qt event loop: sleeping here is
        # what lets the worker thread's Python code run (torch kernels run without the GIL).
        time.sleep(0.8 * self.POLL_INTERVAL_MS / 1000.0)
        fraction, stage = job.progress
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.stageLabel.text = stage
        if not job.done:
            return
        self._pollTimer.stop()
        self._job = None
        volume, self._jobVolume = self._jobVolume, None
        try:
            if job.error is not None or job.cancelled:
                if job.error is None or isinstance(job.error, errors.Cancelled):
                    self.ui.stageLabel.text = "Cancelled; the scene is unchanged."
                else:
                    self.ui.stageLabel.text = "Failed: {}".format(job.error)
                    slicer.util.errorDisplay("Analysis failed: {}".format(job.error),
                                             detailedText=job.traceback or "")
                return
            if volume is None or volume.GetScene() is None:
                self.ui.stageLabel.text = "The input volume was removed; results discarded."
                return
            self.ui.stageLabel.text = "Adding results to the scene..."
            slicer.app.processEvents()
            try:
                with slicer.util.tryWithErrorDisplay("Failed to add the results to the scene.", waitCursor=True):
                    nodes = self.logic.createResultNodes(volume, job.result, replace=True, **self._jobOptions)
                    self.logic.showResults(volume, nodes)
            except Exception:  # already shown (and re-raised) by tryWithErrorDisplay
                self.ui.stageLabel.text = "Failed to add the results to the scene."
                raise
            r = job.result
            self.ui.stageLabel.text = "Done in {:.1f} s on {}: {} finding(s).".format(
                r.timings_s.get("total", job.elapsed), r.device, len(r.findings))
        finally:
            self.ui.progressBar.visible = False
            self._updateAnalyzeButton()
            self.updateResults()

    # -------------------------------------------------------------------- results
    def _currentVolume(self):
        return self._parameterNode.inputVolume if self._parameterNode else None

    def updateResults(self) -> None:
        """Show the selected volume's verdict and findings (from the scene, not from memory)."""
        summary = self.logic.resultsSummary(self._currentVolume())
        bars = {"non-covid": self.ui.nonCovidProbabilityBar, "covid": self.ui.covidProbabilityBar,
                "cancer": self.ui.cancerProbabilityBar}
        if summary is None:
            self.ui.verdictLabel.text = "No results for this volume yet."
            for bar in bars.values():
                bar.value = 0
            findings = []
        else:
            verdict = summary.get("predicted_class")
            self.ui.verdictLabel.text = "<b>{}</b> (model {} v{}) - research use only".format(
                CLASS_LABELS.get(verdict, verdict or "?"), summary.get("model_id", "?"),
                summary.get("model_version", "?"))
            tooltip = summary.get("verdict_evidence") or ""
            from ChestCTMTLMRML import review

            involved = review.involvement_line(summary.get("involvement"))
            if involved:  # from the analysis; edits to the segmentation do not change it
                self.ui.verdictLabel.text += "<br>Lungs involved: {}".format(involved)
                tooltip += ("\n" if tooltip else "") + "Lungs involved (from the analysis): " + involved
            self.ui.verdictLabel.toolTip = tooltip
            for name, bar in bars.items():
                bar.value = int(round(100 * float(summary["probabilities"].get(name, 0.0))))
            findings = summary["findings"]
        hasResults = summary is not None
        self.ui.compareReconstructionButton.enabled = hasResults and summary.get("reconstruction") is not None
        self.ui.show3DButton.enabled = hasResults and summary.get("segmentation") is not None
        self.ui.saveReviewButton.enabled = hasResults

        table = self.ui.findingsTableWidget
        self._updatingFindings = True
        try:
            selectedId = self._selectedRoiId()
            table.clearContents()
            table.setRowCount(len(findings))
            for row, f in enumerate(findings):
                size = "\u00d7".join("{:.0f}".format(v) for v in f["size_mm"])
                values = [f["type"], "{:.2f}".format(f["score"]), size,
                          "{:.0f}".format(f["volume_mm3"]), f["status"]]
                for col, text in enumerate(values):
                    item = qt.QTableWidgetItem(text)
                    item.setData(qt.Qt.UserRole, f["roi_id"])
                    if col == 4 and f.get("note"):
                        item.setToolTip(f["note"])
                    table.setItem(row, col, item)
                if f["roi_id"] == selectedId:
                    table.selectRow(row)
        finally:
            self._updatingFindings = False
        self._updateReviewControls()

    def _selectedRoiId(self):
        items = self.ui.findingsTableWidget.selectedItems()
        return items[0].data(qt.Qt.UserRole) if items else None

    def _selectedRoi(self):
        roiId = self._selectedRoiId()
        return slicer.mrmlScene.GetNodeByID(roiId) if roiId else None

    def _updateReviewControls(self) -> None:
        roi = self._selectedRoi()
        for button in (self.ui.acceptFindingButton, self.ui.rejectFindingButton,
                       self.ui.uncertainFindingButton, self.ui.findingNoteLineEdit):
            button.enabled = roi is not None
        wasBlocked = self.ui.findingNoteLineEdit.blockSignals(True)
        self.ui.findingNoteLineEdit.text = self.logic.findingReview(roi)[1] if roi else ""
        self.ui.findingNoteLineEdit.blockSignals(wasBlocked)

    def onFindingSelected(self) -> None:
        if self._updatingFindings:
            return
        roi = self._selectedRoi()
        if roi is not None:
            self.logic.centerOnFinding(roi)
        self._updateReviewControls()

    def onSetStatus(self, status: str) -> None:
        roi = self._selectedRoi()
        if roi is None:
            return
        with slicer.util.tryWithErrorDisplay("Failed to set the finding's status."):
            self.logic.setFindingStatus(roi, status, self.ui.findingNoteLineEdit.text)
        self.updateResults()

    def onNoteEdited(self) -> None:
        roi = self._selectedRoi()
        if roi is None:
            return
        status, note = self.logic.findingReview(roi)
        if note != self.ui.findingNoteLineEdit.text:
            self.logic.setFindingStatus(roi, status, self.ui.findingNoteLineEdit.text)
            self.updateResults()

    def onSaveReview(self) -> None:
        volume = self._currentVolume()
        if volume is None:
            return
        default = os.path.join(qt.QDir.homePath(), "{}-review.mrb".format(volume.GetName()))
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Save review", default,
                                              "Medical Reality Bundle (*.mrb)")
        if not path:
            return
        if not path.lower().endswith(".mrb"):
            path += ".mrb"
        with slicer.util.tryWithErrorDisplay("Failed to save the review.", waitCursor=True):
            written = self.logic.saveReview(volume, path)
            slicer.util.infoDisplay("Review saved:\n" + "\n".join(str(p) for p in written.values()),
                                    windowTitle="ChestCTMTL")

    def onCompareReconstruction(self, checked: bool) -> None:
        volume = self._currentVolume()
        if volume is not None:
            self.logic.compareReconstruction(volume, checked)

    def onShow3D(self, checked: bool) -> None:
        volume = self._currentVolume()
        if volume is not None:
            self.logic.showSegmentation3D(volume, checked)


#
# Background analysis (Qt-free: a worker thread that never touches MRML)
#


class AnalysisJob:
    """One analysis running in a worker thread.

    The worker only sees a :class:`CTVolume` (a numpy copy made on the main thread), so MRML
    stays single-threaded. ``progress`` is a (fraction, stage) snapshot; ``cancel()`` makes the
    core raise :class:`errors.Cancelled` at its next check; ``done`` turns True once ``result``
    or ``error`` is set.
    """

    def __init__(self, target: Callable):
        self._target = target
        self._cancelEvent = threading.Event()
        self._lock = threading.Lock()
        self._progress = (0.0, "Queued")
        self.result = None
        self.error = None
        self.traceback = None
        self._started = None
        self.elapsed = 0.0
        self._thread = threading.Thread(target=self._run, name="ChestCTMTL-analysis", daemon=True)

    def start(self) -> "AnalysisJob":
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self._target(self._report, self._cancelEvent)
        except BaseException as e:  # handed to the main thread, never raised in the worker
            import traceback

            self.error = e
            self.traceback = traceback.format_exc()
        finally:
            self.elapsed = time.perf_counter() - self._started

    def _report(self, fraction: float, stage: str) -> None:
        with self._lock:
            self._progress = (float(fraction), str(stage))

    @property
    def progress(self):
        with self._lock:
            return self._progress

    def cancel(self) -> None:
        self._cancelEvent.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelEvent.is_set()

    @property
    def done(self) -> bool:
        return self._started is not None and not self._thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> bool:
        self._thread.join(timeout)
        return self.done


#
# ChestCTMTLLogic
#


class ChestCTMTLLogic(ScriptedLoadableModuleLogic):
    """All processing: input checks, analysis (via ChestCTMTLLib), result nodes and review (via
    ChestCTMTLMRML). Works inside Slicer on ``slicer.mrmlScene`` and outside on a headless scene,
    with or without the module being registered; ``interactive=False`` never opens a dialog.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._analyzers: Dict[tuple, object] = {}
        self._analyzerLock = threading.Lock()
        self._thoroughChecks: Dict[tuple, Optional[str]] = {}

    def getParameterNode(self):
        """The module's parameter node; a new one starts at its model's calibrated threshold."""
        node = super().getParameterNode()
        fresh = not node.HasParameter("scoreThreshold")
        parameters = ChestCTMTLParameterNode(node)
        if fresh:
            parameters.scoreThreshold = self.calibratedScoreThreshold(parameters.modelId or None)
        return parameters

    # -------------------------------------------------------------------- environment
    @staticmethod
    def _guiAvailable() -> bool:
        """True only in the Slicer application with a main window (so dialogs can be shown)."""
        app = getattr(slicer, "app", None)
        if app is None:
            return False
        try:
            return slicer.util.mainWindow() is not None and not app.commandOptions().noMainWindow
        except Exception:
            return False

    @staticmethod
    def missingPythonPackages() -> List[str]:
        import importlib.util

        return [name for name, _ in PYTHON_REQUIREMENTS if importlib.util.find_spec(name) is None]

    def ensurePythonPackages(self, askConfirmation: bool = True) -> bool:
        """Make sure the core's packages are importable; install only after the user agrees.

        Returns False when the user declines. Without a GUI (or with askConfirmation=False and
        packages missing) it raises instead of installing silently.
        """
        missing = self.missingPythonPackages()
        if not missing:
            return True
        if not (askConfirmation and self._guiAvailable()):
            raise errors.ChestCTMTLError(
                "missing Python packages: {} (install them, or open the ChestCTMTL module in Slicer "
                "to have them installed)".format(", ".join(missing)))
        if not slicer.util.confirmOkCancelDisplay(
                "ChestCTMTL needs these Python packages, which are not installed yet:\n\n  {}\n\n"
                "Install them now? This downloads them from the internet and may take several "
                "minutes.".format(", ".join(missing)), windowTitle="ChestCTMTL"):
            return False
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise errors.ChestCTMTLError(
                    "ChestCTMTL needs the PyTorch extension: install 'PyTorch' from the Extensions "
                    "Manager, restart Slicer and try again.") from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(askConfirmation=False,
                                                torchVersionRequirement=">=" + MINIMUM_TORCH_VERSION)
                if torch is None:
                    return False
        requirements = [req for name, req in PYTHON_REQUIREMENTS if name in missing and req]
        if requirements:
            slicer.util.pip_install(" ".join(requirements))
        still = self.missingPythonPackages()
        if still:
            raise errors.ChestCTMTLError("installing {} did not succeed; restart Slicer and try again"
                                         .format(", ".join(still)))
        return True

    def deviceDescription(self) -> str:
        """What "auto" would use, for the panel (never raises)."""
        try:
            import torch
        except ImportError:
            return "PyTorch is not installed yet (it will be offered on Analyze)."
        try:
            if torch.cuda.is_available():
                return "GPU found: {} (CUDA {}).".format(torch.cuda.get_device_name(0), torch.version.cuda)
        except Exception as e:  # a broken driver must not break the panel
            return "No usable GPU ({}); the CPU is used.".format(e)
        return "No CUDA GPU found; the CPU is used ({} threads).".format(torch.get_num_threads())

    # -------------------------------------------------------------------- models
    def availableModels(self) -> List[dict]:
        """Registered models: id, version, path, default flag and a tooltip with measured speed.

        Reads the registry and model cards only, so it works before PyTorch is installed."""
        return registry.available_models()

    def resolveModelFolder(self, model=None) -> Path:
        """None/"" -> the registry's default; a registry id -> its folder; else a folder path."""
        return registry.resolve_model_folder(model)

    def calibratedScoreThreshold(self, model=None) -> float:
        """The model's calibrated operating point (its calibration.json), for the panel.

        Never raises: without PyTorch yet, or with a missing or damaged model, the panel shows
        the options' fallback (analysing such a model fails later with the real reason).
        """
        try:
            from ChestCTMTLLib import calibration

            folder = self.resolveModelFolder(model)
            value = calibration.load_calibration(folder, registry.read_card(folder)).score_threshold
        except (ImportError, OSError, ValueError, errors.ChestCTMTLError):
            return FALLBACK_SCORE_THRESHOLD
        low, high = RANGES["score_threshold"]
        return min(high, max(low, float(value)))

    def analysisOptions(self, device: str = "auto", createSegmentation: bool = True,
                        createReconstruction: bool = True, createDetections: bool = True,
                        scoreThreshold: Optional[float] = None) -> AnalysisOptions:
        """The panel's choices as the core's AnalysisOptions (validated: raises OptionError).

        ``scoreThreshold`` None: the model's calibrated operating point.
        """
        return AnalysisOptions(
            device=device, score_threshold=None if scoreThreshold is None else float(scoreThreshold),
            tasks=tuple(self.tasksFor(createSegmentation, createReconstruction, createDetections)))

    def getAnalyzer(self, model=None, options: Optional[AnalysisOptions] = None):
        """An ``inference.Analyzer`` for ``model`` with ``options``, cached per (model folder,
        device): the model is loaded (and its checksum verified) once, and other options reuse
        the loaded weights. ``model``: None/"" (registry default), a registry id, a folder or a
        ``modelio.LoadedModel``.

        The device is resolved first, so an unavailable GPU is reported as such even when the
        model is missing too.
        """
        from ChestCTMTLLib import inference

        options = options or AnalysisOptions()
        if model is not None and hasattr(model, "model") and hasattr(model, "identity"):
            return inference.Analyzer(model, options)  # an already loaded modelio.LoadedModel
        options = options.replace(device=inference.resolve_device(options.device))
        folder = self.resolveModelFolder(model)
        key = (str(Path(folder).resolve()), options.device)
        with self._analyzerLock:
            analyzer = self._analyzers.get(key)
            if analyzer is None:
                analyzer = inference.Analyzer(folder, options)
            elif analyzer.options != options:
                analyzer = inference.Analyzer(analyzer.loaded, options)  # same weights, no reload
            self._analyzers = {key: analyzer}  # keep one: models can be large on a GPU
            return analyzer

    # -------------------------------------------------------------------- input
    def inputProblem(self, volumeNode, thorough: bool = False) -> Optional[str]:
        """Why ``volumeNode`` cannot be analysed (a sentence for the panel), or None.

        The quick checks run on every panel update; ``thorough`` adds the core's intensity and
        geometry checks (cached per volume content).
        """
        if volumeNode is None:
            return "Select a CT volume to analyse."
        if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            return "'{}' is a label map, not a CT.".format(volumeNode.GetName())
        image = volumeNode.GetImageData()
        if image is None:
            return "'{}' has no voxels.".format(volumeNode.GetName())
        if image.GetNumberOfScalarComponents() != 1:
            return "'{}' has {} components per voxel; a grey-scale CT is needed.".format(
                volumeNode.GetName(), image.GetNumberOfScalarComponents())
        dims = image.GetDimensions()
        if sum(1 for d in dims if d > 1) < 3:
            return "'{}' is {}D; a 3D CT volume is needed.".format(
                volumeNode.GetName(), sum(1 for d in dims if d > 1))
        if not thorough:
            return None
        key = (volumeNode.GetID(), image.GetMTime(), volumeNode.GetMTime())
        if key not in self._thoroughChecks:
            from ChestCTMTLLib.volume_io import validate_ct

            try:
                validate_ct(self.volumeToCT(volumeNode))
                problem = None
            except errors.InputError as e:
                problem = "'{}' cannot be analysed: {}".format(volumeNode.GetName(), e.message)
            self._thoroughChecks = {key: problem}
        return self._thoroughChecks[key]

    def volumeToCT(self, volumeNode):
        """A CTVolume *copy* of the node (voxels in HU, IJK-to-RAS), safe to hand to a thread."""
        return resultnodes.ct_from_volume_node(volumeNode)

    # -------------------------------------------------------------------- results in the scene
    @staticmethod
    def _scene():
        from ChestCTMTLMRML import headless

        return headless.get_scene()

    def resultNodes(self, volumeNode):
        """The volume's ChestCTMTL results (ChestCTMTLMRML's ResultNodes) or None."""
        if volumeNode is None:
            return None
        return resultnodes.find_result_nodes(self._scene(), volumeNode)

    def hasResults(self, volumeNode) -> bool:
        return self.resultNodes(volumeNode) is not None

    # -------------------------------------------------------------------- analysis
    @staticmethod
    def tasksFor(createSegmentation=True, createReconstruction=True, createDetections=True) -> List[str]:
        tasks = ["classification"]
        if createSegmentation:
            tasks.append("segmentation")
        if createReconstruction:
            tasks.append("reconstruction")
        if createDetections:
            tasks.append("detection")
        return tasks

    def analyzeCT(self, ct, model=None, device: str = "auto", progressCallback=None, cancel=None,
                  createSegmentation: bool = True, createReconstruction: bool = True,
                  createDetections: bool = True, scoreThreshold: Optional[float] = None):
        """The numbers for one CTVolume (``Analyzer.apply`` of :meth:`getAnalyzer`); touches no
        MRML. ``scoreThreshold`` None: the model's calibrated operating point."""
        if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
            raise errors.Cancelled()
        analyzer = self.getAnalyzer(model, self.analysisOptions(
            device, createSegmentation, createReconstruction, createDetections, scoreThreshold))
        return analyzer.apply(ct, progress=progressCallback, cancel=cancel)

    def startAnalysis(self, ct, model=None, device: str = "auto", createSegmentation: bool = True,
                      createReconstruction: bool = True, createDetections: bool = True,
                      scoreThreshold: Optional[float] = None) -> AnalysisJob:
        """Run the analysis in a worker thread; poll the returned job from the main thread.

        Options and model are resolved here, on the calling thread (one Analyzer), so a bad
        option, a missing or corrupt model or an absent GPU fails at once (and torch is first
        imported on the main thread, not in the worker).
        """
        analyzer = self.getAnalyzer(model, self.analysisOptions(
            device, createSegmentation, createReconstruction, createDetections, scoreThreshold))

        def target(report, cancelEvent):
            return analyzer.apply(ct, progress=report, cancel=cancelEvent)

        return AnalysisJob(target).start()

    def createResultNodes(self, inputVolume, result, replace: bool = False,
                          createSegmentation: bool = True, createReconstruction: bool = True,
                          createDetections: bool = True):
        """Put one AnalysisResult into the scene, all or nothing (ChestCTMTLMRML guarantees it:
        a failure removes what it built, and previous results go only after the new exist).

        ``replace``: the volume's previous results are replaced, else their presence is a
        :class:`ResultsExistError`; other volumes' results are never touched.
        """
        # no score threshold here: the Analyzer's operating point already chose the findings
        options = resultnodes.ResultOptions(segmentation=createSegmentation,
                                            reconstruction=createReconstruction,
                                            detections=createDetections)
        return resultnodes.create_result_nodes(self._scene(), inputVolume, result, replace=replace,
                                               options=options)

    def process(self, inputVolume, model=None, device: str = "auto", interactive: bool = True,
                replace: bool = False, progressCallback=None, cancel=None,
                createSegmentation: bool = True, createReconstruction: bool = True,
                createDetections: bool = True, scoreThreshold: Optional[float] = None):
        """Analyse ``inputVolume`` and add the results to the scene; returns the result nodes.

        :param inputVolume: vtkMRMLScalarVolumeNode with a chest CT in HU (never modified).
        :param model: None (registry default), a registry id, a model folder or a LoadedModel.
        :param device: "auto", "cpu" or "cuda".
        :param scoreThreshold: list findings scoring at least this (range
            ``ChestCTMTLLib.options.RANGES``); None: the model's calibrated operating point.
        :param interactive: may ask the user (replace previous results? install packages?);
            with False no dialog ever opens.
        :param replace: replace the volume's previous results without asking.
        :param progressCallback: ``f(fraction, stage)``.
        :param cancel: callable returning True, or a threading.Event, to stop early.
        :return: ChestCTMTLMRML ResultNodes (folder_item, segmentation, reconstruction, rois,
            table, classification_table), or None if the user declined (to replace previous
            results, or to install missing packages).
        :raises ResultsExistError, errors.InputError, errors.ModelError, errors.Cancelled ...:
            in every error case the scene is left as it was.
        """
        if inputVolume is None:
            raise errors.InputError("no input volume given")
        problem = self.inputProblem(inputVolume)
        if problem:
            raise errors.InputError(problem)
        ask = interactive and self._guiAvailable()
        if not self.ensurePythonPackages(askConfirmation=ask):
            return None  # the user declined to install what the analysis needs
        if self.hasResults(inputVolume) and not replace:
            if not ask:
                raise ResultsExistError("'{}' already has ChestCTMTL results (use replace=True)"
                                        .format(inputVolume.GetName()))
            if not slicer.util.confirmYesNoDisplay(
                    "'{}' already has ChestCTMTL results. Replace them?".format(inputVolume.GetName()),
                    windowTitle="ChestCTMTL"):
                return None
            replace = True
        start = time.perf_counter()
        ct = self.volumeToCT(inputVolume)
        result = self.analyzeCT(ct, model=model, device=device, progressCallback=progressCallback,
                                cancel=cancel, createSegmentation=createSegmentation,
                                createReconstruction=createReconstruction,
                                createDetections=createDetections, scoreThreshold=scoreThreshold)
        if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
            raise errors.Cancelled()
        if progressCallback is not None:
            progressCallback(1.0, "Adding results to the scene")
        created = self.createResultNodes(inputVolume, result, replace=replace,
                                         createSegmentation=createSegmentation,
                                         createReconstruction=createReconstruction,
                                         createDetections=createDetections)
        logging.info("ChestCTMTL: analysed %s in %.1f s (%s, %d findings)", inputVolume.GetName(),
                     time.perf_counter() - start, result.predicted_class, len(result.findings))
        return created

    # -------------------------------------------------------------------- display (GUI only)
    def showResults(self, inputVolume, resultNodes) -> None:
        """Show the CT with the segmentation overlay; no-op without the application's views."""
        if not self._guiAvailable() or resultNodes is None:
            return
        slicer.util.setSliceViewerLayers(background=inputVolume, foreground=None, fit=True)
        segmentation = getattr(resultNodes, "segmentation", None)
        if segmentation is not None and segmentation.GetDisplayNode():
            display = segmentation.GetDisplayNode()
            display.SetVisibility(True)
            display.SetVisibility2DFill(True)
            display.SetVisibility2DOutline(True)

    def compareReconstruction(self, inputVolume, show: bool = True) -> None:
        """One click to compare: the reconstruction as foreground over the CT at 50 % opacity."""
        nodes = self.resultNodes(inputVolume)
        recon = getattr(nodes, "reconstruction", None) if nodes else None
        if recon is None or not self._guiAvailable():
            return
        if show:
            slicer.util.setSliceViewerLayers(background=inputVolume, foreground=recon,
                                             foregroundOpacity=0.5)
        else:
            slicer.util.setSliceViewerLayers(background=inputVolume, foreground=None)

    def showSegmentation3D(self, inputVolume, show: bool = True) -> None:
        nodes = self.resultNodes(inputVolume)
        segmentation = getattr(nodes, "segmentation", None) if nodes else None
        if segmentation is None:
            return
        if show:
            segmentation.CreateClosedSurfaceRepresentation()
        display = segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility3D(bool(show))

    def centerOnFinding(self, roi) -> List[float]:
        """Centre every slice view on the finding's ROI; returns the RAS centre."""
        center = [0.0, 0.0, 0.0]
        roi.GetCenterWorld(center)
        from ChestCTMTLMRML import headless

        markupsLogic = headless.get_logic("Markups")
        markupsLogic.JumpSlicesToLocation(center[0], center[1], center[2], True)
        return center

    # -------------------------------------------------------------------- review
    def findingReview(self, roi):
        """(status, note) of one finding ROI."""
        from ChestCTMTLMRML import review

        return review.get_finding_status(roi)

    def setFindingStatus(self, roi, status: str, note: Optional[str] = None) -> None:
        from ChestCTMTLMRML import review

        review.set_finding_status(roi, status, note)

    def saveReview(self, inputVolume, mrbPath) -> Dict[str, Path]:
        """Write the session (.mrb) and the report (JSON, Markdown, CSV) next to it."""
        from ChestCTMTLMRML import review

        return review.save_review(self._scene(), inputVolume, mrbPath)

    def loadReview(self) -> dict:
        """Re-apply the review state stored in a loaded scene (colours, table status column)."""
        from ChestCTMTLMRML import review

        return review.load_review(self._scene())

    def resultsSummary(self, inputVolume) -> Optional[dict]:
        """What the panel shows for a volume: verdict, probabilities, findings with review state."""
        if inputVolume is None:
            return None
        from ChestCTMTLMRML import review

        return review.results_summary(self._scene(), inputVolume)


#
# ChestCTMTLTest
#


class ChestCTMTLTest(ScriptedLoadableModuleTest):
    """Self-test on real MRML and a real chest CT (runs in Slicer and under pytest).

    Data: a few slices of LIDC-IDRI-0001 (DICOM, read by Slicer's own reader) from
    ChestCTMTLLib.paths.data_root(); inside Slicer, when that is absent, Sample Data's CTChest.
    The model is a freshly created untrained one: this tests the plumbing (nodes, geometry,
    terminology, replace, cancel, failure), not the model's accuracy.
    """

    N_SLICES = 8

    def setUp(self):
        slicer.mrmlScene.Clear()
        self._tmp = tempfile.TemporaryDirectory(prefix="ChestCTMTLTest-")

    def tearDown(self):
        self._tmp.cleanup()

    def runTest(self):
        for test in (self.test_ChestCTMTL_ResultsReplaceCancel, self.test_ChestCTMTL_Review):
            self.setUp()
            try:
                test()
            finally:
                self.tearDown()

    # ---------------------------------------------------------------- helpers
    def _model(self) -> Path:
        from ChestCTMTLLib import modelio

        return modelio.create_untrained_model_folder(Path(self._tmp.name) / "model", seed=0)

    def _loadRealCT(self, name: str, first: int, count: int):
        """``count`` consecutive real CT slices from slice ``first`` as a volume node."""
        from ChestCTMTLLib import paths

        base = paths.data_root() / "lidc" / "LIDC-IDRI-0001"
        if base.is_dir():
            from ChestCTMTLLib.volume_io import find_dicom_series
            from ChestCTMTLMRML import headless

            series = find_dicom_series(base)
            if series:
                names = series[0][1][first:first + count]
                files = vtk.vtkStringArray()
                for fileName in names:
                    files.InsertNextValue(fileName)
                return headless.get_logic("Volumes").AddArchetypeVolume(names[0], name, 0, files)
        if getattr(slicer, "app", None) is not None:
            import SampleData

            full = SampleData.downloadSample("CTChest")
            cropped = self._cropped(full, first, count, name)
            slicer.mrmlScene.RemoveNode(full)
            return cropped
        raise unittest.SkipTest("real chest CT not available: {} is missing (set CHESTCTMTL_DATA)"
                                .format(base))

    @staticmethod
    def _cropped(volume, k0: int, n: int, name: str):
        import numpy as np

        array = slicer.util.arrayFromVolume(volume)[k0:k0 + n].copy()
        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(m)
        ijkToRas = slicer.util.arrayFromVTKMatrix(m)
        ijkToRas[:3, 3] = (ijkToRas @ np.array([0.0, 0.0, float(k0), 1.0]))[:3]
        return slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRas, name=name,
                                              nodeClassName="vtkMRMLScalarVolumeNode")

    @staticmethod
    def _counts(scene):
        """(nodes, subject-hierarchy items): what "the scene is unchanged" is checked against."""
        sh = scene.GetSubjectHierarchyNode()
        items = vtk.vtkIdList()
        sh.GetItemChildren(sh.GetSceneItemID(), items, True)
        return scene.GetNumberOfNodes(), items.GetNumberOfIds()

    @staticmethod
    def _matrix(node):
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        return slicer.util.arrayFromVTKMatrix(m)

    # ---------------------------------------------------------------- tests
    def test_ChestCTMTL_ResultsReplaceCancel(self):
        import numpy as np

        self.delayDisplay("Loading real chest CT slices")
        volumeA = self._loadRealCT("CT-A", 60, self.N_SLICES)
        volumeB = self._loadRealCT("CT-B", 80, self.N_SLICES)
        self.assertIsNotNone(volumeA)
        self.assertIsNotNone(volumeB)
        voxelsA = np.array(slicer.util.arrayFromVolume(volumeA), copy=True)
        model = self._model()
        logic = ChestCTMTLLogic()
        self.assertIsNone(logic.inputProblem(volumeA, thorough=True))

        self.delayDisplay("Analysing CT-A")
        fractions = []
        nodesA = logic.process(volumeA, model=model, device="cpu", interactive=False,
                               progressCallback=lambda f, s: fractions.append(f))
        self.assertEqual(fractions[-1], 1.0)
        self.assertTrue(all(b >= a for a, b in zip(fractions, fractions[1:])), "progress went back")
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        self.assertEqual(sh.GetItemName(nodesA.folder_item), "ChestCTMTL \u2013 CT-A")
        self.assertIn(sh.GetItemAttribute(nodesA.folder_item, resultnodes.PREDICTED_CLASS_ATTR),
                      CLASS_NAMES)
        probabilities = [float(sh.GetItemAttribute(nodesA.folder_item,
                                                   resultnodes.PROBABILITY_ATTR_PREFIX + c))
                         for c in CLASS_NAMES]
        self.assertAlmostEqual(sum(probabilities), 1.0, places=4)
        self.assertTrue(nodesA.segmentation.IsA("vtkMRMLSegmentationNode"))
        self.assertTrue(nodesA.reconstruction.IsA("vtkMRMLScalarVolumeNode"))
        self.assertTrue(nodesA.table.IsA("vtkMRMLTableNode"))
        self.assertEqual(nodesA.table.GetNumberOfRows(), len(nodesA.rois))
        for node in nodesA.data_nodes():
            self.assertEqual(sh.GetItemParent(sh.GetItemByDataNode(node)), nodesA.folder_item)
        # geometry: results live on V's grid
        np.testing.assert_allclose(self._matrix(nodesA.reconstruction), self._matrix(volumeA), atol=1e-6)
        self.assertEqual(slicer.util.arrayFromVolume(nodesA.reconstruction).shape, voxelsA.shape)
        self.assertIs(nodesA.segmentation.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()), volumeA)
        # terminology: one coded segment per lesion type
        segmentation = nodesA.segmentation.GetSegmentation()
        self.assertEqual(sorted(segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
                                for i in range(segmentation.GetNumberOfSegments())),
                         sorted(LESION_TYPES))
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetSegment(segmentation.GetNthSegmentID(i))
            entry = segment.GetTerminology() if hasattr(segment, "GetTerminology") else \
                segment.GetTag(segment.GetTerminologyEntryTagName())
            self.assertTrue(entry and "~SCT^" in entry, "segment {} has no SNOMED-CT code: {!r}"
                            .format(segment.GetName(), entry))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumeA), voxelsA)

        self.delayDisplay("Re-running without replace is refused; the scene is unchanged")
        counts = self._counts(slicer.mrmlScene)
        with self.assertRaises(ResultsExistError):
            logic.process(volumeA, model=model, device="cpu", interactive=False)
        self.assertEqual(self._counts(slicer.mrmlScene), counts)

        self.delayDisplay("CT-B's results, then replacing CT-A's only")
        nodesB = logic.process(volumeB, model=model, device="cpu", interactive=False,
                               createReconstruction=False)
        self.assertIsNone(nodesB.reconstruction)
        oldA = [n.GetID() for n in nodesA.data_nodes()]
        nodesA2 = logic.process(volumeA, model=model, device="cpu", interactive=False, replace=True)
        for nodeId in oldA:
            self.assertIsNone(slicer.mrmlScene.GetNodeByID(nodeId), "old result {} kept".format(nodeId))
        for node in nodesB.data_nodes():
            self.assertIs(slicer.mrmlScene.GetNodeByID(node.GetID()), node, "CT-B's results changed")
        self.assertIs(logic.resultNodes(volumeA).segmentation, nodesA2.segmentation)
        self.assertIs(logic.resultNodes(volumeB).segmentation, nodesB.segmentation)

        self.delayDisplay("Cancel and failure leave the scene as it was")
        counts = self._counts(slicer.mrmlScene)
        polls = []

        def cancelAfterThreeChecks():
            polls.append(1)
            return len(polls) > 3

        with self.assertRaises(errors.Cancelled):
            logic.process(volumeA, model=model, device="cpu", interactive=False, replace=True,
                          cancel=cancelAfterThreeChecks)
        self.assertGreater(len(polls), 3)
        self.assertEqual(self._counts(slicer.mrmlScene), counts)
        with self.assertRaises(errors.ModelError):
            logic.process(volumeA, model=Path(self._tmp.name) / "no-such-model", device="cpu",
                          interactive=False, replace=True)
        self.assertEqual(self._counts(slicer.mrmlScene), counts)
        self.assertIs(logic.resultNodes(volumeA).segmentation, nodesA2.segmentation)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumeA), voxelsA)
        self.delayDisplay("Test passed")

    def test_ChestCTMTL_Review(self):
        """Review state survives save -> close -> load, and the report follows the segmentation.

        Uses a result with a known answer (one lesion box, one finding) on a real CT grid.
        """
        import json

        import numpy as np

        from ChestCTMTLLib.results import AnalysisResult, Finding, ModelIdentity

        self.delayDisplay("A known finding on real CT slices")
        volume = self._loadRealCT("CT-review", 60, self.N_SLICES)
        logic = ChestCTMTLLogic()
        ct = logic.volumeToCT(volume)
        k, j, i = ct.array.shape
        mask = np.zeros(ct.array.shape, np.uint8)
        lo, hi = (i // 2, j // 2, k // 2), (i // 2 + 5, j // 2 + 3, k // 2)  # 6 x 4 x 1 voxels
        mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = 1
        corners = ct.ijk_to_ras_points([[x, y, z] for x in (lo[0] - 0.5, hi[0] + 0.5)
                                        for y in (lo[1] - 0.5, hi[1] + 0.5) for z in (lo[2] - 0.5, hi[2] + 0.5)])
        voxelMm3 = float(np.prod(ct.spacing))
        finding = Finding(id="F1", type="nodule-mass", score=0.8,
                          center_ras=list((corners.min(0) + corners.max(0)) / 2),
                          size_ras=list(corners.max(0) - corners.min(0)), ijk_min=list(lo),
                          ijk_max=list(hi), volume_mm3=24 * voxelMm3)
        result = AnalysisResult(
            volume=ct, class_probabilities={"non-covid": 0.1, "covid": 0.2, "cancer": 0.7},
            predicted_class="cancer", slice_probabilities=None, analysed_slices=None,
            lesion_masks={t: (mask if t == "nodule-mass" else np.zeros_like(mask)) for t in LESION_TYPES},
            reconstruction_hu=None, findings=[finding],
            model=ModelIdentity("self-test", "0", "0" * 64))
        resultNodes = logic.createResultNodes(volume, result)
        self.assertEqual(len(resultNodes.rois), 1)
        roi = resultNodes.rois[0]
        logic.setFindingStatus(roi, "accepted", "solid nodule")
        self.assertEqual(logic.findingReview(roi), ("accepted", "solid nodule"))

        self.delayDisplay("Save, close, load")
        paths = logic.saveReview(volume, Path(self._tmp.name) / "review.mrb")
        report = json.loads(paths["json"].read_text(encoding="utf-8"))
        self.assertEqual(report["verdict"], "cancer")
        self.assertAlmostEqual(report["lesion_volumes_mm3"]["nodule-mass"], 24 * voxelMm3, places=0)
        self.assertEqual(report["findings"][0]["status"], "accepted")
        slicer.mrmlScene.Clear()
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode"), 0)
        self.assertTrue(slicer.mrmlScene.ReadFromMRB(str(paths["mrb"])))
        state = logic.loadReview()
        self.assertEqual(list(state.values()), [("accepted", "solid nodule")])
        volume = slicer.mrmlScene.GetFirstNodeByName("CT-review")
        summary = logic.resultsSummary(volume)
        self.assertEqual([(f["id"], f["status"], f["note"]) for f in summary["findings"]],
                         [("F1", "accepted", "solid nodule")])

        self.delayDisplay("Edit the segmentation: the report follows")
        segmentation = logic.resultNodes(volume).segmentation
        edited = np.zeros(mask.shape, np.uint8)
        edited[lo[2], lo[1]:hi[1] + 1, lo[0]:lo[0] + 3] = 1  # the reviewer keeps 3 x 4 voxels
        slicer.util.updateSegmentBinaryLabelmapFromArray(edited, segmentation, "nodule-mass", volume)
        report = json.loads(logic.saveReview(volume, Path(self._tmp.name) / "edited.mrb")["json"]
                            .read_text(encoding="utf-8"))
        self.assertAlmostEqual(report["lesion_volumes_mm3"]["nodule-mass"], 12 * voxelMm3, places=0)
        self.assertAlmostEqual(report["findings"][0]["volume_mm3_segmentation"], 12 * voxelMm3, places=0)
        self.delayDisplay("Test passed")
