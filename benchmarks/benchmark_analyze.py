"""Benchmark of ``analyze`` on the real CTs in the data root; prints one JSON document.

For each backbone and case it measures, each in a fresh process so start-up and peak memory
are the user's:

* ``whole_process``: ``chestctmtl analyze CASE --output TMP --model M --device D`` as a user
  runs it (interpreter start, imports, reading, inference, writing every output file), with
  its wall time and peak RSS (``os.wait4`` of that child alone);
* ``stages``: a second child that runs the same steps one after the other and times each:
  ``stage_table``, one row per stage in the order they run -- the imports (slicer-core + vtk
  with the file writers, torch), reading the CT, each analysis stage (``Analyzer.apply``'s
  timings), building the result nodes, each file written (``lesions.seg.nrrd`` ...
  ``report.json``) and ``preview.png`` -- plus slices analysed and slices per second. The
  whole process overlaps some of them (the CT is read while torch is imported), so the rows
  add up to more than ``whole_process``;
* ``model``: parameter count and GFLOPs per slice (PyTorch's FLOP counter, all four heads, one
  slice at the model's input size; 1 multiply-add = 2 FLOPs).

Untrained weights are used unless ``--model`` is given: speed and memory do not depend on the
weight values, except post-processing of an untrained model's meaningless, large masks.
Targets from issue 3 (2-core CPU, LIDC-IDRI-0002, default backbone): <= 30 s and <= 3 GB for
the whole process; aim 15 s / 2 GB. The load average is reported because on a shared machine
other processes' CPU use inflates every number.

    .venv/bin/python benchmarks/benchmark_analyze.py [--backbones fast vgg13 resnet50]
        [--cases LIDC-IDRI-0002 LIDC-IDRI-0001] [--device cpu|cuda|both] [--model DIR]
        [--threads N] [--repeat N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ChestCTMTL"), str(REPO)]

from ChestCTMTLLib.paths import data_root  # noqa: E402

CASES = {
    "LIDC-IDRI-0002": ("lidc", "LIDC-IDRI-0002-nifti", "image.nii.gz"),
    "LIDC-IDRI-0001": ("lidc", "LIDC-IDRI-0001"),
}
PRECISION = "auto"  # --precision, passed to every child
RUNTIME = "auto"  # --runtime, passed to every child
TARGET = {"case": "LIDC-IDRI-0002", "backbone": "fast", "max_wall_s": 30.0, "max_rss_gb": 3.0,
          "aim_wall_s": 15.0, "aim_rss_gb": 2.0}


#: LIDC-IDRI-0002 resampled to a thin-slice CT (1,044 slices of 0.31 mm, same anatomy, int16),
#: made on first use under the cache folder: how time and memory grow with the slice count.
THIN_CASE = "LIDC-IDRI-0002-thin1044"
THIN_SLICES = 1044


def _thin_case() -> Path:
    import SimpleITK as sitk

    target = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chestctmtl" / \
        "benchmark" / (THIN_CASE + ".nii.gz")
    if target.exists():
        return target
    source = data_root().joinpath(*CASES["LIDC-IDRI-0002"])
    if not source.exists():
        return source  # reported as missing by the caller
    image = sitk.ReadImage(str(source))
    size, spacing = list(image.GetSize()), list(image.GetSpacing())
    new_spacing = spacing[2] * (size[2] - 1) / (THIN_SLICES - 1)
    thin = sitk.Resample(image, [size[0], size[1], THIN_SLICES], sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), [spacing[0], spacing[1], new_spacing],
                         image.GetDirection(), -1024, sitk.sitkInt16)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(".partial-" + target.name)
    sitk.WriteImage(thin, str(partial), True)
    os.replace(partial, target)
    return target


def _case_path(name: str) -> Path:
    if name == THIN_CASE:
        return _thin_case()
    return data_root().joinpath(*CASES[name])


def _env(threads):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "ChestCTMTL"), str(REPO)]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _run_child(cmd, env):
    """(wall seconds, peak RSS bytes of this child alone, exit code, stdout, stderr).

    Output goes to temporary files (not pipes) so a chatty child cannot block, and
    ``os.wait4`` gives the resource usage of exactly this child.
    """
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, cwd=str(REPO))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out = fo.read().decode("utf-8", "replace")
        err = fe.read().decode("utf-8", "replace")
    return wall, usage.ru_maxrss * 1024, proc.returncode, out, err


def _cli_available() -> bool:
    try:
        import ChestCTMTLMRML.cli  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False


def whole_process(case: Path, model_dir: Path, device: str, threads) -> dict:
    with tempfile.TemporaryDirectory(prefix="chestctmtl-bench-") as out:
        if _cli_available():
            cmd = [sys.executable, "-m", "ChestCTMTLMRML", "analyze", str(case), "--output", out,
                   "--model", str(model_dir), "--device", device, "--no-progress",
                   "--precision", PRECISION, "--runtime", RUNTIME]
            what = "chestctmtl analyze (start-up + read + analyze + write all outputs)"
        else:
            cmd = [sys.executable, __file__, "--child-stages", str(case), str(model_dir), device]
            what = "CLI not importable: read_ct + analyze only, NO output writing"
        wall, rss, code, stdout, stderr = _run_child(cmd, _env(threads))
        reports = list(Path(out).rglob("report.json"))
        report = json.loads(reports[0].read_text()) if reports else None
        written = sorted(p.name for p in Path(out).rglob("*") if p.is_file())
    res = {"what": what, "wall_s": round(wall, 3), "peak_rss_gb": round(rss / 1e9, 3),
           "exit_code": code, "files_written": written}
    if report:
        res["analyze_timings_s"] = report.get("timings_s")
    if code != 0:
        res["stderr_tail"] = stderr[-2000:]
    return res


def stages(case: Path, model_dir: Path, device: str, threads) -> dict:
    cmd = [sys.executable, __file__, "--child-stages", str(case), str(model_dir), device,
           "--precision", PRECISION, "--runtime", RUNTIME]
    wall, rss, code, stdout, stderr = _run_child(cmd, _env(threads))
    if code != 0:
        return {"error": stderr[-2000:], "exit_code": code}
    res = json.loads(stdout.strip().splitlines()[-1])
    res["process_wall_s"] = round(wall, 3)
    res["peak_rss_gb"] = round(rss / 1e9, 3)
    return res


class _StageClock:
    """Times calls of module functions by replacing them in their module (a benchmark
    child's own instrumentation; the timed code is the shipped one)."""

    def __init__(self) -> None:
        self.rows = []

    def wrap(self, owner, name, label):
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.rows.append([label(*args, **kwargs) if callable(label) else label,
                                  round(time.perf_counter() - started, 3)])

        setattr(owner, name, timed)


def child_stages(case: str, model_dir: str, device: str) -> None:
    """Runs in the child: the CLI's steps one after the other, each timed (``stage_table``)."""
    table = []

    def step(label, started):
        now = time.perf_counter()
        table.append([label, round(now - started, 3)])
        return now

    t0 = time.perf_counter()
    try:
        from ChestCTMTLMRML import files, nodes
    except ImportError:  # no slicer-core: the analysis alone is timed
        files = nodes = None
    t = step("import slicer-core, vtk, file writers", t0)
    import torch  # noqa: F401

    from ChestCTMTLLib import inference, volume_io
    from ChestCTMTLLib.options import AnalysisOptions
    t1 = t = step("import torch", t)
    volume = volume_io.read_ct(case)
    t2 = t = step("read_ct", t)
    # device, model and calibration resolved once, as every front end does
    analyzer = inference.Analyzer(model_dir, AnalysisOptions(device=device, precision=PRECISION,
                                                             runtime=RUNTIME))
    t3 = t = step("Analyzer (model load)", t)
    clock = _StageClock()
    if files is not None:  # as the batch does: reconstruction.nrrd compressed beside the lungs
        from ChestCTMTLLib import nrrd_file

        clock.wrap(nrrd_file.SlabsAhead, "_compress",
                   "write: %s voxels (compressed ahead, in its own thread beside the lung "
                   "stages)" % files.RECONSTRUCTION_FILE)
    scratch = tempfile.TemporaryDirectory(prefix="chestctmtl-bench-case-")
    ahead = files.ReconstructionAhead(volume, scratch.name) if files is not None else None
    result = analyzer.apply(volume, reconstruction_ready=ahead)
    t4 = time.perf_counter()
    table += [["analysis: " + k, round(v, 3)] for k, v in result.timings_s.items()
              if k != "total"]
    t = step("analysis (Analyzer.apply)", t)
    written = None
    if files is not None:
        clock.wrap(nodes, "create_result_nodes", "write: result nodes")
        clock.wrap(files, "_write_segmentation", lambda node, path: "write: " + Path(path).name)
        clock.wrap(files, "_write_reconstruction",  # a thread beside the other writes
                   "write: %s (waits for those voxels, in its own thread)"
                   % files.RECONSTRUCTION_FILE)
        clock.wrap(files, "write_markups_file", "write: " + files.MARKUPS_FILE)
        clock.wrap(files, "write_findings_tsv", "write: " + files.FINDINGS_FILE)
        clock.wrap(files, "_write_json", lambda data, path: "write: " + Path(path).name)
        clock.wrap(files.preview_png, "draw_preview", "write: %s (draw)" % files.PREVIEW_FILE)
        clock.wrap(files.preview_png, "save_drawn_png",  # a thread beside the NRRD writes
                   "write: %s (encode, in its own thread)" % files.PREVIEW_FILE)
        with scratch as out, ahead:
            files.write_case(None, volume, result, Path(out) / "case", input_path=str(case),
                             reconstruction=ahead.compressed)
            written = time.perf_counter() - t
        table += [row for row in clock.rows if row[0] is not None]
        t = step("write_case (all files)", t)
    n = int(len(result.analysed_slices))
    net = sum(result.timings_s.get(k, 0.0) for k in ("preprocess", "forward", "map_back"))
    print(json.dumps({
        "stage_table": table,
        "import_s": round(t1 - t0, 3), "read_s": round(t2 - t1, 3),
        "load_model_s": round(t3 - t2, 3), "analyze_s": round(t4 - t3, 3),
        "write_s": round(written, 3) if written is not None else None,
        "analyze_timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
        "slices_total": int(volume.array.shape[0]), "slices_analysed": n,
        "slices_per_s_inference": round(n / net, 2) if net else None,
        "slices_per_s_analyze": round(n / (t4 - t3), 2),
        "torch_threads": torch.get_num_threads(), "device": result.device,
        "precision": result.precision,
        "runtime": result.runtime,
        "n_findings": len(result.findings), "predicted_class": result.predicted_class,
    }))


def model_facts(model_dir: Path) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ChestCTMTLLib.model import count_parameters
    from ChestCTMTLLib.modelio import load_model

    loaded = load_model(model_dir, "cpu")
    size = loaded.config.input_size
    x = torch.zeros(1, loaded.config.in_channels, size, size)
    flops = {}
    with torch.inference_mode():
        for tasks in (None, ("classification",), ("segmentation",), ("reconstruction",),
                      ("detection",)):
            counter = FlopCounterMode(display=False)
            with counter:
                loaded.model(x, tasks)
            flops["all" if tasks is None else tasks[0]] = round(counter.get_total_flops() / 1e9, 3)
    return {"backbone": loaded.config.backbone, "parameters": count_parameters(loaded.model),
            "input_size": size, "gflops_per_slice": flops["all"],
            "gflops_per_slice_encoder_plus_head": {k: v for k, v in flops.items() if k != "all"},
            "model_id": loaded.identity.id}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", nargs="+", default=["fast", "vgg13", "resnet50"])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES) + [THIN_CASE])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "both"))
    ap.add_argument("--model", default=None,
                    help="benchmark this model folder instead of untrained backbones")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for children")
    ap.add_argument("--repeat", type=int, default=1, help="whole-process runs per cell (best kept; all and median listed)")
    ap.add_argument("--skip-stages", action="store_true")
    ap.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                    help="the network's arithmetic (AnalysisOptions.precision)")
    ap.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnxruntime"),
                    help="what runs the network (AnalysisOptions.runtime)")
    ap.add_argument("--child-stages", nargs=3, metavar=("CASE", "MODEL", "DEVICE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global PRECISION, RUNTIME
    PRECISION, RUNTIME = args.precision, args.runtime
    if args.child_stages:
        child_stages(*args.child_stages)
        return 0

    import torch

    devices = ["cpu", "cuda"] if args.device == "both" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices = [d for d in devices if d != "cuda"]
    out = {"benchmark": "chestctmtl analyze", "host": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_before": [round(v, 2) for v in os.getloadavg()]},
        "target": TARGET, "cli_used": _cli_available(), "precision": PRECISION, "runtime": RUNTIME,
        "results": []}
    with tempfile.TemporaryDirectory(prefix="chestctmtl-bench-models-") as tmp:
        models = {}
        if args.model:
            models["given"] = Path(args.model)
        else:
            from ChestCTMTLLib.model import ModelConfig
            from ChestCTMTLLib.modelio import create_untrained_model_folder

            for bb in args.backbones:
                models[bb] = create_untrained_model_folder(Path(tmp) / ("untrained-" + bb),
                                                           ModelConfig(backbone=bb))
        for label, folder in models.items():
            facts = model_facts(folder)
            for case_name in args.cases:
                case = _case_path(case_name)
                if not case.exists():
                    out["results"].append({"case": case_name, "skipped": "missing %s" % case})
                    continue
                for dev in devices:
                    row = {"case": case_name, "backbone": facts["backbone"], "device": dev,
                           "model": facts, "threads": args.threads,
                           "load_average_start": [round(v, 2) for v in os.getloadavg()]}
                    runs = [whole_process(case, folder, dev, args.threads)
                            for _ in range(max(1, args.repeat))]
                    row["whole_process"] = min(runs, key=lambda r: r["wall_s"])
                    if len(runs) > 1:
                        walls = sorted(r["wall_s"] for r in runs)
                        row["whole_process"]["all_wall_s"] = [r["wall_s"] for r in runs]
                        row["whole_process"]["median_wall_s"] = walls[len(walls) // 2]
                    if not args.skip_stages:
                        row["stages"] = stages(case, folder, dev, args.threads)
                    wp = row["whole_process"]
                    if case_name == TARGET["case"] and facts["backbone"] == TARGET["backbone"] \
                            and dev == "cpu":
                        row["meets_target"] = (wp["exit_code"] == 0
                                               and wp["wall_s"] <= TARGET["max_wall_s"]
                                               and wp["peak_rss_gb"] <= TARGET["max_rss_gb"])
                        row["meets_aim"] = (wp["exit_code"] == 0
                                            and wp["wall_s"] <= TARGET["aim_wall_s"]
                                            and wp["peak_rss_gb"] <= TARGET["aim_rss_gb"])
                    out["results"].append(row)
                    print(json.dumps({"progress": [case_name, facts["backbone"], dev,
                                                   wp["wall_s"]]}), file=sys.stderr)
    out["host"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
