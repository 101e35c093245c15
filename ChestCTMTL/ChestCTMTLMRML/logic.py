"""Everything the ChestCTMTL module does, without Qt: input checks, analysis (through
:mod:`ChestCTMTLLib`), result nodes, display calls and review (through this package).

``ChestCTMTL.py``'s ``ChestCTMTLLogic`` is this class plus the module's parameter node. It
works in the Slicer application on ``slicer.mrmlScene`` and outside it on a headless scene, with
or without the module registered in ``slicer.modules``; ``interactive=False`` never opens a
dialog. torch is first imported after :meth:`AnalysisLogic.ensurePythonPackages`, through the
analyzer cache.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, List, Optional

import slicer

from ChestCTMTLLib import calibration, errors, registry
from ChestCTMTLLib.analyzers import AnalyzerCache
from ChestCTMTLLib.options import FALLBACK_SCORE_THRESHOLD, RANGES, AnalysisOptions
from ChestCTMTLLib.volume_io import validate_ct

from . import dependencies, display, headless, nodes, review, scene_involvement, terminology
from .job import AnalysisJob


def _cancelled(cancel) -> bool:
    return cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel())


class AnalysisLogic:
    """All processing of the module; the panel calls only this."""

    def __init__(self) -> None:
        self._analyzers = AnalyzerCache(self.resolveModelFolder)
        self._thoroughChecks: Dict[tuple, Optional[str]] = {}

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
        """Import names of the core's packages that are not installed (nothing is imported)."""
        return dependencies.missing_packages(dependencies.REQUIREMENTS)

    def ensurePythonPackages(self, askConfirmation: bool = True) -> bool:
        """Make sure the core's packages are importable (and torch new enough); install only
        after the user agrees (:func:`ChestCTMTLMRML.dependencies.ensure`).

        Returns False when the user declines. Without a GUI (or with askConfirmation=False and
        packages missing) it raises instead of installing silently.
        """
        return dependencies.ensure(self._guiAvailable(), askConfirmation, dependencies.REQUIREMENTS)

    def deviceDescription(self) -> str:
        """What "auto" would use, for the panel. Never raises: a missing, half-installed or
        broken torch (any error while importing it) is described, not propagated."""
        if dependencies.missing_packages((("torch", None),)):
            return "PyTorch is not installed yet (it will be offered on Analyze)."
        try:
            import torch
        except Exception as e:  # noqa: BLE001 - e.g. a DLL/ABI error from a broken install
            return "PyTorch cannot be loaded ({}); reinstall it in the PyTorch module.".format(e)
        try:
            if torch.cuda.is_available():
                return "GPU found: {} (CUDA {}).".format(torch.cuda.get_device_name(0), torch.version.cuda)
            return "No CUDA GPU found; the CPU is used ({} threads).".format(torch.get_num_threads())
        except Exception as e:  # noqa: BLE001 - a broken driver must not break the panel
            return "No usable GPU ({}); the CPU is used.".format(e)

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
        return self._analyzers.get(model, options)

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
            try:
                validate_ct(self.volumeToCT(volumeNode))
                problem = None
            except errors.InputError as e:
                problem = "'{}' cannot be analysed: {}".format(volumeNode.GetName(), e.message)
            self._thoroughChecks = {key: problem}
        return self._thoroughChecks[key]

    def volumeToCT(self, volumeNode):
        """A CTVolume *copy* of the node (voxels in HU, IJK-to-RAS), safe to hand to a thread."""
        return nodes.ct_from_volume_node(volumeNode)

    # -------------------------------------------------------------------- results in the scene
    @staticmethod
    def _scene():
        return headless.get_scene()

    def resultNodes(self, volumeNode):
        """The volume's ChestCTMTL results (ChestCTMTLMRML's ResultNodes) or None."""
        if volumeNode is None:
            return None
        return nodes.find_result_nodes(self._scene(), volumeNode)

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
                  createDetections: bool = True, scoreThreshold: Optional[float] = None,
                  lobes=None):
        """The numbers for one CTVolume (``Analyzer.apply`` of :meth:`getAnalyzer`); touches no
        MRML. ``scoreThreshold`` None: the model's calibrated operating point. ``lobes``: lobe
        masks on the CT's grid (:meth:`sceneLobes`) for per-lobe involvement."""
        if _cancelled(cancel):
            raise errors.Cancelled()
        analyzer = self.getAnalyzer(model, self.analysisOptions(
            device, createSegmentation, createReconstruction, createDetections, scoreThreshold))
        return analyzer.apply(ct, progress=progressCallback, cancel=cancel, lobes=lobes)

    def sceneLobes(self, inputVolume):
        """The five lobes from a segmentation already in the scene (TotalSegmentator's or
        MONAIAuto3DSeg's, by segment name) on ``inputVolume``'s grid, or None. Read on the
        calling (main) thread: the analysis thread never touches MRML."""
        results = self.resultNodes(inputVolume)
        exclude = (results.segmentation, results.lungs) if results is not None else ()
        return scene_involvement.lobes_in_scene(self._scene(), inputVolume, exclude=exclude)

    def startAnalysis(self, ct, model=None, device: str = "auto", createSegmentation: bool = True,
                      createReconstruction: bool = True, createDetections: bool = True,
                      scoreThreshold: Optional[float] = None, lobes=None) -> AnalysisJob:
        """Run the analysis in a worker thread; poll the returned job from the main thread.

        Options and model are resolved here, on the calling thread (one Analyzer), so a bad
        option, a missing or corrupt model or an absent GPU fails at once (and torch is first
        imported on the main thread, not in the worker).
        """
        analyzer = self.getAnalyzer(model, self.analysisOptions(
            device, createSegmentation, createReconstruction, createDetections, scoreThreshold))

        def target(report, cancelEvent):
            return analyzer.apply(ct, progress=report, cancel=cancelEvent, lobes=lobes)

        return AnalysisJob(target).start()

    def createResultNodes(self, inputVolume, result, replace: bool = False,
                          createSegmentation: bool = True, createReconstruction: bool = True,
                          createDetections: bool = True):
        """Put one AnalysisResult into the scene, all or nothing (ChestCTMTLMRML guarantees it:
        a failure removes what it built, and previous results go only after the new exist).

        ``replace``: the volume's previous results are replaced, else their presence is a
        :class:`nodes.ResultsExistError`; other volumes' results are never touched.
        """
        # no score threshold here: the Analyzer's operating point already chose the findings
        options = nodes.ResultOptions(segmentation=createSegmentation,
                                            reconstruction=createReconstruction,
                                            detections=createDetections)
        return nodes.create_result_nodes(self._scene(), inputVolume, result, replace=replace,
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
        :raises nodes.ResultsExistError, errors.InputError, errors.ModelError, errors.Cancelled ...:
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
                raise nodes.ResultsExistError("'{}' already has ChestCTMTL results (use replace=True)"
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
                                createDetections=createDetections, scoreThreshold=scoreThreshold,
                                lobes=self.sceneLobes(inputVolume))
        if _cancelled(cancel):
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
        display.show_results(inputVolume, resultNodes, self._guiAvailable())

    def compareReconstruction(self, inputVolume, show: bool = True) -> None:
        """One click to compare: the reconstruction as foreground over the CT at 50 % opacity."""
        display.compare_reconstruction(inputVolume, self.resultNodes(inputVolume), show,
                                       self._guiAvailable())

    def showSegmentation3D(self, inputVolume, show: bool = True) -> None:
        display.show_segmentation_3d(self.resultNodes(inputVolume), show)

    def loadTerminology(self) -> None:
        """Make our terminology context selectable in Slicer's terminology selector."""
        terminology.ensure_loaded(headless.get_logic("Terminologies"))

    def centerOnFinding(self, roi) -> List[float]:
        """Centre every slice view on the finding's ROI; returns the RAS centre."""
        return display.center_on_finding(roi)

    # -------------------------------------------------------------------- review
    def findingReview(self, roi):
        """(status, note) of one finding ROI."""
        return review.get_finding_status(roi)

    def setFindingStatus(self, roi, status: str, note: Optional[str] = None) -> None:
        review.set_finding_status(roi, status, note)

    def saveReview(self, inputVolume, mrbPath) -> Dict[str, Path]:
        """Write the session (.mrb) and the report (JSON, Markdown, CSV) next to it."""
        return review.save_review(self._scene(), inputVolume, mrbPath)

    @staticmethod
    def missingDicomPackages() -> List[str]:
        """Pinned requirements DICOM SEG/SR need that are not installed ([] when all are)."""
        from ChestCTMTLLib import dicom_out

        return dicom_out.missing_dependencies()

    def installDicomPackages(self) -> None:
        """pip-install what :meth:`missingDicomPackages` lists (the caller asked the user)."""
        missing = self.missingDicomPackages()
        if missing:
            dependencies.install_with_pip(missing)

    def isDicomVolume(self, inputVolume) -> bool:
        """True when the volume came through Slicer's DICOM module (SEG/SR can reference it)."""
        return bool(inputVolume is not None and inputVolume.GetAttribute("DICOM.instanceUIDs"))

    def saveReviewDicom(self, inputVolume, folder, reviewer: Optional[str] = None,
                        sendTo: Optional[str] = None):
        """The review as DICOM SEG + TID 1500 SR in ``folder`` (indexed into Slicer's DICOM
        database), C-STOREd to ``sendTo`` ("HOST:PORT:AET") when given. Returns (objects, why
        the send failed or None); a failed send keeps the files."""
        from . import dicom

        return dicom.save_review_dicom(self._scene(), inputVolume, folder, reviewer=reviewer,
                                       send_to=sendTo or None)

    def loadReview(self) -> dict:
        """Re-apply the review state stored in a loaded scene (colours, table status column)."""
        return review.load_review(self._scene())

    def resultsSummary(self, inputVolume) -> Optional[dict]:
        """What the panel shows for a volume: verdict, probabilities, findings with review state."""
        if inputVolume is None:
            return None
        return review.results_summary(self._scene(), inputVolume)


#
# ChestCTMTLTest
#
