"""The Slicer module (ChestCTMTL.py) on real MRML and real CT slices, headless.

``ChestCTMTL.py`` is imported unchanged; only Slicer's Qt/application layer is stood in
(Testing/slicer_standins.py). The Logic runs an untrained model (plumbing, not accuracy) on
LIDC-IDRI-0001 slices read by Slicer's own DICOM reader. Reviewing results:
Testing/test_module_review.py.
"""
from __future__ import annotations

import ast
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

import slicer_standins  # noqa: E402

slicer_standins.install()

from ChestCTMTLLib import errors  # noqa: E402
from ChestCTMTLLib.options import DEVICES, RANGES, AnalysisOptions, OptionError  # noqa: E402
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES  # noqa: E402
from ChestCTMTLMRML import headless, nodes  # noqa: E402

import ChestCTMTL as module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "ChestCTMTL" / "ChestCTMTL.py"
UI_FILE = REPO / "ChestCTMTL" / "Resources" / "UI" / "ChestCTMTL.ui"


# ------------------------------------------------------------------ fixtures
def load_slices(files, first: int, count: int, name: str):
    """Real DICOM slices read by Slicer's own reader (the Volumes logic)."""
    names = files[first:first + count]
    array = vtk.vtkStringArray()
    for n in names:
        array.InsertNextValue(n)
    node = headless.get_logic("Volumes").AddArchetypeVolume(names[0], name, 0, array)
    assert node is not None and node.GetImageData() is not None
    return node


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ChestCTMTLLib import modelio

    return modelio.create_untrained_model_folder(tmp_path_factory.mktemp("model") / "m", seed=0)


def counts(scene):
    sh = scene.GetSubjectHierarchyNode()
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    return scene.GetNumberOfNodes(), items.GetNumberOfIds()


def matrix(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


# ------------------------------------------------------------------ import, metadata, UI
def test_module_imports_headless_and_describes_itself(scene):
    stand_ins = slicer_standins.install()
    assert stand_ins["slicer.ScriptedLoadableModule"], "the real module would need Qt here"
    parent = SimpleNamespace(path=str(MODULE_FILE))
    module.ChestCTMTL(parent)
    assert parent.title and parent.categories == ["Segmentation"]
    assert "research use only" in parent.helpText.lower()
    assert parent.contributors and parent.acknowledgementText.strip()
    assert "ChestCTMTL" in slicer.selfTests
    # The Logic must not depend on the module being registered in slicer.modules.
    assert not hasattr(slicer.modules, "chestctmtl")
    assert isinstance(module.ChestCTMTLLogic(), slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic)


def test_module_file_stays_python39_and_template_shaped():
    source = MODULE_FILE.read_text(encoding="utf-8")
    tree = ast.parse(source)
    first = tree.body[1] if isinstance(tree.body[0], ast.Expr) else tree.body[0]
    assert isinstance(first, ast.ImportFrom) and first.module == "__future__"
    for path in (MODULE_FILE, REPO / "ChestCTMTL" / "ChestCTMTLMRML" / "review.py"):
        ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))  # Slicer 5.8's Python
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {"qt", "ctk", "vtk", "slicer"} <= imported
    assert "from slicer.ScriptedLoadableModule import *" in source
    top_level_imports = {a.name.split(".")[0] for n in tree.body if isinstance(n, (ast.Import,))
                         for a in n.names}
    assert "torch" not in top_level_imports, "torch must be imported lazily (after the install offer)"


def _ui_widgets():
    root = ET.parse(UI_FILE).getroot()
    widgets = {}
    for w in root.iter("widget"):
        props = {p.get("name"): p for p in w.findall("property")}
        widgets[w.get("name")] = (w.get("class"), props)
    return widgets


def test_every_widget_the_code_uses_exists_in_the_ui_file():
    widgets = _ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert len(used) > 15  # the regex does see the widget uses
    missing = sorted(used - set(widgets))
    assert not missing, "ChestCTMTL.py uses widgets missing from ChestCTMTL.ui: {}".format(missing)


def test_ui_file_is_a_loadable_module_panel():
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "ChestCTMTL"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared
    connection = root.find("connections/connection")
    assert (connection.findtext("signal"), connection.findtext("receiver")) == \
        ("mrmlSceneChanged(vtkMRMLScene*)", "inputVolumeSelector")


def test_ui_parameter_bindings_match_the_parameter_node():
    """Each SlicerParameterName names a parameter, on a widget Slicer can connect to its type."""
    connectable = {bool: {"QCheckBox", "QPushButton"}, float: {"ctkSliderWidget", "QDoubleSpinBox"},
                   str: {"QComboBox", "QLineEdit"}}
    params = module.ChestCTMTLParameterNode.allParameters
    bound = {}
    for name, (cls, props) in _ui_widgets().items():
        if "SlicerParameterName" in props:
            bound[props["SlicerParameterName"].find("string").text] = cls
    assert set(bound) <= set(params)
    assert {"inputVolume", "device", "createSegmentation", "createReconstruction",
            "createDetections", "scoreThreshold"} <= set(bound)
    assert bound["inputVolume"] == "qMRMLNodeComboBox"
    for name, cls in bound.items():
        default = params[name].default
        if isinstance(default, (bool, float, str)):
            assert cls in connectable[type(default)], (name, cls)
    node_types = [s.text for s in _ui_widgets()["inputVolumeSelector"][1]["nodeTypes"].iter("string")]
    assert node_types == ["vtkMRMLScalarVolumeNode"]


def test_parameter_node_persists_choices_in_the_scene(scene, lidc_files, tmp_path):
    volume = load_slices(lidc_files, 60, 4, "CT")
    logic = module.ChestCTMTLLogic()
    p = logic.getParameterNode()
    assert (p.device, p.createSegmentation, p.createReconstruction, p.createDetections) == \
        ("auto", True, True, True)
    # a new parameter node starts at the default model's calibrated operating point
    assert p.scoreThreshold == pytest.approx(logic.calibratedScoreThreshold(None))
    p.inputVolume, p.device, p.createReconstruction, p.scoreThreshold = volume, "cpu", False, 0.55
    with pytest.raises(ValueError):
        p.device = "tpu"
    with pytest.raises(ValueError):
        p.scoreThreshold = 1.5
    assert logic.getParameterNode().parameterNode is p.parameterNode  # singleton
    path = tmp_path / "params.mrb"
    assert scene.WriteToMRB(str(path))
    scene.Clear(False)
    assert scene.ReadFromMRB(str(path))
    q = module.ChestCTMTLLogic().getParameterNode()
    assert q.inputVolume is not None and q.inputVolume.GetName() == "CT"
    assert (q.device, q.createReconstruction, q.scoreThreshold) == ("cpu", False, 0.55)


def test_parameter_node_ranges_are_the_options_ranges():
    """One range per option, read from ChestCTMTLLib.options (no second one in the module)."""
    import typing

    hints = typing.get_type_hints(module.ChestCTMTLParameterNode, include_extras=True)
    within = [a for a in typing.get_args(hints["scoreThreshold"])[1:]
              if type(a).__name__ == "WithinRange"]
    assert len(within) == 1
    assert (within[0].minimum, within[0].maximum) == RANGES["score_threshold"]
    choices = [a for a in typing.get_args(hints["device"])[1:] if type(a).__name__ == "Choice"]
    assert tuple(choices[0].choices) == DEVICES
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert not re.search(r"WithinRange\(\s*[-\d.]", source), "a range typed into the module"
    assert "scoreThresholdSliderWidget.minimum" in source  # the slider follows RANGES too


def test_parameter_node_refuses_values_outside_the_options_range(scene):
    p = module.ChestCTMTLLogic().getParameterNode()
    low, high = RANGES["score_threshold"]
    p.scoreThreshold = low
    p.scoreThreshold = high
    for bad in (low - 0.01, high + 0.01):
        with pytest.raises(ValueError):
            p.scoreThreshold = bad
    assert p.scoreThreshold == high


def test_new_parameter_node_starts_at_the_models_calibrated_point(scene, model_dir, tmp_path,
                                                                  monkeypatch):
    import shutil

    from ChestCTMTLLib import calibration, modelio

    folder = tmp_path / "calibrated"
    shutil.copytree(model_dir, folder)
    calibration.write_calibration(folder, dict(calibration.DEFAULTS, fitted=True,
                                               score_threshold=0.37))
    monkeypatch.setenv("CHESTCTMTL_RESOURCES", str(tmp_path))
    modelio.register_model(folder, registry=tmp_path / "models.json")
    logic = module.ChestCTMTLLogic()
    assert logic.calibratedScoreThreshold(None) == pytest.approx(0.37)
    assert logic.calibratedScoreThreshold(str(folder)) == pytest.approx(0.37)
    assert logic.getParameterNode().scoreThreshold == pytest.approx(0.37)
    p = logic.getParameterNode()
    p.scoreThreshold = 0.6  # a user's choice in an existing node is kept
    assert module.ChestCTMTLLogic().getParameterNode().scoreThreshold == pytest.approx(0.6)
    # no model at all: the panel still opens, at the options' fallback
    assert logic.calibratedScoreThreshold(tmp_path / "missing") == \
        pytest.approx(module.FALLBACK_SCORE_THRESHOLD)


def test_input_problems_are_specific(scene, lidc_files):
    logic = module.ChestCTMTLLogic()
    assert "Select" in logic.inputProblem(None)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    assert "no voxels" in logic.inputProblem(empty)
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    assert "label map" in logic.inputProblem(label)
    flat = slicer.util.addVolumeFromArray(np.zeros((1, 64, 64), np.int16), name="flat")
    assert "2D" in logic.inputProblem(flat)
    not_ct = slicer.util.addVolumeFromArray(np.full((8, 128, 128), 7, np.int16), name="noise",
                                            ijkToRAS=np.diag([1.0, 1.0, 1.0, 1.0]))
    assert logic.inputProblem(not_ct) is None  # quick checks pass ...
    assert "cannot be analysed" in logic.inputProblem(not_ct, thorough=True)  # ... HU check fails
    ct = load_slices(lidc_files, 60, 4, "CT")
    assert logic.inputProblem(ct, thorough=True) is None
    with pytest.raises(errors.InputError):
        logic.process(empty, interactive=False)


# ------------------------------------------------------------------ analysis into the scene
def test_process_creates_results_on_the_input_grid(scene, lidc_files, model_dir):
    volume = load_slices(lidc_files, 58, 8, "LIDC-IDRI-0001")
    voxels = np.array(slicer.util.arrayFromVolume(volume), copy=True)
    geometry = matrix(volume)
    logic = module.ChestCTMTLLogic()
    stages = []
    result_nodes = logic.process(volume, model=str(model_dir), device="cpu", interactive=False,
                                 progressCallback=lambda f, s: stages.append((f, s)))
    assert stages[-1][0] == 1.0 and [f for f, _ in stages] == sorted(f for f, _ in stages)
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemName(result_nodes.folder_item) == "ChestCTMTL \u2013 LIDC-IDRI-0001"
    assert sh.GetItemParent(result_nodes.folder_item) == sh.GetSceneItemID()
    predicted = sh.GetItemAttribute(result_nodes.folder_item, nodes.PREDICTED_CLASS_ATTR)
    probs = {c: float(sh.GetItemAttribute(result_nodes.folder_item, nodes.PROBABILITY_ATTR_PREFIX + c))
             for c in CLASS_NAMES}
    assert predicted == max(probs, key=probs.get)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert sh.GetItemAttribute(result_nodes.folder_item, nodes.MODEL_ID_ATTR) == "untrained-fast-seed0"

    seg = result_nodes.segmentation
    assert seg.IsA("vtkMRMLSegmentationNode") and seg.GetName() == "LIDC-IDRI-0001 lesions"
    segmentation = seg.GetSegmentation()
    assert {segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())} \
        == set(LESION_TYPES)
    for lesion_type in LESION_TYPES:
        segment = segmentation.GetSegment(lesion_type)
        assert "SCT^" in segment.GetTerminology()
        mask = nodes.segment_mask_array(seg, lesion_type, volume)
        assert mask.shape == voxels.shape
    display = seg.GetDisplayNode()
    assert display.GetVisibility2DFill() and display.GetVisibility2DOutline()

    recon = result_nodes.reconstruction
    assert recon.IsA("vtkMRMLScalarVolumeNode") and not recon.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_allclose(matrix(recon), geometry, atol=1e-9)
    assert slicer.util.arrayFromVolume(recon).shape == voxels.shape
    assert result_nodes.table.IsA("vtkMRMLTableNode")
    assert result_nodes.table.GetNumberOfRows() == len(result_nodes.rois)
    assert logic.resultNodes(volume).segmentation is seg
    summary = logic.resultsSummary(volume)
    assert summary["predicted_class"] == predicted and set(summary["probabilities"]) == set(CLASS_NAMES)
    # the panel can say why: the evidence line travels with the results in the scene
    assert "classifier on" in summary["verdict_evidence"]
    # V is never modified
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels)
    np.testing.assert_array_equal(matrix(volume), geometry)


def test_switched_off_results_are_not_created(scene, lidc_files, model_dir):
    volume = load_slices(lidc_files, 58, 6, "CT")
    result_nodes = module.ChestCTMTLLogic().process(
        volume, model=model_dir, device="cpu", interactive=False, createSegmentation=False,
        createReconstruction=False, createDetections=False)
    assert result_nodes.segmentation is None and result_nodes.reconstruction is None
    assert result_nodes.rois == [] and result_nodes.table.GetNumberOfRows() == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_logic_keeps_one_analyzer_and_loads_the_model_once(scene, lidc_files, model_dir,
                                                          monkeypatch):
    """process() builds AnalysisOptions from its arguments; the Analyzer is cached per (model
    folder, device), so new options reuse the loaded weights."""
    from ChestCTMTLLib import modelio

    loads = []
    real_load = modelio.load_model

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(modelio, "load_model", counting_load)
    logic = module.ChestCTMTLLogic()
    a = load_slices(lidc_files, 58, 4, "A")
    b = load_slices(lidc_files, 70, 4, "B")
    logic.process(a, model=model_dir, device="cpu", interactive=False)
    first = logic.getAnalyzer(model_dir, AnalysisOptions(device="cpu"))
    logic.process(b, model=str(model_dir), device="cpu", interactive=False, scoreThreshold=0.8,
                  createReconstruction=False)
    assert len(loads) == 1
    analyzer = logic.getAnalyzer(model_dir, logic.analysisOptions(
        "cpu", createReconstruction=False, scoreThreshold=0.8))
    assert analyzer.loaded is first.loaded and len(loads) == 1
    assert analyzer.score_threshold == 0.8 and "reconstruction" not in analyzer.tasks
    assert logic.getAnalyzer(model_dir, AnalysisOptions(device="cpu")).score_threshold == \
        pytest.approx(logic.calibratedScoreThreshold(model_dir))  # None: calibrated point
    before = counts(scene)
    with pytest.raises(OptionError):  # refused before any work, the scene unchanged
        logic.process(a, model=model_dir, device="cpu", interactive=False, replace=True,
                      scoreThreshold=RANGES["score_threshold"][1] + 0.5)
    assert counts(scene) == before and len(loads) == 1


def test_rerun_replaces_only_that_volumes_results(scene, lidc_files, model_dir):
    logic = module.ChestCTMTLLogic()
    a = load_slices(lidc_files, 58, 6, "A")
    b = load_slices(lidc_files, 70, 6, "B")
    first_a = logic.process(a, model=model_dir, device="cpu", interactive=False)
    results_b = logic.process(b, model=model_dir, device="cpu", interactive=False)
    before = counts(scene)
    with pytest.raises(module.ResultsExistError):  # no replace, no dialog: refused up front
        logic.process(a, model=model_dir, device="cpu", interactive=False)
    with pytest.raises(module.ResultsExistError):  # interactive, but there is no GUI to ask
        logic.process(a, model=model_dir, device="cpu", interactive=True)
    assert counts(scene) == before
    old_ids = [n.GetID() for n in first_a.data_nodes()]
    second_a = logic.process(a, model=model_dir, device="cpu", interactive=False, replace=True)
    assert counts(scene) == before  # same results, new nodes
    assert all(scene.GetNodeByID(i) is None for i in old_ids)
    assert all(scene.GetNodeByID(n.GetID()) is n for n in results_b.data_nodes())
    folders = [r for r in nodes.find_all_result_nodes(scene) if r.input_volume is a]
    assert len(folders) == 1 and folders[0].segmentation is second_a.segmentation
    assert logic.resultNodes(b).segmentation is results_b.segmentation


def test_cancel_and_failures_leave_the_scene_unchanged(scene, lidc_files, model_dir, tmp_path,
                                                       monkeypatch):
    logic = module.ChestCTMTLLogic()
    volume = load_slices(lidc_files, 58, 6, "CT")
    previous = logic.process(volume, model=model_dir, device="cpu", interactive=False)
    voxels = np.array(slicer.util.arrayFromVolume(volume), copy=True)
    before = counts(scene)

    stop = threading.Event()

    def progress(fraction, stage):
        if fraction >= 0.1:  # cancel once slices are being analysed
            stop.set()

    with pytest.raises(errors.Cancelled):
        logic.process(volume, model=model_dir, device="cpu", interactive=False, replace=True,
                      progressCallback=progress, cancel=stop)
    assert counts(scene) == before

    with pytest.raises(errors.ModelError):  # missing model folder
        logic.process(volume, model=tmp_path / "missing", device="cpu", interactive=False, replace=True)
    assert counts(scene) == before

    from ChestCTMTLLib import modelio

    corrupt = modelio.create_untrained_model_folder(tmp_path / "corrupt", seed=1)
    weights = corrupt / modelio.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(errors.ModelError):  # checksum mismatch
        logic.process(volume, model=corrupt, device="cpu", interactive=False, replace=True)
    assert counts(scene) == before

    # a failure while building nodes, after the segmentation exists: all of it is rolled back
    real_build = nodes._build_reconstruction

    def failing_build(*args, **kwargs):
        real_build(*args, **kwargs)
        raise RuntimeError("disk full")

    monkeypatch.setattr(nodes, "_build_reconstruction", failing_build)
    with pytest.raises(RuntimeError, match="disk full"):
        logic.process(volume, model=model_dir, device="cpu", interactive=False, replace=True)
    assert counts(scene) == before
    assert logic.resultNodes(volume).segmentation is previous.segmentation
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels)


def test_background_job_reports_progress_and_cancels(scene, lidc_files, model_dir):
    logic = module.ChestCTMTLLogic()
    volume = load_slices(lidc_files, 58, 6, "CT")
    ct = logic.volumeToCT(volume)
    job = logic.startAnalysis(ct, model=str(model_dir), device="cpu", scoreThreshold=0.5)
    assert job.wait(600)
    assert job.error is None, job.traceback
    assert job.progress[0] == 1.0 and job.result.predicted_class in CLASS_NAMES
    before = counts(scene)
    created = logic.createResultNodes(volume, job.result)
    assert created.segmentation is not None and counts(scene) != before

    job = logic.startAnalysis(ct, model=str(model_dir), device="cpu")
    job.cancel()
    assert job.wait(600) and isinstance(job.error, errors.Cancelled) and job.result is None


# ------------------------------------------------------------------ the module's own test
def test_module_self_test_passes_headless(scene):
    parent = SimpleNamespace(path=str(MODULE_FILE))
    module.ChestCTMTL(parent)
    slicer.selfTests["ChestCTMTL"](msec=0)


def test_models_come_from_the_registry_next_to_the_module(scene, model_dir, tmp_path, monkeypatch):
    """The Logic finds models through the extension's registry (no slicer.modules needed)."""
    from ChestCTMTLLib import modelio

    monkeypatch.setenv("CHESTCTMTL_RESOURCES", str(tmp_path))
    logic = module.ChestCTMTLLogic()
    assert logic.availableModels() == []
    with pytest.raises(errors.ModelError):  # no default model registered
        logic.resolveModelFolder(None)
    with pytest.raises(errors.ModelNotFoundError):
        logic.resolveModelFolder("no-such-model")
    modelio.register_model(model_dir, registry=tmp_path / "models.json")
    models = logic.availableModels()
    assert [m["id"] for m in models] == ["untrained-fast-seed0"] and models[0]["default"]
    assert "Measured speed" in models[0]["tooltip"] and models[0]["version"]
    assert logic.resolveModelFolder(None).resolve() == Path(model_dir).resolve()
    assert logic.resolveModelFolder("untrained-fast-seed0").resolve() == Path(model_dir).resolve()
    (tmp_path / "models.json").write_text("{not json")
    with pytest.raises(errors.ModelError):
        logic.availableModels()


def test_background_job_fails_fast_on_a_bad_model(scene, lidc_files, tmp_path):
    logic = module.ChestCTMTLLogic()
    ct = logic.volumeToCT(load_slices(lidc_files, 58, 4, "CT"))
    with pytest.raises(errors.ModelError):  # raised on the caller's thread, no job started
        logic.startAnalysis(ct, model=tmp_path / "missing", device="cpu")
    import torch

    if not torch.cuda.is_available():  # asking for a GPU that is not there is its own error
        with pytest.raises(errors.DeviceUnavailableError):
            logic.startAnalysis(ct, model=tmp_path / "missing", device="cuda")


def test_missing_packages_are_never_installed_without_asking(scene, lidc_files, monkeypatch):
    """Headless (no dialog possible) a missing package is an error naming it; nothing changes."""
    from ChestCTMTLMRML import dependencies

    monkeypatch.setattr(dependencies, "REQUIREMENTS",
                        dependencies.REQUIREMENTS + (("chestctmtl_no_such_pkg", "no-such-pkg"),))
    logic = module.ChestCTMTLLogic()
    assert logic.missingPythonPackages() == ["chestctmtl_no_such_pkg"]
    volume = load_slices(lidc_files, 58, 4, "CT")
    before = counts(scene)
    with pytest.raises(errors.ChestCTMTLError, match="chestctmtl_no_such_pkg"):
        logic.process(volume, interactive=True)
    with pytest.raises(errors.ChestCTMTLError, match="chestctmtl_no_such_pkg"):
        logic.ensurePythonPackages(askConfirmation=True)
    assert counts(scene) == before
