"""Whole-volume analysis: one CT in, all four task outputs on the input's own voxel grid out.

Pipeline (``analyze``):

1. validate the input (:func:`volume_io.validate_ct`) - a bad volume fails before any work;
2. view it as an axial stack by axis permutation/flips only (:mod:`.orientation`), so results
   map back exactly, whatever the orientation (oblique included);
3. find the lung region once for the volume (``representation.geometry_for_volume``): only
   lung-bearing slices (plus a margin) are analysed, inside one square in-plane box around both
   lungs. This is the speed lever (a chest CT has ~20-30 % non-lung slices and ~50 % non-lung
   area) and it is also what training sees, so it is the model's input representation, not a
   shortcut. If no lungs are found the whole volume is analysed;
4. batched slice inference under ``torch.inference_mode`` in channels-last layout, with CUDA
   autocast (bfloat16 where supported, else float16) on a GPU;
5. each batch's outputs are resized back into the box: lesion probabilities (uint8) kept on
   the network's region, reconstruction written through the axial *view* of its output array
   (:func:`run_network` -> :class:`NetworkOutputs`);
6. :func:`.lesion_stage.lesion_stage`: lungs, lesion masks inside them, 3D nodule/mass
   candidates with the shape rules for the scan's slice thickness, infection per lung zone,
   the lesion pattern;
7. findings at the operating point (measured nodules, zones) on the input grid, lung
   involvement, and the verdict (:mod:`.verdict`: classifier lung slices x likelihood ratios).
   ``AnalysisOptions(lungs=False)`` keeps the older lung-blind path (slice boxes linked in 3D,
   :mod:`.postprocess`).

The network that runs is a cached copy of the loaded one with batch norms folded into the
convolutions (:func:`inference_network`): same outputs, ~25 % less CPU time. A float32 CPU
network runs on ONNX Runtime where it is installed (:mod:`.onnx_network`, about twice as fast
on an AVX2 CPU), exported from that same network.

Nothing is written to disk here; a cancelled or failed run returns nothing and the caller's
volume is never modified.
"""
from __future__ import annotations

import functools
import math
import threading
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Union

import numpy as np

from . import errors
from .orientation import AxialView
from .calibration import Calibration, CalibrationError, load_calibration
from .lungs import LungMask
from .lesion_stage import LesionStage, lesion_stage
from .memory import release_free_memory
from .onnx_network import onnx_network, resolve_runtime
from .options import DEFAULT_MIN_FINDING_EXTENT_MM, AnalysisOptions
from .postprocess import (SliceBox, aggregate_slice_probabilities, link_slice_boxes,
                          remove_small_islands, suppress_duplicate_tracks, track_volume_mm3)
from .results import AnalysisResult, Finding, LesionMasks
from .volume import CTVolume
from .volume_io import validate_ct
# the network's runtime lives in .network; imported here so callers (and tests) keep using
# inference.<name>, and Analyzer finds run_network through this module
from .network import (NetworkOutputs, _autocast, _ThreadTuner, default_batch_size,  # noqa: F401
                      fold_batch_norms, inference_network, resolve_device, resolve_model,
                      run_network)


ProgressCallback = Callable[[float, str], None]

#: Nodule/mass findings measured per scan (best first; measuring is the costly part of a list).
MAX_MEASURED = 10


# --------------------------------------------------------------------------- helpers
class _Progress:
    """Monotonic progress reporting with cooperative cancellation between steps."""

    def __init__(self, progress: Optional[ProgressCallback], cancel) -> None:
        self._cb = progress
        self._last = 0.0
        if cancel is None:
            self._cancelled = lambda: False
        elif hasattr(cancel, "is_set"):
            self._cancelled = cancel.is_set
        elif callable(cancel):
            self._cancelled = cancel
        else:
            raise TypeError("cancel must be None, a callable or a threading.Event")

    def check(self) -> None:
        if self._cancelled():
            raise errors.Cancelled()

    def __call__(self, fraction: float, text: str) -> None:
        self.check()
        f = float(min(1.0, max(self._last, fraction)))
        self._last = f
        if self._cb is not None:
            self._cb(f, text)


@functools.lru_cache(maxsize=None)  # the CPU does not change while we run
def native_cpu_bfloat16() -> bool:
    """True where the CPU computes bfloat16 natively (Intel AMX or AVX512-BF16, e.g. Sapphire
    Rapids, Zen 4) and PyTorch's oneDNN can use it. Elsewhere bfloat16 is emulated and slower
    than float32, so "auto" keeps float32 there."""
    import torch

    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False  # not Linux: no cheap way to tell, float32 is the safe choice


def resolve_precision(precision: str, device: str) -> str:
    """The network's arithmetic: "float32" or "bfloat16" ("bfloat16" on CUDA means autocast,
    bfloat16 where supported else float16, as before; on a CPU the network's weights and
    inputs are bfloat16: 5-10x faster than float32 with AMX on 2 cores)."""
    if precision == "auto":
        if device.startswith("cuda"):
            return "bfloat16"
        return "bfloat16" if native_cpu_bfloat16() else "float32"
    return precision


def _measure(cand, view: AxialView, volume: CTVolume, canon_hu: np.ndarray) -> dict:
    """Radiologist's measurements of a nodule/mass candidate (:mod:`.measurements`), with the
    axes' end points also in RAS (for markups lines and pictures)."""
    from .measurements import lung_rads_size_category, measure_nodule

    m = measure_nodule(cand.mask, view.spacing, canon_hu[cand.bbox])
    offset = np.array([s.start for s in cand.bbox], dtype=np.float64)
    for key in ("long_axis_points", "short_axis_points"):
        pts = m.get(key)
        if pts:
            canonical = np.asarray(pts, dtype=np.float64) + offset
            m[key] = canonical.tolist()
            m[key.replace("_points", "_ras")] = [
                [round(float(v), 2) for v in p]
                for p in volume.ijk_to_ras_points(view.canonical_to_ijk(canonical))]
    if m.get("axial_slice") is not None:
        m["axial_slice"] = int(m["axial_slice"] + offset[0])
    m["size_category"] = lung_rads_size_category(m.get("mean_diameter_mm"), m.get("composition"),
                                                 m.get("solid_component_mm"))
    return m


def _candidate_to_finding(cand, fid: str, view: AxialView, volume: CTVolume,
                          canon_hu: Optional[np.ndarray] = None) -> Finding:
    """A canonical-grid candidate -> a Finding in RAS on the input grid (nodule/mass findings
    measured when ``canon_hu`` is given)."""
    from .candidates import lung_side_name

    idx = cand.voxel_indices()
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    ijk_min, ijk_max = view.canonical_box_to_ijk(lo, hi)
    centre_ras = volume.ijk_to_ras_points(view.canonical_to_ijk(cand.centre_index()[None]))[0]
    corners = np.array([[s, r, c] for s in (lo[0] - 0.5, hi[0] + 0.5)
                        for r in (lo[1] - 0.5, hi[1] + 0.5) for c in (lo[2] - 0.5, hi[2] + 0.5)])
    corners_ras = volume.ijk_to_ras_points(view.canonical_to_ijk(corners))
    f = cand.features
    diameter = f.get("diameter_mm", f.get("equivalent_diameter_mm", 0.0))
    return Finding(
        id=fid, type=cand.type, score=float(cand.score),
        center_ras=[float(v) for v in centre_ras],
        size_ras=[float(v) for v in corners_ras.max(axis=0) - corners_ras.min(axis=0)],
        ijk_min=[int(v) for v in ijk_min], ijk_max=[int(v) for v in ijk_max],
        volume_mm3=float(f.get("volume_mm3", 0.0)), lung=lung_side_name(cand.lung),
        zone=cand.zone, diameter_mm=float(diameter),
        features={k: float(v) for k, v in f.items() if isinstance(v, (int, float))},
        measurements=(_measure(cand, view, volume, canon_hu)
                      if canon_hu is not None and cand.type == "nodule-mass" else {}))


def findings_from_slice_boxes(boxes: Iterable[SliceBox], view: AxialView, volume: CTVolume,
                              min_extent_mm: float = DEFAULT_MIN_FINDING_EXTENT_MM,
                              iou_threshold: float = 0.3, max_gap: int = 1) -> List[Finding]:
    """Per-slice boxes linked across slices into 3D box findings (the lung-blind pipeline,
    ``AnalysisOptions(lungs=False)``), best first."""
    s_mm, r_mm, c_mm = view.spacing
    min_slices = max(1, int(math.ceil(min_extent_mm / max(s_mm, 1e-6) - 1e-6)))
    tracks = link_slice_boxes(list(boxes), iou_threshold=iou_threshold, max_gap=max_gap)
    tracks = [t for t in tracks if t.slice_range[1] - t.slice_range[0] + 1 >= min_slices]
    tracks = suppress_duplicate_tracks(tracks)
    tracks.sort(key=lambda t: (-t.score, t.slice_range[0]))
    _, rows, cols = view.canonical_shape
    findings = []
    for n, t in enumerate(tracks, start=1):
        s0, s1, r0, r1, c0, c1 = t.box3d()
        lo = (s0, max(0, math.floor(r0)), max(0, math.floor(c0)))
        hi = (s1, min(rows - 1, max(lo[1], math.ceil(r1) - 1)),
              min(cols - 1, max(lo[2], math.ceil(c1) - 1)))
        ijk_min, ijk_max = view.canonical_box_to_ijk(lo, hi)
        centre = view.canonical_to_ijk([[0.5 * (s0 + s1), 0.5 * (r0 + r1) - 0.5,
                                         0.5 * (c0 + c1) - 0.5]])
        corners = np.array([[s, r, c] for s in (s0 - 0.5, s1 + 0.5) for r in (r0 - 0.5, r1 - 0.5)
                            for c in (c0 - 0.5, c1 - 0.5)])
        corners_ras = volume.ijk_to_ras_points(view.canonical_to_ijk(corners))
        findings.append(Finding(
            id="L%d" % n, type=t.type, score=float(t.score),
            center_ras=[float(v) for v in volume.ijk_to_ras_points(centre)[0]],
            size_ras=[float(v) for v in corners_ras.max(axis=0) - corners_ras.min(axis=0)],
            ijk_min=[int(v) for v in ijk_min], ijk_max=[int(v) for v in ijk_max],
            volume_mm3=track_volume_mm3(t, r_mm, c_mm, s_mm),
            diameter_mm=float(max(r1 - r0, 0) * r_mm)))
    return findings


#: the lesion type the model's infection types split (model.INFECTION; no torch import here)
INFECTION = "covid-infection"


def _infection_types(outputs, masks) -> List[str]:
    """The infection types to add to the lesion masks: the model's, when it has them and the
    infection mask exists."""
    return list(outputs.type_prob) if outputs.type_prob and INFECTION in masks else []


def _add_types(labels: np.ndarray, masks: LesionMasks, types: List[str], infection: np.ndarray,
               probs: List[np.ndarray]) -> None:
    """Set each type's bit in ``labels`` (a canonical view) where the infection is that type."""
    from .postprocess import assign_infection_types

    assigned = assign_infection_types(infection, probs)
    for index, name in enumerate(types, start=1):
        np.bitwise_or(labels, masks.bits[name], out=labels, where=assigned == index)


def _input_order(view, canonical: np.ndarray, shape) -> np.ndarray:
    """A canonical-grid array in input array order: the same memory when the view is the
    identity (no copy of a CT-sized array), else a C-ordered copy."""
    out = view.from_canonical(canonical)
    if out.shape == tuple(shape) and out.flags.c_contiguous:
        return out
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------- the analyzer
class Analyzer:
    """Configure once (options, device, model, calibration), then ``apply(volume)`` per CT.

    Like lungmask's ``LMInferer`` / nnU-Net's predictor: everything that can fail before any
    work (bad option, missing model, no GPU, damaged calibration) fails here, once; ``apply``
    then runs the stages every front end shares - network, lungs, 3D candidates, zones,
    verdict - and returns an :class:`AnalysisResult` on the input's grid.
    """

    def __init__(self, model=None, options: Optional[AnalysisOptions] = None,
                 calibration: Optional[Calibration] = None, **overrides) -> None:
        """``calibration``: use this instead of the model folder's (the calibrate command)."""
        opts = options or AnalysisOptions()
        if overrides:
            opts = opts.replace(**overrides)
        self.options = opts
        self.device = resolve_device(opts.device)
        self.precision = resolve_precision(opts.precision, self.device)
        self.runtime = resolve_runtime(opts.runtime, self.device, self.precision)
        self.loaded = resolve_model(model, self.device)
        try:
            self.tasks = self.loaded.model.resolve_tasks(opts.tasks)
        except ValueError as exc:
            raise errors.TaskNotAvailableError(str(exc)) from exc
        if calibration is not None:
            self.calibration = calibration
        else:
            try:
                self.calibration = load_calibration(self.loaded.folder, self.loaded.card)
            except CalibrationError as exc:
                raise errors.ModelError(str(exc), str(self.loaded.folder)) from exc

    @property
    def score_threshold(self) -> float:
        """The findings list's operating point: the option if set, else the calibrated one."""
        if self.options.score_threshold is not None:
            return float(self.options.score_threshold)
        return self.calibration.score_threshold

    def apply(self, volume: CTVolume, progress: Optional[ProgressCallback] = None,
              cancel: Union[None, Callable[[], bool], threading.Event] = None,
              lobes: Optional[Dict[str, np.ndarray]] = None,
              reconstruction_ready: Optional[Callable[[object], None]] = None) -> AnalysisResult:
        """Analyse ``volume``. ``lobes``: lobe name -> bool mask on the volume's grid (from another
        segmenter, :mod:`.lobes_io`); with all five, involvement adds per-lobe percentages and the
        Pan et al. score. Raises ValueError for lobe masks that are not on the volume's grid.
        ``reconstruction_ready(maps)`` is called with the reconstruction (what the result's
        ``reconstruction_source()`` will be; not with a model or tasks without one) as soon as
        the network has run, before the lung and candidate stages: a writer can start on its
        file there, beside stages that use one core. It must not change ``maps``."""
        import torch

        for name, mask in (lobes or {}).items():
            if np.shape(mask) != volume.array.shape:
                raise ValueError("the lobe mask %r has shape %s, the CT %s: resample it onto the CT "
                                 "first (lobes_io.read_lobes does)" % (name, np.shape(mask),
                                                                       volume.array.shape))

        opts = self.options
        previous = torch.get_num_threads()
        try:
            if opts.num_threads not in (None, "auto"):
                torch.set_num_threads(int(opts.num_threads))
            return self._apply(volume, progress, cancel, lobes, reconstruction_ready)
        finally:
            torch.set_num_threads(previous)

    @staticmethod
    def _involvement(stage: "LesionStage", canon: np.ndarray, view, lobes=None) -> dict:
        """Per lung and zone: how much is involved, by ground glass and consolidation; per lobe
        (Pan et al. score) when ``lobes`` are given on the input grid."""
        from .involvement import lobe_involvement, lung_involvement

        lungs = stage.lungs
        crop = stage.crop
        lesion = stage.infection if stage.infection is not None else \
            np.zeros(tuple(c.stop - c.start for c in crop), bool)
        input_view = view
        view = LungMask(lungs.labels[crop], lungs.spacing, lungs.airway_ml, lungs.split)
        # the crop holds the lungs whole in-plane: their per-slice counts are the full mask's
        full = lungs.per_slice_counts()[crop[0]]
        view.__dict__["_cache"] = {"counts": full.sum(axis=0), "per_slice": full}
        source = ("HU bands inside the lesion the zone findings count (the model's infection "
                  "segment%s)" % (" plus the nodule-type islands of the diffuse process"
                                  if stage.pattern.diffuse else ""))
        result = lung_involvement(view, lesion, canon[crop], lungs.spacing, source=source)
        if lobes:  # whole lobes (another segmenter's may reach beyond this lung crop)
            whole = np.zeros(canon.shape, bool)
            whole[crop] = lesion
            result["lobes"] = lobe_involvement(
                {name: input_view.to_canonical(np.asarray(m, bool)) for name, m in lobes.items()},
                whole, lungs.spacing)
        return result

    def _apply(self, volume, progress, cancel, lobes=None,
               reconstruction_ready=None) -> AnalysisResult:
        from .verdict import decide, lung_slice_selection

        opts, loaded, dev = self.options, self.loaded, self.device
        t_start = time.perf_counter()
        timings: Dict[str, float] = {}
        prog = _Progress(progress, cancel)
        prog(0.0, "Validating input")
        t = time.perf_counter()
        validate_ct(volume)
        timings["validate"] = time.perf_counter() - t
        prog(0.02, "Preparing the model")
        t = time.perf_counter()
        net = inference_network(loaded, dev, opts.channels_last, self.precision)
        if self.runtime == "onnxruntime":
            import torch

            net = onnx_network(loaded, net, self.tasks, torch.get_num_threads())
        timings["load_model"] = time.perf_counter() - t
        config = loaded.config
        prog(0.05, "Finding the lungs")
        # the network's box threshold: low enough for the lowest operating point in use
        box_threshold = min(self.score_threshold, self.calibration.score_threshold)
        outputs = run_network(volume, loaded, net, dev, self.tasks, box_threshold, opts.batch_size,
                              prog, opts.channels_last, opts.num_threads == "auto", (0.1, 0.7),
                              self.precision)
        timings.update(outputs.timings)
        if hasattr(net, "release"):  # ONNX Runtime: its arena goes before the CT-sized stages
            net.release()
        release_free_memory()  # the batches' blocks, before the stages that need the room
        if reconstruction_ready is not None and outputs.reconstruction is not None:
            reconstruction_ready(outputs.reconstruction)

        prog(0.82, "Segmenting the lungs")
        view = outputs.view
        canon = view.to_canonical(volume.array)
        s_mm = view.spacing[0]
        shape = volume.array.shape
        masks: Mapping[str, np.ndarray] = {}
        lung_labels = None
        findings: List[Finding] = []
        lungs_report: dict = {}
        involvement: dict = {}
        t = time.perf_counter()
        stage = None
        if opts.lungs:
            stage = lesion_stage(outputs, canon, opts, self.calibration, config.lesion_types, prog,
                                 timings)
            t = time.perf_counter()
            if stage.masks:
                types = _infection_types(outputs, stage.masks)
                masks = LesionMasks(list(stage.masks) + types, np.zeros(shape, dtype=np.uint8))
                inside = view.to_canonical(masks.labels)[stage.crop]
                for tname, m in stage.masks.items():
                    np.bitwise_or(inside, masks.bits[tname], out=inside, where=m)
                if types:  # the infection split into its types (their union is the infection)
                    _add_types(inside, masks, types, stage.masks[INFECTION],
                               [outputs.prob_crop(t, stage.crop) for t in types])
                stage.masks = {}  # now in the result's one array: not kept twice
            if stage.lungs is not None:
                lung_labels = _input_order(view, stage.lungs.labels, shape)
                lungs_report = {"found": stage.lungs.found, "split": stage.lungs.split,
                                "airway_removed_ml": round(stage.lungs.airway_ml, 2),
                                "method": "HU thresholds + 3D components (ChestCTMTLLib.lungs)"}
                if not stage.lungs.found:
                    lungs_report["warning"] = ("no lungs found in this volume: no lesion is listed "
                                               "and the verdict rests on the classifier alone")
                for name, ml in stage.lungs.volume_ml().items():
                    lungs_report[name] = {"volume_ml": round(ml, 1)}
                involvement = self._involvement(stage, canon, view, lobes)
            listed = [c for c in stage.nodules if c.kept and c.score >= self.score_threshold]
            listed += [z for z in stage.zones if z.kept and z.score >= self.score_threshold]
            listed.sort(key=lambda c: (-c.score, -c.features.get("volume_mm3", 0.0)))
            # measured: what a radiologist would report - the nodules at the model's operating
            # point, at most MAX_MEASURED of them (a list at threshold 0 is for FROC curves)
            measured = 0
            for n, cand in enumerate(listed, start=1):
                measure = (cand.type == "nodule-mass" and measured < MAX_MEASURED
                           and cand.score >= self.calibration.score_threshold)
                measured += int(measure)
                findings.append(_candidate_to_finding(cand, "L%d" % n, view, volume,
                                                      canon if measure else None))
        else:
            thr = int(math.ceil(opts.seg_threshold * 255.0))
            types = _infection_types(outputs, outputs.seg_prob)
            if outputs.seg_prob:
                masks = LesionMasks(list(outputs.seg_prob) + types, np.zeros(shape, dtype=np.uint8))
            for tname, prob in outputs.seg_prob.items():
                mv = np.zeros(view.canonical_shape, dtype=bool)
                mv[outputs.seg_region] = prob >= thr
                if mv.any():
                    min_vox = int(math.ceil(opts.min_island_mm3 / float(np.prod(view.spacing))))
                    remove_small_islands(mv, min_vox)
                canon_labels = view.to_canonical(masks.labels)
                np.bitwise_or(canon_labels, masks.bits[tname], out=canon_labels, where=mv)
                del mv
            if types:
                region = view.to_canonical(masks.labels)[outputs.seg_region]
                infection = np.bitwise_and(region, masks.bits[INFECTION]) != 0
                _add_types(region, masks, types, infection,
                           [outputs.type_prob[t] for t in types])
            if "detection" in self.tasks:
                findings = [f for f in findings_from_slice_boxes(outputs.boxes, view, volume,
                                                                 opts.min_finding_extent_mm)
                            if f.score >= self.score_threshold]
        outputs.seg_prob, outputs.type_prob = {}, {}  # free the maps before the verdict
        release_free_memory()  # the stages' temporaries, before the outputs are written
        timings["map_back_results"] = time.perf_counter() - t
        prog(0.95, "Weighing the evidence")
        t = time.perf_counter()
        slices = outputs.slices
        n_slices = canon.shape[0]
        analysed = np.asarray((n_slices - 1 - slices) if view.flips[0] else slices, dtype=np.int64)
        order = np.argsort(analysed, kind="stable")
        class_probs: Dict[str, float] = {}
        predicted = ""
        verdict: dict = {}
        probs_arr = outputs.slice_probs
        if probs_arr is not None:
            if stage is not None:
                sel = lung_slice_selection(stage.lungs, slices,
                                           float(self.calibration.verdict["lung_slice_min_fraction"]))
                ev_id = ""
                if stage.evidence_nodule is not None:
                    for f_, c_ in zip(findings, listed):
                        if c_ is stage.evidence_nodule:
                            ev_id = f_.id
                verdict = decide(probs_arr, sel, config.class_names, stage.evidence_nodule,
                                 stage.pattern, self.calibration, ev_id)
                class_probs = verdict.pop("probabilities")
                predicted = verdict["predicted_class"]
            else:
                class_probs = aggregate_slice_probabilities(probs_arr, slice_mm=s_mm,
                                                            class_names=config.class_names)
                predicted = max(class_probs, key=lambda k: class_probs[k])
            probs_arr = probs_arr[order]
        timings["verdict"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        prog.check()
        result = AnalysisResult(
            volume=volume, class_probabilities=class_probs, predicted_class=predicted,
            slice_probabilities=probs_arr, analysed_slices=analysed[order],
            lesion_masks=masks, reconstruction_hu=None, findings=findings,
            model=loaded.identity, timings_s=timings, device=dev, precision=self.precision,
            runtime=self.runtime,
            slice_axis=int(view.perm[0]),
            lung_labels=lung_labels, lungs=lungs_report, verdict=verdict,
            involvement=involvement, stage=stage, reconstruction_maps=outputs.reconstruction)
        prog(1.0, "Done")
        return result


def analyze(volume: CTVolume, model=None, progress: Optional[ProgressCallback] = None,
            cancel: Union[None, Callable[[], bool], threading.Event] = None,
            options: Optional[AnalysisOptions] = None, **option_values) -> AnalysisResult:
    """Analyse one CT volume with one multi-task model; results are on ``volume``'s grid.

    A thin wrapper: ``Analyzer(model, AnalysisOptions(**option_values)).apply(volume, progress,
    cancel)``; keep an :class:`Analyzer` to analyse many volumes with one model load.
    ``model``: None (the bundled default), a model folder, or a ``modelio.LoadedModel``.
    ``progress(fraction, stage_text)`` gets non-decreasing fractions ending at 1.0; ``cancel``
    (a callable or a ``threading.Event``) is polled between steps and batches and raises
    :class:`errors.Cancelled`. Keyword arguments are :class:`AnalysisOptions` fields
    (``device``, ``tasks``, ``score_threshold``, ...), applied on top of ``options``.

    Raises :class:`errors.InputError` subclasses for bad input, :class:`errors.ModelError` for
    a missing/corrupt model, :class:`errors.DeviceUnavailableError`, :class:`errors.Cancelled`,
    :class:`options.OptionError` for an option out of range.
    """
    opts = options or AnalysisOptions()
    if option_values:
        opts = opts.replace(**option_values)
    return Analyzer(model, opts).apply(volume, progress, cancel)
