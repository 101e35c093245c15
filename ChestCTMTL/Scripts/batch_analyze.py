"""Batch analysis, the one entry script.

In Slicer::

    Slicer --no-main-window --python-script ChestCTMTL/Scripts/batch_analyze.py \
        --input IN [IN ...] --output OUTDIR [--mrb] [--model MODEL_DIR] [--device auto|cpu|cuda]
        [--score-threshold S] [--no-preview]

or with the project's Python alone (no Slicer; slicer-core gives the MRML scene)::

    .venv/bin/python ChestCTMTL/Scripts/batch_analyze.py --input IN --output OUTDIR

Both run ChestCTMTLMRML.batch, the code behind ``chestctmtl analyze`` (the same arguments, one
AnalysisOptions, one Analyzer for every input), and write the same case folders. Exit code:
0 all inputs analysed, 1 some failed (the rest are written), 2 nothing could start (no model,
no such device, bad arguments).
"""
from __future__ import annotations

import argparse
import os
import sys


def _script_path() -> str:
    # Slicer's --python-script executes the file with __file__ set; keep argv[0] as a fallback.
    path = globals().get("__file__") or (sys.argv[0] if sys.argv else "")
    return os.path.abspath(path)


_MODULE_DIR = os.path.dirname(os.path.dirname(_script_path()))  # .../ChestCTMTL
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)


def main(argv=None) -> int:
    from ChestCTMTLMRML import cli, headless

    parser = argparse.ArgumentParser(
        prog="batch_analyze.py",
        description="Analyse chest CTs into Slicer-readable case folders (ChestCTMTL).")
    cli.add_analyze_arguments(parser, input_flag=True)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    # Inside Slicer the cases are built in slicer.mrmlScene (and removed after writing);
    # outside, each case gets a private headless scene.
    scene = headless.get_scene() if headless.inside_slicer_application() else None
    return cli.run_analyze(args, scene=scene)


def _exit(code: int) -> None:
    try:
        import slicer

        if hasattr(slicer, "app") and hasattr(slicer, "util"):
            slicer.util.exit(code)  # quits the application event loop with this status
            return
    except ImportError:
        pass
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
