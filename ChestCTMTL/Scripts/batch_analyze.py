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
no such device, bad arguments, a missing package such as torch, any unexpected error). The
script always ends with one of these codes and a message on stderr: inside Slicer an exception
that escaped ``--python-script`` would leave the application running without a window.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback


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


EXIT_CANNOT_START = 2  # as ChestCTMTLMRML.cli, which may be what failed to import


def run() -> int:
    """main() as an exit code, whatever happens: a failure to import the packages, a bug, or
    Ctrl-C becomes a message on stderr and EXIT_CANNOT_START, never an exception."""
    try:
        return main()
    except SystemExit as exc:  # sys.exit() in code main() called
        code = exc.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print("batch_analyze.py: {}".format(code), file=sys.stderr)
        return EXIT_CANNOT_START
    except ImportError as exc:
        try:
            from ChestCTMTLMRML.cli import missing_package_message

            text = missing_package_message(exc)
        except Exception:  # noqa: BLE001 - the module itself may be what fails to import
            text = "a Python package failed to load: {}".format(exc)
        print("batch_analyze.py: cannot start: {}".format(text), file=sys.stderr)
        return EXIT_CANNOT_START
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt included: always exit
        traceback.print_exc(file=sys.stderr)
        print("batch_analyze.py: stopped by {}: {}".format(type(exc).__name__, exc), file=sys.stderr)
        return EXIT_CANNOT_START


def _exit(code: int) -> None:
    """End the process with ``code``, inside Slicer as well as in a plain Python.

    Inside Slicer, ``--python-script`` runs this file from the running event loop
    (qSlicerCoreApplication::handleCommandLineArguments, scheduled by a zero-delay timer in
    Base/QTApp/qSlicerApplicationHelper at v5.8.0 and v5.12.3); after the script Slicer quits only
    with --exit-after-startup or --testing (``runPythonAndExit``). ``slicer.util.exit(status)``
    (Base/Python/slicer/util.py, identical at v5.8.0 and v5.12.3) clears ``runPythonAndExit`` so
    nothing overwrites the status and calls ``app.exit(status)``, which quits that event loop
    with the status once pending events are processed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        import slicer

        if hasattr(slicer, "app") and hasattr(slicer, "util"):
            slicer.util.exit(code)
            return
    except Exception:  # noqa: BLE001 - no usable Slicer application: a plain Python exit
        pass
    sys.exit(code)


if __name__ == "__main__":
    _exit(run())
