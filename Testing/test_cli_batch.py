"""``chestctmtl analyze`` and Scripts/batch_analyze.py end to end: real CTs (a NIfTI crop and a
DICOM series), an untrained model folder, real files read back by slicer-core."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("torch")

from ChestCTMTLLib import modelio  # noqa: E402
from ChestCTMTLLib.volume_io import read_ct  # noqa: E402
from ChestCTMTLMRML import cli, files, headless, nodes  # noqa: E402
from mrml_testutil import crop_ct_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "ChestCTMTL" / "Scripts" / "batch_analyze.py"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return modelio.create_untrained_model_folder(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def small_nifti(lidc0002_nifti, tmp_path_factory):
    return crop_ct_file(lidc0002_nifti, tmp_path_factory.mktemp("nifti") / "small.nii.gz",
                        first=110, count=6, step=4)


@pytest.fixture(scope="module")
def dicom_subset(lidc0001_dicom_dir, tmp_path_factory):
    """Eight consecutive slices of the real LIDC-IDRI-0001 series, in a folder of that name."""
    import SimpleITK as sitk

    ordered = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(lidc0001_dicom_dir))
    folder = tmp_path_factory.mktemp("dicom") / "LIDC-IDRI-0001"
    folder.mkdir()
    for name in ordered[60:68]:
        shutil.copy(name, folder / Path(name).name)
    return folder


def _assert_case(case: Path, source, model_dir) -> None:
    ct = read_ct(source)
    assert {p.name for p in case.iterdir()} >= set(files.CASE_FILES)
    report = json.loads((case / files.REPORT_FILE).read_text())
    assert sum(report["classification"].values()) == pytest.approx(1.0, abs=1e-5)
    assert report["input"]["size"] == list(ct.size_ijk)
    assert report["input"]["origin"] == pytest.approx(ct.geometry_dict()["origin"])
    app = headless.HeadlessSlicer()
    try:
        recon = app.logics["Volumes"].AddArchetypeVolume(
            str(case / files.RECONSTRUCTION_FILE), "recon", 0)
        np.testing.assert_allclose(nodes.ijk_to_ras_of(recon), ct.ijk_to_ras, atol=1e-4)
        assert slicer.util.arrayFromVolume(recon).shape == ct.array.shape
        seg = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(case / files.SEGMENTATION_FILE))
        assert storage.ReadData(seg)
        lesion_types = modelio.read_card(model_dir)["lesion_types"]
        assert sorted(seg.GetSegmentation().GetSegmentIDs()) == sorted(lesion_types)
        reference = nodes.volume_node_from_ct(app.scene, ct, "reference")
        for lesion_type in lesion_types:  # the masks sit on the input's grid
            assert nodes.segment_mask_array(seg, lesion_type, reference).shape == ct.array.shape
    finally:
        app.close()


def test_analyze_nifti_and_dicom(tmp_path, model_dir, small_nifti, dicom_subset, capsys):
    out = tmp_path / "out"
    code = cli.main(["analyze", str(small_nifti), str(dicom_subset), "--output", str(out),
                     "--model", str(model_dir), "--device", "cpu", "--mrb", "--no-progress"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_OK, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["LIDC-IDRI-0001", "small"]
    _assert_case(out / "small", small_nifti, model_dir)
    _assert_case(out / "LIDC-IDRI-0001", dicom_subset, model_dir)
    assert (out / "small" / "small.mrb").is_file()
    for case in ("small", "LIDC-IDRI-0001"):
        assert (out / case / files.PREVIEW_FILE).stat().st_size > 5000
    assert "2 inputs analysed, 0 failed" in captured.out


def test_bad_input_is_skipped_without_a_folder(tmp_path, model_dir, small_nifti, capsys):
    out = tmp_path / "out"
    (out / "earlier-case").mkdir(parents=True)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    empty_dicom = tmp_path / "empty-series"
    empty_dicom.mkdir()
    code = cli.main(["analyze", str(bad), str(small_nifti), str(empty_dicom), "--output",
                     str(out), "--model", str(model_dir), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_SOME_FAILED
    assert sorted(p.name for p in out.iterdir()) == ["earlier-case", "small"]
    assert "broken.nii.gz" in captured.err and "empty-series" in captured.err
    assert "1 input analysed, 2 failed" in captured.out
    assert "[empty-dicom-folder]" in captured.out


def test_collisions_with_existing_cases(tmp_path, model_dir, small_nifti):
    out = tmp_path / "out"
    args = ["analyze", str(small_nifti), "--output", str(out), "--model", str(model_dir),
            "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0
    first = (out / "small" / files.REPORT_FILE).read_text()
    assert cli.main(args + ["--no-preview"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["small", "small-2"]
    assert (out / "small" / files.REPORT_FILE).read_text() == first
    assert (out / "small" / files.PREVIEW_FILE).is_file()
    assert not (out / "small-2" / files.PREVIEW_FILE).exists()


def test_model_problems_stop_before_any_work(tmp_path, small_nifti, monkeypatch, capsys):
    out = tmp_path / "out"
    code = cli.main(["analyze", str(small_nifti), "--output", str(out), "--model",
                     str(tmp_path / "no-such-model")])
    assert code == cli.EXIT_CANNOT_START
    assert "model" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []

    def no_bundled_model():
        raise modelio.ModelLoadError("no bundled model yet: pass --model DIR")

    monkeypatch.setattr(modelio, "default_model_dir", no_bundled_model)
    code = cli.main(["analyze", str(small_nifti), "--output", str(out)])
    assert code == cli.EXIT_CANNOT_START
    assert "no bundled model" in capsys.readouterr().err


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "ChestCTMTL"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def test_batch_script_runs_alone(tmp_path, model_dir, small_nifti):
    out = tmp_path / "out"
    bad = tmp_path / "missing.nrrd"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the script must find its packages from its own location
    env.setdefault("OMP_NUM_THREADS", "2")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--input", str(small_nifti), str(bad), "--output", str(out),
         "--model", str(model_dir), "--device", "cpu", "--mrb", "--no-progress"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["small"]
    assert {p.name for p in (out / "small").iterdir()} >= set(files.CASE_FILES) | {"small.mrb"}
    assert "missing.nrrd" in run.stderr
    app = headless.HeadlessSlicer()
    try:
        assert app.scene.ReadFromMRB(str(out / "small" / "small.mrb"))
        volume = app.scene.GetFirstNodeByName("small")
        assert nodes.find_result_nodes(app.scene, volume) is not None
    finally:
        app.close()


def test_python_dash_m_entry_point(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ChestCTMTLMRML", "analyze", "--help"],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0
    assert "--output" in run.stdout and "--mrb" in run.stdout and "--no-preview" in run.stdout
    run = subprocess.run([sys.executable, "-m", "ChestCTMTLMRML", "analyze"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--output" in run.stderr


def test_unavailable_device_stops_before_any_work(tmp_path, model_dir, small_nifti, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present, so --device cuda is available here")
    out = tmp_path / "out"
    code = cli.main(["analyze", str(small_nifti), "--output", str(out), "--model",
                     str(model_dir), "--device", "cuda"])
    assert code == cli.EXIT_CANNOT_START
    assert "cuda" in capsys.readouterr().err.lower()
    assert not out.exists()


def test_score_threshold_filters_findings(tmp_path, model_dir, small_nifti):
    """The batch path hands its options to the one Analyzer: the lung-blind pipeline (where an
    untrained detector does give findings) lists all of them at 0 and none at 1."""
    from ChestCTMTLMRML import batch

    counts = {}
    for threshold in (0.0, 1.0):
        out = tmp_path / str(threshold)
        outcomes = batch.analyze_inputs([small_nifti], out, model=model_dir, device="cpu",
                                        lungs=False, score_threshold=threshold,
                                        progress_bar=False, preview=False)
        assert batch.exit_code(outcomes) == cli.EXIT_OK
        report = json.loads((out / "small" / files.REPORT_FILE).read_text())
        counts[threshold] = len(report["findings"])
        assert outcomes[0].n_findings == counts[threshold]
    assert counts[1.0] == 0 < counts[0.0]


@pytest.mark.parametrize("value", ["{high}1", "-0.1", "nan", "abc"])
def test_score_threshold_outside_the_options_range_is_refused(tmp_path, small_nifti, capsys,
                                                              value):
    """The CLI refuses what AnalysisOptions refuses, with its message, before any work."""
    from ChestCTMTLLib.options import RANGES

    low, high = RANGES["score_threshold"]
    value = value.format(high=high)
    with pytest.raises(SystemExit) as exited:
        cli.main(["analyze", str(small_nifti), "--output", str(tmp_path / "bad"),
                  "--score-threshold=" + value])
    err = capsys.readouterr().err
    assert exited.value.code == cli.EXIT_CANNOT_START and "--score-threshold" in err
    if value != "abc":
        assert "must lie in [{:g}, {:g}]".format(low, high) in err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        cli.main(["analyze", str(small_nifti), "--output", str(tmp_path / "bad"),
                  "--device", "tpu"])
    assert "device must be one of" in capsys.readouterr().err


def test_one_model_load_and_one_analyzer_for_all_inputs(tmp_path, model_dir, small_nifti,
                                                        monkeypatch, capsys):
    """Options are resolved once and the model is loaded once, however many inputs."""
    from ChestCTMTLLib import inference
    from ChestCTMTLMRML import batch

    loads, analyzers = [], []
    real_load = modelio.load_model

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    class CountingAnalyzer(inference.Analyzer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            analyzers.append(self)

    monkeypatch.setattr(modelio, "load_model", counting_load)
    monkeypatch.setattr(inference, "Analyzer", CountingAnalyzer)
    other = tmp_path / "other.nii.gz"
    shutil.copy(small_nifti, other)
    out = tmp_path / "out"
    code = cli.main(["analyze", str(small_nifti), str(other), str(tmp_path / "missing.nrrd"),
                     "--output", str(out), "--model", str(model_dir), "--device", "cpu",
                     "--score-threshold", "0.25", "--no-progress", "--no-preview"])
    assert code == cli.EXIT_SOME_FAILED, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["other", "small"]
    assert len(loads) == 1 and len(analyzers) == 1
    options = analyzers[0].options
    assert (options.device, options.score_threshold) == ("cpu", 0.25)
    assert analyzers[0].device == "cpu"
    # an Analyzer that exists is reused as it is: no load at all
    outcomes = batch.analyze_inputs([small_nifti], tmp_path / "again", analyzer=analyzers[0],
                                    progress_bar=False, preview=False)
    assert batch.exit_code(outcomes) == cli.EXIT_OK and len(loads) == 1 and len(analyzers) == 1
    with pytest.raises(TypeError):
        batch.analyze_inputs([small_nifti], tmp_path / "x", analyzer=analyzers[0], device="cpu")


def test_inputs_are_read_while_the_model_loads_and_the_case_before_is_written(
        tmp_path, model_dir, small_nifti, monkeypatch, capsys):
    """Each input is read one turn ahead in a background thread: the first while the Analyzer
    is built (torch import + model load), the next while the case before it is written. The
    Analyzer and the writer below wait until that read has begun; read in turn, they would
    wait in vain. A bad input in the middle still gets its own message, in its place."""
    import threading

    from ChestCTMTLLib import inference, volume_io

    other = tmp_path / "other.nii.gz"
    shutil.copy(small_nifti, other)
    missing = tmp_path / "missing.nrrd"
    inputs = [small_nifti, missing, other]
    began = {str(path): threading.Event() for path in inputs}
    real_read, real_write = volume_io.read_ct, files.write_case

    def recording_read(path, *args, **kwargs):
        began[str(path)].set()
        return real_read(path, *args, **kwargs)

    class WaitingAnalyzer(inference.Analyzer):
        def __init__(self, *args, **kwargs):
            assert began[str(small_nifti)].wait(30), "first input not read during model load"
            super().__init__(*args, **kwargs)

    def waiting_write(scene, volume, result, case_dir, **kwargs):
        if volume.source_path == str(small_nifti):
            assert began[str(missing)].wait(30), "next input not read while writing"
        return real_write(scene, volume, result, case_dir, **kwargs)

    monkeypatch.setattr(volume_io, "read_ct", recording_read)
    monkeypatch.setattr(inference, "Analyzer", WaitingAnalyzer)
    monkeypatch.setattr(files, "write_case", waiting_write)
    out = tmp_path / "out"
    code = cli.main(["analyze"] + [str(p) for p in inputs] + [
        "--output", str(out), "--model", str(model_dir), "--device", "cpu", "--no-progress",
        "--no-preview"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_SOME_FAILED, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["other", "small"]
    lines = captured.out.splitlines()
    assert lines[0].startswith("ok      " + str(small_nifti))
    assert lines[1].startswith("FAILED  {} [not-found]".format(missing))
    assert lines[2].startswith("ok      " + str(other))


def test_the_command_ends_without_interpreter_teardown(tmp_path, model_dir):
    """``chestctmtl`` (cli.console_main) exits as soon as its work is done: the summary still
    reaches a pipe, the exit code is main's, and Python's teardown (which runs atexit
    functions, here one that prints) is skipped."""
    program = ("import atexit, sys\n"
               "atexit.register(lambda: print('interpreter teardown'))\n"
               "from ChestCTMTLMRML.cli import console_main\n"
               "console_main(sys.argv[1:])\n")
    run = subprocess.run(
        [sys.executable, "-c", program, "analyze", str(tmp_path / "missing.nrrd"), "--output",
         str(tmp_path / "out"), "--model", str(model_dir), "--device", "cpu", "--no-progress"],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == cli.EXIT_SOME_FAILED, run.stderr
    assert "0 inputs analysed, 1 failed" in run.stdout
    assert "interpreter teardown" not in run.stdout
    assert "missing.nrrd" in run.stderr


def test_the_reconstruction_is_compressed_while_the_lung_stages_run(
        tmp_path, model_dir, small_nifti, monkeypatch):
    """The batch starts reconstruction.nrrd's voxels as soon as the network has run (before
    the lung and candidate stages, which use one core), and the file it writes is the one
    written after the analysis, byte for byte. A failed write (here: the preview) leaves no
    case and closes the compression; a bundle (--mrb) builds the node instead and starts none."""
    from ChestCTMTLLib import inference, nrrd_file
    from ChestCTMTLMRML import batch

    events, made, folders = [], [], []
    real_ahead, real_stage = files.reconstruction_ahead, inference.lesion_stage

    def recording_ahead(volume, source, directory=None):
        events.append("reconstruction")
        folders.append(directory)
        made.append(real_ahead(volume, source, directory))
        return made[-1]

    def recording_stage(*args, **kwargs):
        events.append("lung stage")
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(files, "reconstruction_ahead", recording_ahead)
    monkeypatch.setattr(inference, "lesion_stage", recording_stage)
    analyzer = inference.Analyzer(model_dir, device="cpu", num_threads=1)
    case, result = batch.analyze_one(small_nifti, tmp_path / "out", analyzer, preview=False)
    assert events == ["reconstruction", "lung stage"]
    assert made[0].source is result.reconstruction_source()
    direct = tmp_path / "direct.nrrd"
    nrrd_file.write_slabs(direct, result.volume.array.shape, result.volume.ijk_to_ras,
                          result.reconstruction_source().hu_slabs(nrrd_file.SLAB_DEPTH))
    assert (case / files.RECONSTRUCTION_FILE).read_bytes() == direct.read_bytes()
    with pytest.raises(ValueError, match="closed"):  # closed by the batch once written
        made[0].write(tmp_path / "again.nrrd")

    def failing_preview(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files, "_preview_in_background", failing_preview)
    with pytest.raises(OSError, match="disk full"):
        batch.analyze_one(small_nifti, tmp_path / "failed", analyzer)
    assert len(made) == 2 and made[1]._body.closed
    # an output folder that exists holds the waiting voxels (an unnamed file: nothing to see)
    (tmp_path / "exists").mkdir()
    before = len(made)
    batch.analyze_one(small_nifti, tmp_path / "exists", analyzer, preview=False)
    assert len(made) == before + 1
    assert folders[0] is None and folders[-1] == tmp_path / "exists"
    assert [p.name for p in (tmp_path / "exists").iterdir()] == ["small"]
    assert not (tmp_path / "failed").exists() or list((tmp_path / "failed").iterdir()) == []
    monkeypatch.undo()

    def no_room(*args, **kwargs):
        raise OSError("no space left for the temporary file")

    # no room to compress ahead: the case is still written, with the same file
    monkeypatch.setattr(nrrd_file.tempfile, "TemporaryFile", no_room)
    case, _ = batch.analyze_one(small_nifti, tmp_path / "no-room", analyzer, preview=False)
    assert (case / files.RECONSTRUCTION_FILE).read_bytes() == direct.read_bytes()
    monkeypatch.undo()
    monkeypatch.setattr(files, "reconstruction_ahead", recording_ahead)
    case, _ = batch.analyze_one(small_nifti, tmp_path / "bundle", analyzer, mrb=True,
                                preview=False)
    assert len(made) == before + 1 and (case / "small.mrb").is_file()
