"""The module's self-test cases (run by ``ChestCTMTLTest`` in ChestCTMTL.py): real MRML, a real
chest CT, an untrained model.

Kept here, without a TestCase base class, so the module file stays the thin wiring Slicer's
template describes; the module's ``ChestCTMTLTest`` mixes these into Slicer's
``ScriptedLoadableModuleTest`` and supplies ``makeLogic()``. What each case can show depends on
where it runs, and the cases say so: the Logic cases run in Slicer, in ``--no-main-window`` ctest
runs and under pytest's stand-ins; the panel case needs the module's widget (Slicer's
application, or the Qt stand-in of Testing/).
"""
from __future__ import annotations

import json
import tempfile
import time
import unittest
from pathlib import Path

import numpy as np
import slicer
import vtk

from ChestCTMTLLib import errors, paths
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES, AnalysisResult, Finding, ModelIdentity
from ChestCTMTLLib.volume_io import find_dicom_series

from . import dependencies, headless, nodes, terminology

#: What the analysis cases need beyond what Slicer bundles; without them they are skipped.
ANALYSIS_PACKAGES = ("torch", "safetensors")


def segment_terminology(segment) -> str:
    """A segment's serialised terminology entry on every supported Slicer.

    ``vtkSegment::GetTerminology()`` exists from 5.10 (Libs/vtkSegmentationCore/vtkSegment.h,
    v5.10.0); 5.8 has only ``bool GetTag(std::string tag, std::string& value)`` (v5.8.0), which
    Python calls with a ``vtk.reference``. No version has a one-argument ``GetTag``.
    """
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology()
    value = vtk.reference("")
    if not segment.GetTag(segment.GetTerminologyEntryTagName(), value):
        return ""
    return str(value)


def skip_reason() -> str:
    """Why the analysis cases cannot run here ("" when they can)."""
    missing = [name for name in dependencies.missing_packages() if name in ANALYSIS_PACKAGES]
    if missing:
        return "Python packages missing: {} (the module offers to install them on Analyze)".format(
            ", ".join(missing))
    return ""


class SelfTestCases:
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

    def makeLogic(self):  # pragma: no cover - supplied by the module's ChestCTMTLTest
        raise NotImplementedError

    def makeWidget(self):  # pragma: no cover - supplied by the module's ChestCTMTLTest
        raise NotImplementedError

    def runTest(self):
        """Every case; a case whose needs are not met here is skipped with the reason (a
        SkipTest inside unittest, as ctest runs it; a logged line from Slicer's Reload-and-Test)."""
        skipped = []
        cases = (self.test_ChestCTMTL_Terminology, self.test_ChestCTMTL_ResultsReplaceCancel,
                 self.test_ChestCTMTL_Review, self.test_ChestCTMTL_Panel)
        for test in cases:
            self.setUp()
            try:
                test()
            except unittest.SkipTest as e:
                skipped.append("{}: {}".format(test.__name__, e))
                self.delayDisplay("Skipped " + skipped[-1])
            finally:
                self.tearDown()
        if skipped and len(skipped) == len(cases):
            raise unittest.SkipTest("; ".join(skipped))

    # ---------------------------------------------------------------- helpers
    def _model(self) -> Path:
        from ChestCTMTLLib import modelio  # imports torch: only once skip_reason() is ""

        return modelio.create_untrained_model_folder(Path(self._tmp.name) / "model", seed=0)

    def _loadRealCT(self, name: str, first: int, count: int):
        """``count`` consecutive real CT slices from slice ``first`` as a volume node."""
        base = paths.data_root() / "lidc" / "LIDC-IDRI-0001"
        if base.is_dir():
            series = find_dicom_series(base)
            if series:
                names = series[0][1][first:first + count]
                files = vtk.vtkStringArray()
                for fileName in names:
                    files.InsertNextValue(fileName)
                return headless.get_logic("Volumes").AddArchetypeVolume(names[0], name, 0, files)
        if getattr(slicer, "app", None) is not None:
            import SampleData

            try:
                full = SampleData.downloadSample("CTChest")
            except Exception as e:  # no network, or the download server is down
                raise unittest.SkipTest("real chest CT not available: Sample Data's CTChest could "
                                        "not be downloaded ({})".format(e)) from None
            if full is None:
                raise unittest.SkipTest("real chest CT not available: Sample Data's CTChest could "
                                        "not be downloaded")
            cropped = self._cropped(full, first, count, name)
            slicer.mrmlScene.RemoveNode(full)
            return cropped
        raise unittest.SkipTest("real chest CT not available: {} is missing (set CHESTCTMTL_DATA)"
                                .format(base))

    @staticmethod
    def _cropped(volume, k0: int, n: int, name: str):
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
    def test_ChestCTMTL_Terminology(self):
        """Our terminology context is selectable in Slicer's terminology selector."""
        logic = headless.get_logic("Terminologies")
        if logic is None:
            raise unittest.SkipTest("no Terminologies module logic in this application")
        terminology.ensure_loaded(logic)
        self.assertTrue(terminology.is_loaded(logic), "terminology context not loaded")

    def test_ChestCTMTL_ResultsReplaceCancel(self):
        if skip_reason():
            raise unittest.SkipTest(skip_reason())
        self.delayDisplay("Loading real chest CT slices")
        volumeA = self._loadRealCT("CT-A", 60, self.N_SLICES)
        volumeB = self._loadRealCT("CT-B", 80, self.N_SLICES)
        self.assertIsNotNone(volumeA)
        self.assertIsNotNone(volumeB)
        voxelsA = np.array(slicer.util.arrayFromVolume(volumeA), copy=True)
        model = self._model()
        logic = self.makeLogic()
        self.assertIsNone(logic.inputProblem(volumeA, thorough=True))

        self.delayDisplay("Analysing CT-A")
        fractions = []
        nodesA = logic.process(volumeA, model=model, device="cpu", interactive=False,
                               progressCallback=lambda f, s: fractions.append(f))
        self.assertEqual(fractions[-1], 1.0)
        self.assertTrue(all(b >= a for a, b in zip(fractions, fractions[1:])), "progress went back")
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        self.assertEqual(sh.GetItemName(nodesA.folder_item), "ChestCTMTL \u2013 CT-A")
        self.assertIn(sh.GetItemAttribute(nodesA.folder_item, nodes.PREDICTED_CLASS_ATTR),
                      CLASS_NAMES)
        probabilities = [float(sh.GetItemAttribute(nodesA.folder_item,
                                                   nodes.PROBABILITY_ATTR_PREFIX + c))
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
            entry = segment_terminology(segment)
            self.assertTrue(entry and "~SCT^" in entry, "segment {} has no SNOMED-CT code: {!r}"
                            .format(segment.GetName(), entry))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumeA), voxelsA)

        self.delayDisplay("Re-running without replace is refused; the scene is unchanged")
        counts = self._counts(slicer.mrmlScene)
        with self.assertRaises(nodes.ResultsExistError):
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
        self.delayDisplay("A known finding on real CT slices")
        volume = self._loadRealCT("CT-review", 60, self.N_SLICES)
        logic = self.makeLogic()
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

    # ---------------------------------------------------------------- the panel
    def _inSlicer(self) -> bool:
        return hasattr(getattr(slicer, "modules", None), "chestctmtl")

    def _show(self, widget, shown: bool) -> None:
        """What switching modules does: Slicer's module selector in the application, the
        widget's enter()/exit() otherwise."""
        if self._inSlicer():
            slicer.util.selectModule("ChestCTMTL" if shown else "Data")
            return
        widget.parent.isEntered = shown
        widget.enter() if shown else widget.exit()

    @staticmethod
    def _runEventLoop(widget, timeout: float = 600.0) -> list:
        """Process events until the panel's analysis is over; the progress bar values seen."""
        values, end = [], time.monotonic() + timeout
        while widget._job is not None:
            if time.monotonic() > end:
                raise AssertionError("the analysis did not finish in {:.0f} s".format(timeout))
            slicer.app.processEvents()
            values.append(widget.ui.progressBar.value)
        return values

    def test_ChestCTMTL_Panel(self):
        """The panel as a user drives it: enter/exit/re-enter keeps the device, Analyze ->
        progress -> results, display buttons, Cancel, scene close mid-run, loading a .mrb.

        In Slicer this is the application's own panel (real Qt event loop, real views: the
        slice layers, 3D surfaces and jumps below are what a user sees). Under pytest it runs
        on Testing/qt_standin.py, which shows the wiring, not Qt's event loop or rendering.
        """
        if skip_reason():
            raise unittest.SkipTest(skip_reason())
        try:
            widget = self.makeWidget()
        except RuntimeError as e:  # no Qt: the headless stand-ins
            raise unittest.SkipTest("needs the module panel: {}".format(e)) from None
        logic = widget.logic
        self.delayDisplay("Panel: enter, choose the CPU, leave and come back")
        volumeA = self._loadRealCT("CT-panel-A", 60, self.N_SLICES)
        volumeB = self._loadRealCT("CT-panel-B", 80, self.N_SLICES)
        self._show(widget, True)
        widget.ui.inputVolumeSelector.setCurrentNode(volumeA)
        widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findText("cpu")
        self.assertEqual(widget._parameterNode.device, "cpu")
        for _ in range(2):
            self._show(widget, False)
            self._show(widget, True)
        self.assertEqual(widget._parameterNode.device, "cpu")
        self.assertEqual(widget.ui.deviceComboBox.currentText, "cpu")

        self.delayDisplay("Panel: Analyze, progress, results")
        self.assertTrue(widget.ui.analyzeButton.enabled, widget.ui.analyzeButton.toolTip)
        widget.ui.analyzeButton.click()
        self.assertEqual(widget.ui.analyzeButton.text, "Cancel")
        progress = self._runEventLoop(widget)
        self.assertTrue(widget.ui.stageLabel.text.startswith("Done in"), widget.ui.stageLabel.text)
        self.assertEqual(progress, sorted(progress))
        resultsA = logic.resultNodes(volumeA)
        self.assertIsNotNone(resultsA)
        self.assertIn("research use only", widget.ui.verdictLabel.text)

        self.delayDisplay("Panel: display buttons")
        composite = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        if composite is not None:  # the application's views (or a scene that has slice views)
            self.assertEqual(composite.GetBackgroundVolumeID(), volumeA.GetID())
            if resultsA.reconstruction is not None:
                widget.ui.compareReconstructionButton.checked = True
                self.assertEqual(composite.GetForegroundVolumeID(), resultsA.reconstruction.GetID())
                widget.ui.compareReconstructionButton.checked = False
                self.assertIsNone(composite.GetForegroundVolumeID())
        if resultsA.segmentation is not None:
            widget.ui.show3DButton.checked = True
            self.assertTrue(resultsA.segmentation.GetDisplayNode().GetVisibility3D())
            widget.ui.show3DButton.checked = False
        if widget.ui.findingsTableWidget.rowCount > 0:
            widget.ui.findingsTableWidget.selectRow(0)  # jumps the slice views to the finding
            self.assertTrue(widget.ui.acceptFindingButton.enabled)
            red = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
            if red is not None and red.GetOrientation() == "Axial":
                center = [0.0, 0.0, 0.0]
                widget._selectedRoi().GetCenterWorld(center)
                self.assertAlmostEqual(red.GetSliceOffset(), center[2],
                                       delta=max(volumeA.GetSpacing()) + 1.0)
        mrb = Path(self._tmp.name) / "panel.mrb"
        logic.saveReview(volumeA, mrb)

        self.delayDisplay("Panel: Cancel leaves the scene unchanged")
        widget.ui.inputVolumeSelector.setCurrentNode(volumeB)
        counts = self._counts(slicer.mrmlScene)
        widget.ui.analyzeButton.click()
        widget.ui.analyzeButton.click()
        self._runEventLoop(widget)
        self.assertEqual(widget.ui.stageLabel.text, "Cancelled; the scene is unchanged.")
        self.assertEqual(self._counts(slicer.mrmlScene), counts)

        self.delayDisplay("Panel: closing the scene during a run discards it")
        widget.ui.analyzeButton.click()
        slicer.mrmlScene.Clear(False)
        self._runEventLoop(widget)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 0)
        self.assertEqual(widget.ui.analyzeButton.text, "Analyze")

        self.delayDisplay("Panel: loading a saved review shows its results")
        self.assertTrue(slicer.mrmlScene.ReadFromMRB(str(mrb)))
        loaded = slicer.mrmlScene.GetFirstNodeByName("CT-panel-A")
        widget.ui.inputVolumeSelector.setCurrentNode(loaded)
        self.assertIn("research use only", widget.ui.verdictLabel.text)
        self._show(widget, False)
        self.delayDisplay("Test passed")

