"""The batch script and Save review where a user runs them: in a fresh Slicer's Python.

Slicer bundles no torch, tqdm, scikit-image or safetensors (see slicer_like.py), so these tests
run the real code in a real interpreter without them (``python -S`` + the bundled packages
only), under a subprocess timeout: inside Slicer an error that escapes ``--python-script``
leaves the application running, so "exits with a code and a message within seconds" is the
property that matters. The .mrb under review is made the way users make it, with
``chestctmtl analyze --mrb`` on the public sample CT and the bundled model. A static check
lists where code that runs in Slicer may import a package Slicer lacks, and why.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import slicer_like

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "ChestCTMTL" / "Scripts" / "batch_analyze.py"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return slicer_like.make_site(tmp_path_factory.mktemp("slicer-site"))


@pytest.fixture(scope="module")
def small_nifti(lidc0002_nifti, tmp_path_factory) -> Path:
    from mrml_testutil import crop_ct_file

    return crop_ct_file(lidc0002_nifti, tmp_path_factory.mktemp("nifti") / "small.nii.gz",
                        first=110, count=6, step=4)


def test_the_interpreter_is_slicer_like(site):
    """The environment itself: the bundled packages import, the others do not."""
    probe = ("import importlib.util as u, json; print(json.dumps({n: u.find_spec(n) is not None "
             "for n in %r}))" % ((("numpy", "scipy", "SimpleITK", "vtk", "slicer")
                                  + slicer_like.NOT_IN_SLICER),))
    run = slicer_like.run(["-c", probe], site, timeout=60)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert all(found[n] for n in ("numpy", "scipy", "SimpleITK", "vtk", "slicer")), found
    assert not any(found[n] for n in slicer_like.NOT_IN_SLICER), found


# ------------------------------------------------------------------ batch_analyze.py
def test_batch_script_without_torch_exits_at_once_with_the_fix(site, small_nifti, tmp_path):
    """The README's command (no --no-progress) on a real CT, torch and tqdm missing: exit code
    2 within seconds, a message naming torch and the PyTorch extension, no output folder."""
    out = tmp_path / "out"
    started = time.perf_counter()
    run = slicer_like.run([str(SCRIPT), "--input", str(small_nifti), "--output", str(out)],
                          site, timeout=60, cwd=str(tmp_path))
    seconds = time.perf_counter() - started
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert seconds < 30
    assert "'torch' is not installed" in run.stderr, run.stderr
    assert "PyTorch" in run.stderr and "Extensions Manager" in run.stderr
    assert "Traceback" not in run.stderr  # a known cause gets a message, not a stack
    assert not out.exists()


def test_a_failed_start_waits_for_the_read_begun_ahead(site, lidc0002_nifti, tmp_path):
    """The first input is read in a background thread while torch is imported; when torch is
    missing the script must still end with its own exit code, not be aborted by a thread
    still inside ITK at interpreter exit ("FATAL: exception not rethrown", SIGABRT). A whole
    CT, so that the read is still running when the import fails."""
    run = slicer_like.run([str(SCRIPT), "--input", str(lidc0002_nifti), "--output",
                           str(tmp_path / "out")], site, timeout=120, cwd=str(tmp_path))
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "'torch' is not installed" in run.stderr and "FATAL" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_batch_script_exits_through_slicer_util_exit_inside_slicer():
    """Inside Slicer the exit code must reach the application: Base/Python/slicer/util.py
    ``exit`` (v5.8.0, v5.12.3) clears ``app.commandOptions().runPythonAndExit`` and calls
    ``app.exit(status)``. The stand-in below is that function on a recording application
    (the application layer only; there is no MRML involved)."""
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("batch_analyze_under_test", str(SCRIPT))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    class Application:
        def __init__(self):
            self.options = types.SimpleNamespace(runPythonAndExit=True)
            self.exited = []

        def commandOptions(self):
            return self.options

        def exit(self, status):
            self.exited.append(status)

    app = Application()

    def slicer_util_exit(status=0):  # as Base/Python/slicer/util.py exit() at v5.8.0/v5.12.3
        app.commandOptions().runPythonAndExit = False
        app.exit(status)

    stand_in = types.ModuleType("slicer")
    stand_in.app = app
    stand_in.util = types.SimpleNamespace(exit=slicer_util_exit)
    saved = sys.modules.get("slicer")
    sys.modules["slicer"] = stand_in
    try:
        script._exit(2)  # returns: the application quits its event loop afterwards
    finally:
        if saved is not None:
            sys.modules["slicer"] = saved
        else:
            sys.modules.pop("slicer", None)
    assert app.exited == [2] and app.options.runPythonAndExit is False

    def broken_main():
        raise RuntimeError("a bug")

    script.main = broken_main
    assert script.run() == 2

    def interrupted_main():
        raise KeyboardInterrupt

    script.main = interrupted_main
    assert script.run() == 2


def _no_tqdm_site(folder: Path) -> Path:
    """A sitecustomize that makes tqdm unimportable, as in Slicer's Python."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['tqdm'] = None\n")
    return folder


def test_progress_lines_without_tqdm(tmp_path, small_nifti):
    """torch present, tqdm not: the batch runs and prints plain progress lines."""
    from ChestCTMTLLib import modelio

    model = modelio.create_untrained_model_folder(tmp_path / "model")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(_no_tqdm_site(tmp_path / "no-tqdm"))
    env.setdefault("OMP_NUM_THREADS", "2")
    probe = subprocess.run([sys.executable, "-c", "import tqdm"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert probe.returncode != 0 and "tqdm" in probe.stderr  # the block is real
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--input", str(small_nifti), "--output", str(out),
         "--model", str(model), "--device", "cpu", "--no-preview"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("case 1/1 small.nii.gz:")]
    assert lines[0].startswith("case 1/1 small.nii.gz: 0% reading"), run.stderr
    assert lines[-1] == "case 1/1 small.nii.gz: 100% done (100% of all)"
    assert len(lines) == len(set(lines)) >= 4  # one line per stage, not per update
    assert (out / "small" / "report.json").is_file()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tqdm_only_on_a_terminal_where_it_is_installed(monkeypatch):
    from ChestCTMTLMRML import batch

    pytest.importorskip("tqdm")
    on_terminal = batch._Progress(2, True, _Terminal())
    assert on_terminal.uses_tqdm
    on_terminal.close()
    log = io.StringIO()
    in_log = batch._Progress(2, True, log)
    assert not in_log.uses_tqdm
    in_log.start_case("a.nrrd")
    for fraction, stage in ((0.0, "reading"), (0.3, "network"), (0.5, "network"), (1.0, "done")):
        in_log.progress(fraction, stage)
    in_log.case_done()
    assert log.getvalue().splitlines() == ["case 1/2 a.nrrd: 0% reading (0% of all)",
                                           "case 1/2 a.nrrd: 30% network (15% of all)",
                                           "case 1/2 a.nrrd: 100% done (50% of all)"]
    monkeypatch.setitem(sys.modules, "tqdm", None)
    terminal = _Terminal()
    without = batch._Progress(1, True, terminal)
    assert not without.uses_tqdm
    without.start_case("b.nrrd")
    without.progress(0.5, "lungs")
    assert terminal.getvalue() == "case 1/1 b.nrrd: 50% lungs (50% of all)\n"
    silent = io.StringIO()
    quiet = batch._Progress(1, False, silent)
    quiet.progress(0.5, "lungs")
    assert silent.getvalue() == ""


def test_run_analyze_turns_any_error_into_a_message(tmp_path, small_nifti, monkeypatch):
    """Not only ChestCTMTLError/OSError: an unexpected error before the first case ends the run
    with exit code 2 and a message (inside Slicer an escaping one would hang the script)."""
    from ChestCTMTLMRML import batch, cli

    def broken(*args, **kwargs):
        raise ValueError("something unexpected")

    monkeypatch.setattr(batch, "analyze_inputs", broken)
    args = cli.build_parser().parse_args(["analyze", str(small_nifti), "--output",
                                          str(tmp_path / "out")])
    err = io.StringIO()
    assert cli.run_analyze(args, out=io.StringIO(), err=err) == cli.EXIT_CANNOT_START
    assert "(internal error ValueError): something unexpected" in err.getvalue()


# ------------------------------------------------------------------ Save review
@pytest.fixture(scope="module")
def lung1_mrb(tmp_path_factory) -> Path:
    """``chestctmtl analyze --mrb`` on the public sample CT with the bundled model (one
    finding, a cancer verdict), as a user makes the scenes they review."""
    pytest.importorskip("torch")
    from ChestCTMTLLib import modelio, sample_data

    try:
        image = sample_data.sample_path("lung1_image.nrrd")
    except sample_data.SampleDataError as exc:
        pytest.skip(f"sample CT not fetched: {exc}")
    try:
        modelio.default_model_dir()
    except modelio.ModelLoadError as exc:
        pytest.skip(f"no bundled model: {exc}")
    out = tmp_path_factory.mktemp("analysed")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "ChestCTMTL"), str(REPO)])
    env.setdefault("OMP_NUM_THREADS", "2")
    run = subprocess.run([sys.executable, "-m", "ChestCTMTLMRML", "analyze", str(image),
                          "--output", str(out), "--mrb", "--device", "cpu", "--no-preview",
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    mrb = out / "lung1_image" / "lung1_image.mrb"
    assert mrb.is_file()
    return mrb


# What the module does between opening a saved scene and Save review, through the functions its
# Logic calls: ChestCTMTLLogic.loadReview (on scene load) -> review.load_review,
# setFindingStatus -> review.set_finding_status, saveReview -> review.save_review.
_REVIEW_SESSION = r"""
import json, sys
from ChestCTMTLMRML import headless, nodes, review

app = headless.HeadlessSlicer()
scene = app.scene
if not scene.ReadFromMRB(sys.argv[1]):
    sys.exit("the .mrb did not load")
review.load_review(scene)
results = nodes.find_all_result_nodes(scene)[0]
roi = results.rois[0]
review.set_finding_status(roi, "accepted", "checked in a Slicer-like Python")
paths = review.save_review(scene, results.input_volume, sys.argv[2])
print(json.dumps({name: str(path) for name, path in paths.items()}))
app.close()
"""


def test_save_review_in_slicer_like_python(site, lung1_mrb, tmp_path):
    run = slicer_like.run(["-c", _REVIEW_SESSION, str(lung1_mrb), str(tmp_path / "review.mrb")],
                          site, timeout=300, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    paths = json.loads(run.stdout.strip().splitlines()[-1])
    report = json.loads(Path(paths["json"]).read_text())
    assert report["verdict"] == "cancer"
    assert report["review_counts"]["accepted"] == 1
    finding = report["findings"][0]
    assert finding["status"] == "accepted"
    # the finding's segmented volume: its 26-connected lesion components, within the type's total
    assert 0 < finding["volume_mm3_segmentation"] <= report["lesion_volumes_mm3"][finding["type"]]
    assert Path(paths["mrb"]).stat().st_size > 0 and Path(paths["csv"]).is_file()


def test_scipy_labelling_is_skimage_26_connectivity(small_nifti):
    """The review's connected components (scipy, which Slicer ships) partition a real mask
    exactly as scikit-image's ``label(connectivity=3)`` did."""
    from scipy import ndimage

    skimage_measure = pytest.importorskip("skimage.measure")
    from ChestCTMTLLib.volume_io import read_ct
    from ChestCTMTLMRML import review

    ct = read_ct(small_nifti).array
    mask = (ct > -500) & (ct < -100)  # soft-tissue/lung interfaces of a real chest: many pieces
    ours = review.label_components(mask)
    theirs = skimage_measure.label(mask, connectivity=3)
    assert ours.max() == theirs.max() > 100
    pairs = np.unique(np.stack([ours[mask], theirs[mask]]), axis=1)
    assert pairs.shape[1] == ours.max()  # one-to-one: the same components
    assert (ours[~mask] == 0).all()
    assert ndimage.label(mask)[1] > ours.max()  # 6-connectivity would split them further


# ------------------------------------------------------------------ static guard
#: Where code that runs in Slicer may import a package Slicer does not ship, and why that is
#: safe there. Anything else (a scikit-image call in the review, say) fails below.
ALLOWED_OUTSIDE_SLICER_IMPORTS = {
    "torch": {"ChestCTMTLLib/model.py", "ChestCTMTLLib/modelio.py",
              "ChestCTMTLLib/representation.py",  # the model itself: torch is installed first
              "ChestCTMTLLib/inference.py",  # inside functions, after the model is loaded
              "ChestCTMTLLib/network.py",  # the same: the network's runtime, split from it
              "ChestCTMTLLib/onnx_network.py",  # inside functions, only where ONNX Runtime is used
              "ChestCTMTLMRML/logic.py"},  # the device label, only once torch is installed
    "onnxruntime": {"ChestCTMTLLib/onnx_network.py"},  # behind onnx_runtime_available()
    "onnx": {"ChestCTMTLLib/onnx_network.py"},
    "safetensors": {"ChestCTMTLLib/modelio.py"},  # weights; installed with torch
    "matplotlib": {"ChestCTMTLLib/preview.py"},  # behind preview.available()
    "tqdm": {"ChestCTMTLMRML/batch.py"},  # behind _tqdm_class(): plain lines without it
}


def _imported_top_level_names(path: Path):
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_code_that_runs_in_slicer_imports_only_what_slicer_ships_or_installs():
    module_dir = REPO / "ChestCTMTL"
    sources = [module_dir / "ChestCTMTL.py"] + sorted(
        p for folder in ("ChestCTMTLLib", "ChestCTMTLMRML", "Scripts")
        for p in (module_dir / folder).rglob("*.py"))
    offending = []
    for path in sources:
        relative = path.relative_to(module_dir).as_posix()
        for name in set(_imported_top_level_names(path)) & set(slicer_like.NOT_IN_SLICER):
            if relative not in ALLOWED_OUTSIDE_SLICER_IMPORTS.get(name, set()):
                offending.append("{} imports {}".format(relative, name))
    assert offending == [], offending
