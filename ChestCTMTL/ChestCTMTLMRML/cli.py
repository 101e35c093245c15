"""``chestctmtl analyze INPUT [INPUT ...] --output OUTDIR [--model DIR] [--device ...]
[--score-threshold S] [--mrb] [--no-preview] [--lobes PATH] [--dicom [--send HOST:PORT:AET]]``.

Runs outside Slicer on a headless slicer-core scene, through the same functions as the Slicer
module and the batch script. The command line becomes one
:class:`~ChestCTMTLLib.options.AnalysisOptions` (:func:`options_from_args`), so defaults,
ranges and their messages are those of :mod:`ChestCTMTLLib.options`, and one
:class:`~ChestCTMTLLib.inference.Analyzer` analyses every input. Exit codes: 0 all inputs
analysed; 1 at least one input failed (the others are written); 2 nothing could start (no
model, no such device, bad arguments, a missing Python package, any unexpected error); 3 every
case was written but some could not be sent to the PACS (``--send``; the files stay in the
case folders).
:func:`run_analyze` never lets an exception out: inside Slicer (``--python-script``) an
uncaught one would leave the application running with no window, so every failure becomes a
message on stderr and an exit code.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Callable, List, Optional

from ChestCTMTLLib.options import DEVICES, PRECISIONS, RANGES, RUNTIMES, AnalysisOptions, OptionError

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_CANNOT_START = 2
EXIT_NOT_SENT = 3


def _option_type(name: str, parse: Callable) -> Callable:
    """An argparse ``type`` that parses a text and lets AnalysisOptions judge the value, so
    the command line refuses exactly what the options refuse, with the same message."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError("{} must be a number, got {!r}".format(name, text)) \
                from None
        try:
            return getattr(AnalysisOptions(**{name: value}), name)  # as the options store it
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in its "invalid ... value" message
    return convert


def add_analyze_arguments(parser: argparse.ArgumentParser, input_flag: bool = False) -> None:
    """The arguments shared by ``chestctmtl analyze`` and Scripts/batch_analyze.py."""
    if input_flag:
        parser.add_argument("--input", "-i", dest="inputs", nargs="+", required=True,
                            metavar="INPUT", help="CT volume files or DICOM series folders")
    else:
        parser.add_argument("inputs", nargs="+", metavar="INPUT",
                            help="CT volume files (.nrrd, .nii, .nii.gz, .mha) or DICOM folders")
    parser.add_argument("--output", "-o", required=True, metavar="OUTDIR",
                        help="folder for the case folders (may already hold other cases)")
    parser.add_argument("--model", metavar="MODEL_DIR", default=None,
                        help="model folder (default: the bundled model)")
    parser.add_argument("--device", type=_option_type("device", str),
                        default=AnalysisOptions().device, metavar="|".join(DEVICES),
                        help="where to run the model: {} (or cuda:N; default: {} = GPU if "
                             "present)".format(", ".join(DEVICES), AnalysisOptions().device))
    parser.add_argument("--precision", type=_option_type("precision", str),
                        default=AnalysisOptions().precision, metavar="|".join(PRECISIONS),
                        help="the network's arithmetic (default auto: bfloat16 on a CPU with "
                             "native bfloat16 - AMX or AVX512-BF16 - and on a GPU, else float32)")
    parser.add_argument("--runtime", type=_option_type("runtime", str),
                        default=AnalysisOptions().runtime, metavar="|".join(RUNTIMES),
                        help="what runs the network (default auto: ONNX Runtime for a float32 "
                             "network on the CPU when onnxruntime and onnx are installed, else PyTorch)")
    parser.add_argument("--mrb", action="store_true",
                        help="also write <case>.mrb, a Slicer scene ready for review")
    low, high = RANGES["score_threshold"]
    parser.add_argument("--score-threshold", type=_option_type("score_threshold", float),
                        default=None, metavar="S",
                        help="list detected lesions scoring at least S ({:g}-{:g}; default: the "
                             "model's calibrated operating point). The verdict always uses "
                             "the calibrated point".format(low, high))
    parser.add_argument("--no-preview", action="store_true",
                        help="do not write preview.png (a picture of the result) per case")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--lobes", metavar="PATH", default=None,
                        help="lung lobes of the (single) input from another segmenter, for "
                             "per-lobe involvement and the Pan et al. CT severity score: a "
                             "TotalSegmentator output folder, a Slicer .seg.nrrd, or a label map "
                             "(lungmask LTRCLobes 1-5, TotalSegmentator --ml 10-14)")
    parser.add_argument("--dicom", action="store_true",
                        help="also write lesions.seg.dcm (DICOM SEG) and findings.sr.dcm (TID 1500 "
                             "SR) referencing the source series; DICOM series inputs only")
    parser.add_argument("--send", type=_destination, default=None, metavar="HOST:PORT:AET",
                        help="C-STORE the DICOM objects to this PACS (implies --dicom); a failed "
                             "send keeps the files and exits with {}".format(EXIT_NOT_SENT))


def _destination(text: str) -> str:
    from ChestCTMTLLib.dicom_send import parse_destination

    try:
        return str(parse_destination(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def options_from_args(args) -> AnalysisOptions:
    """The one AnalysisOptions a parsed command line stands for (raises OptionError)."""
    return AnalysisOptions(device=getattr(args, "device", None) or AnalysisOptions().device,
                           score_threshold=getattr(args, "score_threshold", None),
                           precision=getattr(args, "precision", None) or "auto",
                           runtime=getattr(args, "runtime", None) or "auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chestctmtl", description="Chest CT multi-task analysis (ChestCTMTL).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    analyze = commands.add_parser(
        "analyze", help="analyse CTs into Slicer-readable case folders",
        description="Analyse chest CTs: lesion segmentation, reconstruction, detected lesions "
                    "and the classification, one folder per input.")
    add_analyze_arguments(analyze)
    return parser


#: How to get a package the analysis needs that a fresh Slicer (or a bare Python) lacks.
_INSTALL_HINTS = {
    "torch": "In 3D Slicer: install the 'PyTorch' extension (Extensions Manager), restart, then "
             "click 'Install PyTorch' in the PyTorch Utils module (or click Analyze in the "
             "ChestCTMTL module, which offers to install it). Outside Slicer: "
             "pip install -r requirements.txt (it pins torch)",
    "safetensors": "In 3D Slicer: click Analyze in the ChestCTMTL module (it offers to install "
                   "it), or run slicer.util.pip_install('safetensors') in the Python console. "
                   "Outside Slicer: pip install -r requirements.txt",
}


def missing_package_message(exc: ImportError) -> str:
    """What is missing and how to get it, for an ImportError raised by the analysis."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or not name:
        return "a Python package failed to load: {}".format(exc)
    hint = _INSTALL_HINTS.get(name, "install it with pip (in 3D Slicer: "
                                    "slicer.util.pip_install('{}'))".format(name))
    return "the Python package '{}' is not installed. {}.".format(name, hint)


def run_analyze(args, scene=None, out=None, err=None) -> int:
    """Execute parsed analyze arguments; prints the summary; returns the exit code.

    Never raises (see the module docstring): what stops the batch before its first case is a
    message and EXIT_CANNOT_START; failures of single inputs are the batch's own (exit 1).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        from ChestCTMTLLib.errors import ChestCTMTLError

        from . import batch
    except ImportError as exc:
        print("chestctmtl: cannot start: {}".format(missing_package_message(exc)), file=err)
        return EXIT_CANNOT_START
    try:
        options = options_from_args(args)
        outcomes = batch.analyze_inputs(args.inputs, args.output, model=args.model,
                                        options=options, mrb=args.mrb, scene=scene,
                                        progress_bar=not args.no_progress, stream=err,
                                        preview=not getattr(args, "no_preview", False),
                                        lobes=getattr(args, "lobes", None),
                                        dicom=getattr(args, "dicom", False),
                                        send=getattr(args, "send", None))
    except ChestCTMTLError as exc:
        print("chestctmtl: cannot start ({}): {}".format(exc.cause, exc), file=err)
        return EXIT_CANNOT_START
    except OSError as exc:
        print("chestctmtl: cannot start: {}".format(exc), file=err)
        return EXIT_CANNOT_START
    except ImportError as exc:
        print("chestctmtl: cannot start: {}".format(missing_package_message(exc)), file=err)
        return EXIT_CANNOT_START
    except Exception as exc:  # noqa: BLE001 - a bug must end the run with a message, not hang it
        traceback.print_exc(file=err)
        print("chestctmtl: cannot start (internal error {}): {}".format(type(exc).__name__, exc),
              file=err)
        return EXIT_CANNOT_START
    for line in batch.summary_lines(outcomes):
        print(line, file=out)
    return batch.exit_code(outcomes)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "analyze":
        return run_analyze(args)
    return EXIT_CANNOT_START  # pragma: no cover - argparse enforces a command


def console_main(argv: Optional[List[str]] = None) -> None:
    """The ``chestctmtl`` command (and ``python -m ChestCTMTLMRML``): :func:`main`, then the
    process ends at once with its exit code.

    When main returns, every case folder is complete and closed and no thread of ours runs
    (a read-ahead of an input that will never be analysed, after a failed start, is simply
    dropped). What the interpreter would still do is tear down torch, VTK and every other
    module object by object, about a second after an analysis, for memory and files the
    operating system releases when the process ends anyway. So the output streams and the
    logging handlers are flushed and the process exits without that teardown. Library callers
    (tests, the batch script, Slicer) use :func:`main` or :func:`run_analyze`, which return.
    """
    code = main(argv)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):  # closed or replaced streams
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    console_main()
