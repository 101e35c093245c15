"""ChestCTMTL: multi-task analysis of a chest CT inside 3D Slicer (research use only).

Structure follows Slicer's scripted-module template: the module class (metadata), a typed
parameter node, a thin Qt widget, the Logic and the self-test. The numbers come from
:mod:`ChestCTMTLLib` (pure Python + PyTorch), the MRML nodes, display calls, package
installation and the analysis thread from :mod:`ChestCTMTLMRML` (``logic.AnalysisLogic`` does
all processing); this file connects them to the panel. Nothing imported here needs torch, so
the module always loads, even in a Slicer without PyTorch, and offers to install it on Analyze.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Annotated, Dict, Optional

import ctk  # noqa: F401 - as in Slicer's module template
import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import *  # noqa: F401,F403 - Slicer's template does the same
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import (Choice, SlicerParameterNamePropertyName, WithinRange,
                                         parameterNodeWrapper)

from slicer import vtkMRMLScalarVolumeNode

# Slicer puts the module's folder on sys.path; a script that loads this file by path may not.
_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)

from ChestCTMTLLib import errors, sample_data  # noqa: E402  (no torch in any of these)
from ChestCTMTLLib.options import DEVICES, FALLBACK_SCORE_THRESHOLD, RANGES, AnalysisOptions  # noqa: E402
from ChestCTMTLMRML import nodes as resultnodes  # noqa: E402  (slicer/vtk only, no Qt)
from ChestCTMTLMRML import review  # noqa: E402
from ChestCTMTLMRML.job import AnalysisJob  # noqa: E402,F401 - the Logic's startAnalysis returns one
from ChestCTMTLMRML.logic import AnalysisLogic  # noqa: E402
from ChestCTMTLMRML.selftest import SelfTestCases  # noqa: E402

#: The three class probabilities as the panel labels them.
CLASS_LABELS = {"non-covid": "Non-COVID", "covid": "COVID-19", "cancer": "Cancer"}

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
Built on 3D Slicer, PyTorch, MONAI, SimpleITK and SciPy. Development data: LIDC-IDRI
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

    Analysis runs in a worker thread (:class:`AnalysisJob`, no MRML access) while a zero-delay
    single-shot QTimer on the main thread shows its progress and briefly yields the Python GIL
    to it; nodes are created on the main thread once the numbers are ready.
    """

    #: Slicer's main thread holds the GIL while idle in the Qt event loop: each poll sleeps
    #: this long so the worker's Python code runs, then the timer fires again at once.
    POLL_YIELD_S = 0.002

    def __init__(self, parent=None) -> None:
        # state first: without a parent, Slicer's base __init__ calls setup() itself
        # (Base/Python/slicer/ScriptedLoadableModule.py, v5.8.0 to v5.12.3)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobVolume = None
        self._jobOptions = {}
        self._finishing = False
        self._pollTimer = None
        self._updatingFindings = False
        self._shownNote = None  # (ROI id, stored note) last written into the note field
        ScriptedLoadableModuleWidget.__init__(self, parent)

    # -------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Called once, when the module is first shown. Needs no torch: the panel always comes
        up, and Analyze offers to install what is missing."""
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
        low, high = RANGES["score_threshold"]  # the one range (the .ui file's is replaced)
        self.ui.scoreThresholdSliderWidget.minimum = low
        self.ui.scoreThresholdSliderWidget.maximum = high
        self._refreshEnvironment()
        try:
            self.logic.loadTerminology()
        except Exception:  # noqa: BLE001 - the selector then lacks our codes; segments keep theirs
            logging.warning("ChestCTMTL: terminology context not loaded", exc_info=True)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setSingleShot(True)
        self._pollTimer.setInterval(0)
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
        self.ui.saveDicomButton.connect("clicked(bool)", self.onSaveDicom)
        self.ui.compareReconstructionButton.connect("toggled(bool)", self.onCompareReconstruction)
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3D)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._job is not None:
            self._job.cancel()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module: the panel lets go of the node."""
        self.setParameterNode(None)

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
        to the parameter node only while the module is shown (enter() binds it otherwise).
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
        """Bind the panel to ``inputParameterNode`` (None: unbind).

        ``connectParametersToGui`` returns a tag on every supported Slicer, while
        ``connectGui`` returns None on 5.8.0/5.8.1 (Base/Python/slicer/parameterNodeWrapper/
        wrapper.py, fixed in v5.10.0), where ``disconnectGui(None)`` then leaves the old
        connectors writing into the node: they piled up and reset the device to "auto".
        """
        same = (inputParameterNode is not None and self._parameterNode is not None
                and inputParameterNode.parameterNode is self._parameterNode.parameterNode)
        if same and self._parameterNodeGuiTag is not None:
            self._onParameterNodeModified()
            return
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(self._guiMapping())
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _guiMapping(self) -> Dict[str, object]:
        """Parameter name -> widget, from the widgets' ``SlicerParameterName`` property (what
        ``connectGui`` collects itself)."""
        mapping = {}
        for widget in vars(self.ui).values():
            name = widget.property(SlicerParameterNamePropertyName) if hasattr(widget, "property") else None
            if name:
                mapping[name] = widget
        return mapping

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode:
            # modelId has no GUI connector (the combo lists registry entries): follow it by hand,
            # so a loaded scene or a script that sets it is shown too (signals are blocked).
            self._selectModelInCombo(self._parameterNode.modelId)
        self._updateAnalyzeButton()
        self.updateResults()

    # -------------------------------------------------------------------- models, device
    def _refreshEnvironment(self) -> None:
        """Model list and device line; again after packages were installed."""
        self._populateModels()
        self.ui.deviceInfoLabel.text = self.logic.deviceDescription()
        if self._parameterNode:
            self._selectModelInCombo(self._parameterNode.modelId)
            self._updateAnalyzeButton()

    def _populateModels(self) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        problem = None
        try:
            models = self.logic.availableModels()
        except Exception as e:  # noqa: BLE001 - a damaged registry must not leave a dead panel
            models, problem = [], str(e)
        for entry in models:
            label = "{} (v{}){}".format(entry["id"], entry.get("version", "?"),
                                        " - default" if entry.get("default") else "")
            combo.addItem(label, entry["id"])
            combo.setItemData(combo.count - 1, entry.get("tooltip", ""), qt.Qt.ToolTipRole)
        if not models:
            self.ui.modelInfoLabel.text = problem or (
                "No model is registered in the extension (Resources/models.json). "
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
            self.ui.analyzeButton.enabled = not self._finishing
            return
        self.ui.analyzeButton.text = "Analyze"
        volume = self._currentVolume()
        problem = self.logic.inputProblem(volume)
        if problem is None and self.ui.modelComboBox.count == 0:
            problem = "No model is installed."
        self.ui.analyzeButton.enabled = problem is None
        self.ui.analyzeButton.toolTip = problem or "Analyse the selected CT."
        self.ui.inputStatusLabel.text = problem or ""

    def onAnalyzeButton(self) -> None:
        if self._job is not None:
            if not self._finishing:  # a click queued while the results are added is dropped
                self._job.cancel()
                self.ui.stageLabel.text = "Cancelling..."
            return
        p = self._parameterNode
        volume = p.inputVolume
        # no wait cursor around the install offer: its dialogs and progress must stay usable
        with slicer.util.tryWithErrorDisplay("Failed to install the Python packages ChestCTMTL needs."):
            needed = self.logic.missingPythonPackages()
            if not self.logic.ensurePythonPackages(askConfirmation=True):
                return
            if needed:
                self._refreshEnvironment()
        if self.ui.modelComboBox.count == 0:
            return
        with slicer.util.tryWithErrorDisplay("Failed to start the analysis.", waitCursor=True):
            problem = self.logic.inputProblem(volume, thorough=True)
            if problem:
                raise ValueError(problem)
        if self.logic.hasResults(volume) and not slicer.util.confirmYesNoDisplay(
                "'{}' already has ChestCTMTL results. Replace them?".format(volume.GetName()),
                windowTitle="ChestCTMTL"):
            return
        with slicer.util.tryWithErrorDisplay("Failed to start the analysis.", waitCursor=True):
            ct = self.logic.volumeToCT(volume)
            options = dict(createSegmentation=p.createSegmentation,
                           createReconstruction=p.createReconstruction,
                           createDetections=p.createDetections)
            job = self.logic.startAnalysis(ct, model=p.modelId or None, device=p.device,
                                           scoreThreshold=p.scoreThreshold,
                                           lobes=self.logic.sceneLobes(volume), **options)
            self._job, self._jobVolume, self._jobOptions = job, volume, options
        if self._job is None:
            return
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.stageLabel.text = "Starting..."
        self._updateAnalyzeButton()
        self._pollTimer.start()

    def _onPollJob(self) -> None:
        job = self._job
        if job is None or self._finishing:
            return
        time.sleep(self.POLL_YIELD_S)
        fraction, stage = job.progress
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.stageLabel.text = stage
        if not job.done:
            self._pollTimer.start()
            return
        self._finishing = True  # the job stays set, so a queued click cannot start another
        self._updateAnalyzeButton()
        try:
            self._finishJob(job, self._jobVolume, self._jobOptions)
        finally:
            self._job, self._jobVolume, self._jobOptions = None, None, {}
            self._finishing = False
            self.ui.progressBar.visible = False
            self._updateAnalyzeButton()
            self.updateResults()

    def _finishJob(self, job, volume, options) -> None:
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
                nodes = self.logic.createResultNodes(volume, job.result, replace=True, **options)
                self._setChecked(self.ui.compareReconstructionButton, False)  # new results: CT only
                self.logic.showResults(volume, nodes)
        except Exception:  # already shown (and re-raised) by tryWithErrorDisplay
            self.ui.stageLabel.text = "Failed to add the results to the scene."
            raise
        r = job.result
        self.ui.stageLabel.text = "Done in {:.1f} s on {}: {} finding(s).".format(
            r.timings_s.get("total", job.elapsed), r.device, len(r.findings))

    @staticmethod
    def _setChecked(button, checked: bool) -> None:
        wasBlocked = button.blockSignals(True)
        button.checked = checked
        button.blockSignals(wasBlocked)

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
            self.ui.verdictLabel.toolTip = ""
            for bar in bars.values():
                bar.value = 0
            findings = []
        else:
            verdict = summary.get("predicted_class")
            text = "<b>{}</b> (model {} v{}) - research use only".format(
                CLASS_LABELS.get(verdict, verdict or "?"), summary.get("model_id", "?"),
                summary.get("model_version", "?"))
            tooltip = summary.get("verdict_evidence") or ""
            involved = review.involvement_line(summary.get("involvement"))
            if involved:  # from the analysis; edits to the segmentation do not change it
                text += "<br>Lungs involved: {}".format(involved)
                tooltip += ("\n" if tooltip else "") + "Lungs involved (from the analysis): " + involved
            self.ui.verdictLabel.text, self.ui.verdictLabel.toolTip = text, tooltip
            for name, bar in bars.items():
                bar.value = int(round(100 * float(summary["probabilities"].get(name, 0.0))))
            findings = summary["findings"]
        hasReconstruction = summary is not None and summary.get("reconstruction") is not None
        if not hasReconstruction:
            self._setChecked(self.ui.compareReconstructionButton, False)
        self.ui.compareReconstructionButton.enabled = hasReconstruction
        self.ui.show3DButton.enabled = summary is not None and summary.get("segmentation") is not None
        self.ui.saveReviewButton.enabled = summary is not None
        self.ui.saveDicomButton.enabled = summary is not None and self.logic.isDicomVolume(
            self._currentVolume())
        self._fillFindings(findings)
        self._updateReviewControls()

    def _fillFindings(self, findings) -> None:
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

    def _selectedRoiId(self):
        items = self.ui.findingsTableWidget.selectedItems()
        return items[0].data(qt.Qt.UserRole) if items else None

    def _selectedRoi(self):
        roiId = self._selectedRoiId()
        return slicer.mrmlScene.GetNodeByID(roiId) if roiId else None

    def _updateReviewControls(self) -> None:
        """Review buttons follow the selection; the note field shows the selected finding's
        stored note, rewritten only when the selection or that note changed, so a note being
        typed survives unrelated panel updates."""
        roi = self._selectedRoi()
        for button in (self.ui.acceptFindingButton, self.ui.rejectFindingButton,
                       self.ui.uncertainFindingButton, self.ui.findingNoteLineEdit):
            button.enabled = roi is not None
        shown = (roi.GetID(), self.logic.findingReview(roi)[1]) if roi else (None, "")
        if shown == self._shownNote:
            return
        self._shownNote = shown
        wasBlocked = self.ui.findingNoteLineEdit.blockSignals(True)
        self.ui.findingNoteLineEdit.text = shown[1]
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
            written = dict(self.logic.saveReview(volume, path))
            if self.logic.isDicomVolume(volume) and not self.logic.missingDicomPackages():
                # a CT from DICOM: the review also as SEG + SR beside the bundle, in the database
                objects, _ = self.logic.saveReviewDicom(volume, path[:-len(".mrb")] + "-dicom")
                written.update({"dicom " + p.name: p for p in objects.paths})
        slicer.util.infoDisplay("Review saved:\n" + "\n".join(str(p) for p in written.values()),
                                windowTitle="ChestCTMTL")

    def onSaveDicom(self) -> None:
        volume = self._currentVolume()
        if volume is None:
            return
        missing = self.logic.missingDicomPackages()
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                    "DICOM SEG and SR need these Python packages:\n\n  {}\n\nInstall them now?"
                    .format("\n  ".join(missing)), windowTitle="ChestCTMTL"):
                return
            with slicer.util.tryWithErrorDisplay("Installing the DICOM packages failed."):
                self.logic.installDicomPackages()
            if self.logic.missingDicomPackages():
                return
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                     "Folder for the DICOM SEG and SR",
                                                     qt.QDir.homePath())
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Failed to write the DICOM objects.", waitCursor=True):
            written, sendError = self.logic.saveReviewDicom(volume, folder,
                                                            sendTo=self.ui.pacsLineEdit.text.strip())
            paths = "\n".join(str(p) for p in written.paths)
            if sendError:
                slicer.util.errorDisplay("Written and imported, but not sent (the files are kept):\n"
                                         "{}\n\n{}".format(sendError, paths), windowTitle="ChestCTMTL")
            else:
                slicer.util.infoDisplay("DICOM SEG and SR written{}:\n{}".format(
                    " and sent" if self.ui.pacsLineEdit.text.strip() else "", paths),
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
# ChestCTMTLLogic
#


class ChestCTMTLLogic(ScriptedLoadableModuleLogic, AnalysisLogic):
    """All processing (:class:`ChestCTMTLMRML.logic.AnalysisLogic`: input checks, analysis,
    result nodes, display, review) plus the module's parameter node. Usable from scripts and
    batch runs without the GUI and without ``slicer.modules.chestctmtl`` being registered.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        AnalysisLogic.__init__(self)

    def getParameterNode(self):
        """The module's parameter node; a new one starts at its model's calibrated threshold."""
        node = super().getParameterNode()
        fresh = not node.HasParameter("scoreThreshold")
        parameters = ChestCTMTLParameterNode(node)
        if fresh:
            parameters.scoreThreshold = self.calibratedScoreThreshold(parameters.modelId or None)
        return parameters


#
# ChestCTMTLTest
#


class ChestCTMTLTest(SelfTestCases, ScriptedLoadableModuleTest):
    """Self-test on real MRML and a real chest CT (runs in Slicer, in ctest and under pytest);
    the cases are :class:`ChestCTMTLMRML.selftest.SelfTestCases`."""

    def makeLogic(self) -> ChestCTMTLLogic:
        return ChestCTMTLLogic()

    def makeWidget(self):
        """The module's panel: Slicer's own instance in the application, else a new one."""
        if getattr(slicer, "app", None) is not None and hasattr(slicer.util, "getModuleWidget"):
            try:
                return slicer.util.getModuleWidget("ChestCTMTL")
            except Exception:  # noqa: BLE001 - not registered (module loaded by path)
                pass
        return ChestCTMTLWidget()  # RuntimeError without Qt (headless stand-ins)
