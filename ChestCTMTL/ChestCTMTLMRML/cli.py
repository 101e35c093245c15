"""``chestctmtl analyze INPUT [INPUT ...] --output OUTDIR [--model DIR] [--device ...] [--mrb]
[--no-preview]``.

Runs outside Slicer on a headless slicer-core scene, through the same functions as the Slicer
module and the batch script. Exit codes: 0 all inputs analysed; 1 at least one input failed
(the others are written); 2 nothing could start (no model, no such device, bad arguments).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_CANNOT_START = 2


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: {!r}".format(text))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must lie in [0, 1], got {}".format(value))
    return value


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
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run the model (default: auto = GPU if present)")
    parser.add_argument("--mrb", action="store_true",
                        help="also write <case>.mrb, a Slicer scene ready for review")
    parser.add_argument("--score-threshold", type=_unit_interval, default=None, metavar="S",
                        help="keep detected lesions scoring at least S (0-1; default: the "
                             "inference default, sensitivity-first for review)")
    parser.add_argument("--no-preview", action="store_true",
                        help="do not write preview.png (a picture of the result) per case")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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


def run_analyze(args, scene=None, out=None, err=None) -> int:
    """Execute parsed analyze arguments; prints the summary; returns the exit code."""
    from ChestCTMTLLib.errors import ChestCTMTLError

    from . import batch

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        outcomes = batch.analyze_inputs(args.inputs, args.output, model=args.model,
                                        device=args.device, mrb=args.mrb, scene=scene,
                                        progress_bar=not args.no_progress, stream=err,
                                        preview=not getattr(args, "no_preview", False),
                                        score_threshold=getattr(args, "score_threshold", None))
    except ChestCTMTLError as exc:
        print("chestctmtl: cannot start ({}): {}".format(exc.cause, exc), file=err)
        return EXIT_CANNOT_START
    except OSError as exc:
        print("chestctmtl: cannot start: {}".format(exc), file=err)
        return EXIT_CANNOT_START
    for line in batch.summary_lines(outcomes):
        print(line, file=out)
    return batch.exit_code(outcomes)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "analyze":
        return run_analyze(args)
    return EXIT_CANNOT_START  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
