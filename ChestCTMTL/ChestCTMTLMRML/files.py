"""One analysed case -> a folder of files Slicer opens natively, written all-or-nothing.

``OUTDIR/<case>/`` holds ``lesions.seg.nrrd``, ``lungs.seg.nrrd`` (when the core segmented the
lungs), ``reconstruction.nrrd``, ``findings.mrk.json``,
``findings.tsv`` (+ ``findings.schema.tsv``, the column types Slicer's table reader uses),
``report.json``, ``preview.png`` (a picture of the result for people, see
ChestCTMTLLib.preview; skipped with a warning where matplotlib is missing, e.g. in a bare
Slicer) and, on request, ``<case>.mrb``. The Slicer formats are written by the nodes'
own storage nodes from slicer-core, i.e. by Slicer's code, so Slicer reads them back exactly;
two are laid out here as those write them, to avoid their CT-sized copies: the segmentations
of one shared layer (:mod:`.seg_nrrd`, with Slicer's NRRD writer) and the reconstruction,
streamed slab by slab (:mod:`ChestCTMTLLib.nrrd_file`); tests hold both to the storage
nodes' files.

The folder is built under a hidden temporary name in the same parent and renamed into place
at the end, so a crash, a bad input or a full disk never leaves a partial case folder behind.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np

from ChestCTMTLLib import nrrd_file
from ChestCTMTLLib import preview as preview_png
from ChestCTMTLLib.lungs import LUNG_NAMES
from ChestCTMTLLib.results import FINDINGS_TSV_COLUMNS, AnalysisResult
from ChestCTMTLLib.volume import CTVolume

from . import headless, nodes, seg_nrrd, terminology

SEGMENTATION_FILE = "lesions.seg.nrrd"
#: Only when the result has lung labels, hence not in CASE_FILES.
LUNGS_FILE = "lungs.seg.nrrd"
RECONSTRUCTION_FILE = "reconstruction.nrrd"
MARKUPS_FILE = "findings.mrk.json"
FINDINGS_FILE = "findings.tsv"
REPORT_FILE = "report.json"
CASE_FILES = (SEGMENTATION_FILE, RECONSTRUCTION_FILE, MARKUPS_FILE, FINDINGS_FILE, REPORT_FILE)
#: Optional (``preview=False``, or no matplotlib), hence not in CASE_FILES.
PREVIEW_FILE = preview_png.PREVIEW_FILE

_LOG = logging.getLogger(__name__)

#: "@schema" of a markups file without ROIs (with ROIs it is copied from what the writer put).
#: Slicer 5.8.0 to 5.12.3 write v1.0.3, the newest schema in their source (MARKUPS_SCHEMA in
#: Modules/Loadable/Markups/MRML/vtkMRMLMarkupsJsonStorageNode.cxx); the slicer-core wheel
#: writes v1.0.4. Their readers accept any markups-schema-v1.x.y (ACCEPTED_MARKUPS_SCHEMA_REGEX).
_MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                   "Resources/Schema/markups-schema-v1.0.3.json#")
_PARTIAL_MARKER = ".partial-"


class CaseWriteError(RuntimeError):
    """A storage node refused to write (disk full, permissions, ...); nothing was kept."""


def case_dir_for(output_dir: Union[str, Path], case_name: str) -> Path:
    """``output_dir/case_name``, or ``case_name-2``, ``-3`` ... if that folder exists already."""
    output_dir = Path(output_dir)
    candidate = output_dir / case_name
    number = 2
    while candidate.exists():
        candidate = output_dir / "{}-{}".format(case_name, number)
        number += 1
    return candidate


def _write_with_storage_node(node, path: Path, compress: bool = True) -> None:
    storage = node.CreateDefaultStorageNode()
    if storage is None:
        raise CaseWriteError("no storage node for {}".format(node.GetClassName()))
    storage.SetFileName(str(path))
    if hasattr(storage, "SetUseCompression"):
        storage.SetUseCompression(bool(compress))
    if not storage.WriteData(node) or not path.is_file():
        messages = storage.GetUserMessages().GetAllMessagesAsString() \
            if storage.GetUserMessages() is not None else ""
        raise CaseWriteError("could not write {}: {}".format(path.name, messages.strip()))


def _write_segmentation(node, path: Path) -> None:
    """The storage node's file; for a segmentation of one shared layer (what the analysis
    gives) written from that layer, without the storage node's CT-sized copies
    (:mod:`.seg_nrrd`)."""
    try:
        # zlib level 1: ~0.2 s less per file than the default level on a 512 x 512 x 261
        # labelmap (0.7 MB instead of 0.07 MB), CPU the reconstruction's thread uses meanwhile
        if seg_nrrd.write_shared_layer(node, path, compression_level=1):
            return
    except OSError as exc:
        raise CaseWriteError(str(exc)) from exc
    _write_with_storage_node(node, path)


def write_markups_file(rois: List[object], path: Path) -> None:
    """All markups in ONE markups JSON file ("markups" holds one entry per node, each with its
    node name): the findings' ROIs and their nodules' long/short axis lines. Slicer's markups
    reader (vtkSlicerMarkupsLogic::LoadMarkups) makes one node of each entry's type."""
    scratch = Path(tempfile.mkdtemp(prefix=".markups-", dir=str(path.parent)))
    try:
        schema, entries = _MARKUPS_SCHEMA, []
        for number, roi in enumerate(rois):
            single = scratch / "{}.mrk.json".format(number)
            _write_with_storage_node(roi, single)
            with open(single, encoding="utf-8") as handle:
                doc = json.load(handle)
            schema = doc.get("@schema", schema)
            for entry in doc["markups"]:
                entries.append({"name": roi.GetName(), **entry})
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"@schema": schema, "markups": entries}, handle, indent=4)
            handle.write("\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_findings_tsv(scene, result: AnalysisResult, path: Path) -> None:
    """findings.tsv with exactly FINDINGS_TSV_COLUMNS, via Slicer's table storage node."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "__chestctmtl_findings_tsv__")
    try:
        rows = [finding.row() for finding in result.findings]
        nodes._add_columns(table, FINDINGS_TSV_COLUMNS, rows)
        _write_with_storage_node(table, path, compress=False)
    finally:
        nodes._remove_node(scene, table)


def _preview_colors(result: AnalysisResult) -> dict:
    types = list(result.lesion_masks) + [f.type for f in result.findings]
    colors = {name: terminology.lesion_term(name).color for name in types}
    colors.update({name: terminology.lung_term(value).color for value, name in LUNG_NAMES.items()})
    return colors


def write_preview(result: AnalysisResult, path: Path, title: Optional[str] = None) -> bool:
    """preview.png in the segments' Slicer colours; False (and a warning) without matplotlib."""
    if not preview_png.available():
        _LOG.warning("matplotlib is not installed: %s not written", path.name)
        return False
    preview_png.write_preview(result, path, colors=_preview_colors(result), title=title)
    return True


class _InBackground:
    """``work(*args)`` in a thread of its own; :meth:`finish` waits for it and raises what it
    raised (or, with ``raise_error=False``, only waits: the caller's first failure is the one
    reported)."""

    def __init__(self, name: str, work: Callable, *args) -> None:
        self._errors: list = []
        self._thread = threading.Thread(target=self._run, args=(work,) + args, daemon=True,
                                        name=name)
        self._thread.start()

    def _run(self, work: Callable, *args) -> None:
        try:
            work(*args)
        except BaseException as exc:  # noqa: BLE001 - raised again in finish()
            self._errors.append(exc)

    def finish(self, raise_error: bool = True) -> None:
        self._thread.join()
        if self._errors and raise_error:
            raise self._errors.pop()


def _preview_in_background(result: AnalysisResult, path: Path,
                           title: Optional[str]) -> Optional[_InBackground]:
    """preview.png drawn now, in the caller's thread, and encoded in a thread of its own
    (Pillow's zlib does not hold the GIL, so it runs while the NRRD files are written);
    None (and a warning) without matplotlib."""
    if not preview_png.available():
        _LOG.warning("matplotlib is not installed: %s not written", path.name)
        return None
    drawn = preview_png.draw_preview(result, colors=_preview_colors(result), title=title)
    return _InBackground("chestctmtl-preview-png", preview_png.save_drawn_png, drawn, path)


def _reconstruction_slabs(source, depth: int = nrrd_file.SLAB_DEPTH):
    if isinstance(source, np.ndarray):
        return nrrd_file.array_slabs(source, depth)
    return source.hu_slabs(depth)


def reconstruction_ahead(volume: CTVolume, source,
                         directory: Optional[Union[str, Path]] = None) -> nrrd_file.SlabsAhead:
    """reconstruction.nrrd's voxels compressed from ``source`` (the result's
    ``reconstruction_source()``, e.g. what ``Analyzer.apply`` hands ``reconstruction_ready``)
    in a thread, while the analysis goes on; :func:`write_case` takes it as
    ``reconstruction=``. The caller closes it. ``directory``: where the compressed voxels wait
    (an unnamed file; default the system's temporary folder)."""
    return nrrd_file.SlabsAhead(volume.array.shape[:3], volume.ijk_to_ras,
                                _reconstruction_slabs(source, nrrd_file.AHEAD_SLAB_DEPTH), np.int16,
                                source=source, directory=directory)


class ReconstructionAhead:
    """``Analyzer.apply``'s ``reconstruction_ready`` hook for a case about to be written: it
    starts the reconstruction's voxels (:func:`reconstruction_ahead`) in ``output_dir`` when
    that exists, else in the system's temporary folder; :attr:`compressed` then goes to
    :func:`write_case` as ``reconstruction=``. A context manager: leaving it closes them.
    ``enabled=False`` (a bundle, which holds the reconstruction node instead) starts nothing;
    no room for the temporary file is not a failure: the file is written after the analysis."""

    def __init__(self, volume: CTVolume, output_dir: Union[str, Path],
                 enabled: bool = True) -> None:
        self.volume, self.output_dir, self.enabled = volume, Path(output_dir), enabled
        self.compressed: Optional[nrrd_file.SlabsAhead] = None

    def __call__(self, maps) -> None:
        if not self.enabled or self.compressed is not None:
            return
        folder = self.output_dir if self.output_dir.is_dir() else None
        try:
            self.compressed = reconstruction_ahead(self.volume, maps, folder)
        except OSError as exc:
            _LOG.warning("reconstruction not compressed ahead (%s)", exc)

    def __enter__(self) -> "ReconstructionAhead":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.compressed is not None:
            self.compressed.close()


def _write_reconstruction(result: AnalysisResult, volume: CTVolume, path: Path,
                          ahead: Optional[nrrd_file.SlabsAhead] = None) -> None:
    """reconstruction.nrrd slab by slab from what the result holds (the network's maps are
    mapped to HU one slab at a time: no CT-sized HU array, :mod:`ChestCTMTLLib.nrrd_file`),
    or from ``ahead`` when it was made from that."""
    source = result.reconstruction_source()
    try:
        if ahead is not None and ahead.source is source:
            ahead.write(path)
        else:
            nrrd_file.write_slabs(path, volume.array.shape[:3], volume.ijk_to_ras,
                                  _reconstruction_slabs(source), np.int16)
    except OSError as exc:
        raise CaseWriteError("could not write {}: {}".format(path.name, exc)) from exc


def _write_json(data: dict, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


@contextmanager
def _working_scene(scene):
    if scene is None:
        with headless.scratch_scene() as scratch:
            yield scratch
    else:
        yield scene


def _write_case_files(scene, volume: CTVolume, result: AnalysisResult, folder: Path,
                      case_name: str, mrb: bool, input_path: Optional[str]) -> None:
    # the nodes only live to be written: they use the arrays' memory instead of copies
    volume_node = nodes.volume_node_from_ct(scene, volume, case_name, share=True)
    results = None
    try:
        # a bundle holds the reconstruction node; otherwise the file is streamed (write_case)
        results = nodes.create_result_nodes(scene, volume_node, result,
                                            options=nodes.ResultOptions(share_arrays=True,
                                                                        reconstruction=mrb))
        if results.segmentation is not None:
            _write_segmentation(results.segmentation, folder / SEGMENTATION_FILE)
        if results.lungs is not None:
            _write_segmentation(results.lungs, folder / LUNGS_FILE)
        if results.reconstruction is not None:
            _write_with_storage_node(results.reconstruction, folder / RECONSTRUCTION_FILE)
        write_markups_file(results.rois + results.axes, folder / MARKUPS_FILE)
        write_findings_tsv(scene, result, folder / FINDINGS_FILE)
        _write_json(result.report_dict(input_path or volume.source_path), folder / REPORT_FILE)
        if mrb:
            bundle = folder / "{}.mrb".format(case_name)
            if not scene.WriteToMRB(str(bundle)) or not bundle.is_file():
                raise CaseWriteError("could not write {}".format(bundle.name))
    finally:
        if results is not None:
            # segmentations go without copying their shared layer (nodes._remove_node)
            nodes.remove_result_nodes(scene, results)
        nodes._remove_node(scene, volume_node)


def write_case(scene, volume, result: AnalysisResult, case_dir: Union[str, Path],
               mrb: bool = False, input_path: Optional[str] = None,
               preview: bool = True,
               extra_writer: Optional[Callable[[Path], object]] = None,
               reconstruction: Optional[nrrd_file.SlabsAhead] = None) -> Path:
    """Write one case atomically to ``case_dir`` (which must not exist yet) and return it.

    ``volume`` is the analysed CTVolume or its volume node (copied, never modified; results
    already on it in the scene are left alone: the files show exactly ``result``).
    With ``scene=None`` the nodes are built in a private scratch scene; with a scene they are
    built there and removed again afterwards. ``mrb`` adds ``<case>.mrb`` (input volume +
    results as a Slicer scene bundle); it is always built in a scratch scene, because a bundle
    holds *every* storable node of its scene (it must hold only this case) and writing one
    gives each node without a storage node a default one that stays
    (vtkMRMLScene::SaveSceneToSlicerDataBundleDirectory, Slicer 5.8.0 to 5.12.3, restores the
    file names but keeps those), which must not happen to a user's nodes. ``preview`` adds
    preview.png (when matplotlib is available). ``extra_writer(folder)`` adds more files to the case
    (e.g. the DICOM objects) before the folder is renamed into place, so they share its
    all-or-nothing fate. ``reconstruction``: the reconstruction's voxels compressed ahead
    (:func:`reconstruction_ahead`; used when made from this result's reconstruction, and left
    to the caller to close).
    """
    case_dir = Path(case_dir)
    if not isinstance(volume, CTVolume):
        volume = nodes.ct_from_volume_node(volume)
    if case_dir.exists():
        raise FileExistsError("case folder already exists: {}".format(case_dir))
    case_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix="." + case_dir.name + _PARTIAL_MARKER,
                                      dir=str(case_dir.parent)))
    try:
        background: List[_InBackground] = []
        try:
            if result.has_reconstruction and not mrb:
                # compressed (GIL released) while the preview is drawn and the rest written
                background.append(_InBackground("chestctmtl-reconstruction-nrrd",
                                                _write_reconstruction, result, volume,
                                                temporary / RECONSTRUCTION_FILE,
                                                reconstruction))
            png = _preview_in_background(result, temporary / PREVIEW_FILE, case_dir.name) \
                if preview else None
            if png is not None:
                background.append(png)
            with _working_scene(None if mrb else scene) as working:
                _write_case_files(working, volume, result, temporary, case_dir.name, mrb,
                                  input_path)
        except BaseException:
            for job in background:
                job.finish(raise_error=False)  # the first failure is the one reported
            raise
        for job in background:
            job.finish()
        if extra_writer is not None:
            extra_writer(temporary)
        os.chmod(temporary, 0o777 & ~_umask())
        if case_dir.exists():  # appeared while we were writing: never merge into it
            raise FileExistsError("case folder appeared while writing: {}".format(case_dir))
        os.rename(temporary, case_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return case_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
