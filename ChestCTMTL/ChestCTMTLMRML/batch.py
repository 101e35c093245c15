"""Analyse many inputs into case folders: the one path behind ``chestctmtl analyze`` and
``Scripts/batch_analyze.py`` (inside Slicer and out).

Options are resolved and the model is loaded once (one :class:`~ChestCTMTLLib.inference.Analyzer`
for the whole batch); each input is read, analysed and written on its own, so a bad input costs
only its own case (reported, no folder) and the rest of the batch goes on.

Reading is done one input ahead, in a background thread (:class:`_ReadAhead`): SimpleITK
decodes without holding Python's GIL, so the first input is read while slicer-core and torch
are imported and the model is loaded, and each next input while the case before it is written.
A read's failure is kept and raised when its case's turn comes, so errors and their order are
those of reading in turn. This module imports neither slicer nor torch at import time, so that
the first read starts before those imports.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ChestCTMTLLib.errors import ChestCTMTLError
from ChestCTMTLLib.options import AnalysisOptions, OptionError

_LOG = logging.getLogger(__name__)


@dataclass
class CaseOutcome:
    """What happened to one input."""

    input: str
    case_dir: Optional[Path] = None
    error: Optional[str] = None
    cause: Optional[str] = None  # the error's stable cause code ("not-3d", "unreadable-file"...)
    seconds: float = 0.0
    predicted_class: Optional[str] = None
    n_findings: int = 0
    send_error: Optional[str] = None  # --send: the case is written but did not reach the PACS

    @property
    def ok(self) -> bool:
        return self.error is None


def _tqdm_class():
    """tqdm's bar class, or None where tqdm is not installed (a fresh Slicer bundles none)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Progress:
    """Progress over the cases that also moves within a case (fraction + stage text).

    A tqdm bar on a terminal where tqdm is installed; otherwise (Slicer's Python has no tqdm,
    and a log file or a pipe cannot show a redrawn bar) one plain line each time a case enters
    a new stage: ``case 1/3 small: 5% network (2% of all)``. ``enabled`` False prints nothing.
    """

    def __init__(self, total: int, enabled: bool, stream) -> None:
        self._total = max(int(total), 1)
        self._enabled = enabled
        self._stream = stream
        self._bar = None
        self._done = 0
        self._name = ""
        self._stage = None
        tqdm = _tqdm_class() if enabled and _is_terminal(stream) else None
        if tqdm is not None:
            self._bar = tqdm(total=total, unit="case", file=stream, dynamic_ncols=True,
                             bar_format="{l_bar}{bar}| {n:.2f}/{total} [{elapsed}<{remaining}]{postfix}")

    @property
    def uses_tqdm(self) -> bool:
        return self._bar is not None

    def start_case(self, name: str) -> None:
        self._name = name
        self._stage = None

    def progress(self, fraction: float, stage: str) -> None:
        fraction = max(0.0, min(1.0, fraction))
        if self._bar is not None:
            self._bar.n = self._done + fraction
            self._bar.set_postfix_str(stage, refresh=False)
            self._bar.refresh()
            return
        if not self._enabled or not stage or stage == self._stage:
            return
        self._stage = stage
        print("case {}/{} {}: {:.0f}% {} ({:.0f}% of all)".format(
            self._done + 1, self._total, self._name, 100.0 * fraction, stage,
            100.0 * (self._done + fraction) / self._total), file=self._stream, flush=True)

    def case_done(self) -> None:
        self._done += 1
        self._stage = None
        if self._bar is not None:
            self.progress(0.0, "")

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _ReadAhead:
    """``read_ct`` of each input in a background thread, started before its turn.

    :meth:`start` begins reading input ``index`` (at most one read runs at a time, and at most
    one volume waits: the batch holds the case being analysed plus the next input);
    :meth:`take` waits for it and returns the volume or raises the read's own exception;
    :meth:`close` waits for a read nobody will take (a batch that stops before its first case:
    no model, say). A read cannot be interrupted, and a daemon thread still inside ITK when
    the interpreter ends aborts the process ("FATAL: exception not rethrown": the thread is
    unwound through C++ code that catches everything), so every read is waited for.
    """

    def __init__(self, inputs: Sequence) -> None:
        self._inputs = list(inputs)
        self._index: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._outcome: list = []

    def start(self, index: int) -> None:
        if index >= len(self._inputs) or self._index == index:
            return
        self.close()
        self._index, self._outcome = index, []
        outcome, path = self._outcome, self._inputs[index]
        self._thread = threading.Thread(target=self._read, args=(path, outcome),
                                        name="chestctmtl-read-ahead")
        self._thread.start()

    @staticmethod
    def _read(path, outcome: list) -> None:
        from ChestCTMTLLib import volume_io

        try:
            outcome.append((volume_io.read_ct(path), None))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as it is
            outcome.append((None, exc))

    def take(self, index: int):
        self.start(index)
        self._thread.join()
        volume, error = self._outcome[0]
        self._index, self._thread, self._outcome = None, None, []
        if error is not None:
            raise error
        return volume

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self._index, self._thread, self._outcome = None, None, []


def analyze_one(input_path, output_dir, analyzer, mrb: bool = False, scene=None,
                progress: Optional[Callable[[float, str], None]] = None, preview: bool = True,
                lobes=None, dicom: bool = False, read: Optional[Callable[[], object]] = None,
                analysed: Optional[Callable[[], None]] = None):
    """Read, analyse (with ``analyzer``, an :class:`~ChestCTMTLLib.inference.Analyzer`) and
    write one input; returns (case folder, AnalysisResult). ``lobes``: another segmenter's lobe
    file or folder for this input (:func:`ChestCTMTLLib.lobes_io.read_lobes`). ``dicom`` adds
    lesions.seg.dcm + findings.sr.dcm (a DICOM series input only: checked before the
    analysis). ``read()`` gives the input's CTVolume (default: ``read_ct(input_path)``);
    ``analysed()`` is called once the analysis is done, before writing (the batch starts the
    next read there). The reconstruction file's voxels are compressed while the lung and
    candidate stages run (:func:`.files.reconstruction_ahead`). Raises on failure, and then
    nothing is written."""
    from ChestCTMTLLib import volume_io

    from . import files

    report = progress or (lambda fraction, stage: None)
    report(0.0, "reading")
    extra_writer = None
    if dicom:
        from . import dicom as dicom_objects

        extra_writer = _dicom_source_check(input_path, dicom_objects)
    volume = read() if read is not None else volume_io.read_ct(input_path)
    lobe_masks = None
    if lobes is not None:
        from ChestCTMTLLib.lobes_io import read_lobes

        lobe_masks = read_lobes(lobes, volume)
    # a bundle holds the reconstruction node instead of a streamed file
    with files.ReconstructionAhead(volume, output_dir, enabled=not mrb) as ahead:
        result = analyzer.apply(volume,
                                progress=lambda f, stage: report(0.05 + 0.85 * f, stage),
                                lobes=lobe_masks, reconstruction_ready=ahead)
        if analysed is not None:
            analysed()
        report(0.92, "writing")
        case_dir = files.case_dir_for(output_dir, volume_io.case_name(input_path))
        files.write_case(scene, volume, result, case_dir, mrb=mrb, input_path=str(input_path),
                         preview=preview, extra_writer=extra_writer and (
                             lambda folder: extra_writer(folder, volume, result)),
                         reconstruction=ahead.compressed)
    report(1.0, "done")
    return case_dir, result


def _dicom_source_check(input_path, dicom_objects):
    """Refuse an input DICOM objects cannot reference before spending an analysis on it;
    returns the writer of the case's DICOM objects."""
    from ChestCTMTLLib import dicom_out, dicom_source

    if not Path(input_path).is_dir():
        raise dicom_source.DicomSourceError(
            "DICOM objects need a DICOM source: this input is a file, not a DICOM series "
            "folder", str(input_path))
    dicom_out.require_dependencies()
    dicom_source.check_series_folder(input_path)
    return dicom_objects.write_result_dicom


def _send_case(outcome: CaseOutcome, destination: str) -> None:
    from . import dicom as dicom_objects

    try:
        dicom_objects.send(dicom_objects.case_dicom_files(outcome.case_dir), destination)
    except ChestCTMTLError as exc:
        outcome.send_error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a failed send keeps the files whatever the cause
        outcome.send_error = "{}: {}".format(type(exc).__name__, exc)


def analyze_inputs(inputs: Sequence, output_dir, model=None,
                   options: Optional[AnalysisOptions] = None, mrb: bool = False, scene=None,
                   progress_bar: bool = True, stream=None, preview: bool = True,
                   analyzer=None, lobes=None, dicom: bool = False, send: Optional[str] = None,
                   **option_values) -> List[CaseOutcome]:
    """Analyse every input into ``output_dir/<case>/``; one CaseOutcome per input, in order.

    The options are resolved once, here: ``options`` (an :class:`AnalysisOptions`) with any
    ``option_values`` (its fields: ``device``, ``score_threshold``, ...) applied on top, then
    ONE :class:`~ChestCTMTLLib.inference.Analyzer` (device, model and calibration resolved
    once) analyses every input. Pass ``analyzer`` to reuse one that exists (then ``model``,
    ``options`` and ``option_values`` must not be given). ``preview`` adds each case's
    preview.png. ``progress_bar`` shows progress on ``stream`` (default stderr): a tqdm bar
    on a terminal, plain lines elsewhere or without tqdm (:class:`_Progress`). ``lobes``: a
    lobe file or folder (another segmenter's) for a single input.
    preview.png; ``dicom`` the DICOM SEG + SR, which ``send`` (``HOST:PORT:AET``) then
    C-STOREs to a PACS (a failed send keeps the case: ``CaseOutcome.send_error`` says why).

    What must hold before any input is touched raises (nothing can be done without it, and
    nothing is written): :class:`OptionError`, ModelError, DeviceUnavailableError,
    TaskNotAvailableError, NotADirectoryError for an output that is a file. Failures of single
    inputs are recorded and the batch continues.
    """
    stream = stream or sys.stderr
    if analyzer is not None:
        if model is not None or options is not None or option_values:
            raise TypeError("pass either an analyzer or model/options, not both")
    else:
        opts = options or AnalysisOptions()
        if option_values:
            opts = opts.replace(**option_values)
    if lobes is not None and len(inputs) != 1:
        raise OptionError("lobes belong to one CT: pass one input with --lobes, not %d"
                          % len(inputs))
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError("output is not a folder: {}".format(output_dir))
    # the first read runs while slicer-core and torch are imported and the model is loaded
    ahead = _ReadAhead(inputs)
    ahead.start(0)
    try:
        return _analyze_all(inputs, output_dir, model, opts if analyzer is None else None, mrb,
                            scene, progress_bar, stream, preview, analyzer, lobes, dicom, send,
                            ahead)
    finally:
        ahead.close()


def _analyze_all(inputs, output_dir: Path, model, opts, mrb, scene, progress_bar, stream,
                 preview, analyzer, lobes, dicom, send, ahead: _ReadAhead) -> List[CaseOutcome]:
    """analyze_inputs once its arguments are checked and the first read has begun."""
    from ChestCTMTLLib.inference import Analyzer

    from . import files

    if analyzer is None:
        analyzer = Analyzer(model, opts)
    output_dir.mkdir(parents=True, exist_ok=True)
    outcomes: List[CaseOutcome] = []
    bar = _Progress(len(inputs), progress_bar, stream)
    try:
        for index, input_path in enumerate(inputs):
            outcome = CaseOutcome(input=str(input_path))
            bar.start_case(Path(str(input_path)).name)
            started = time.perf_counter()
            try:
                case_dir, result = analyze_one(
                    input_path, output_dir, analyzer, mrb, scene, bar.progress, preview=preview,
                    lobes=lobes, dicom=dicom or bool(send),
                    read=lambda index=index: ahead.take(index),
                    analysed=lambda index=index: ahead.start(index + 1))
                outcome.case_dir = case_dir
                outcome.predicted_class = result.predicted_class
                outcome.n_findings = len(result.findings)
                if send:
                    _send_case(outcome, send)
            except ChestCTMTLError as exc:
                outcome.error, outcome.cause = str(exc), exc.cause
            except (OSError, files.CaseWriteError) as exc:
                outcome.error, outcome.cause = "{}: {}".format(input_path, exc), "write-failed"
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the other cases
                outcome.error = "{}: internal error {}: {}".format(input_path,
                                                                   type(exc).__name__, exc)
                outcome.cause = "internal-error"
                _LOG.debug("%s", traceback.format_exc())
                traceback.print_exc(file=stream)
            outcome.seconds = time.perf_counter() - started
            if outcome.send_error:
                bar.write("not sent {}: {}".format(input_path, outcome.send_error))
            if not outcome.ok:
                bar.write("skipped {} ({}): {}".format(input_path, outcome.cause, outcome.error))
            outcomes.append(outcome)
            bar.case_done()
    finally:
        bar.close()
    return outcomes


def summary_lines(outcomes: Sequence[CaseOutcome]) -> List[str]:
    """A short human summary: one line per case, then the totals."""
    lines = []
    for outcome in outcomes:
        if outcome.ok:
            lines.append("ok      {} -> {} ({}, {} finding{}, {:.1f} s)".format(
                outcome.input, outcome.case_dir, outcome.predicted_class, outcome.n_findings,
                "" if outcome.n_findings == 1 else "s", outcome.seconds))
        else:
            lines.append("FAILED  {} [{}]: {}".format(outcome.input, outcome.cause, outcome.error))
        if outcome.send_error:
            lines.append("NOT SENT {} (files kept in {}): {}".format(
                outcome.input, outcome.case_dir, outcome.send_error))
    failed = sum(not o.ok for o in outcomes)
    lines.append("{} input{} analysed, {} failed".format(
        len(outcomes) - failed, "" if len(outcomes) - failed == 1 else "s", failed))
    return lines


#: every input analysed and written, but some case did not reach the PACS (--send)
EXIT_NOT_SENT = 3


def exit_code(outcomes: Sequence[CaseOutcome]) -> int:
    """0 when every input was analysed (and sent), 1 when any failed, 3 when all were written
    but some could not be sent."""
    if not (outcomes and all(o.ok for o in outcomes)):
        return 1
    return EXIT_NOT_SENT if any(o.send_error for o in outcomes) else 0
