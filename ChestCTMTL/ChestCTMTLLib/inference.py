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
convolutions (:func:`inference_network`): same outputs, ~25 % less CPU time.

Nothing is written to disk here; a cancelled or failed run returns nothing and the caller's
volume is never modified.
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Union

import numpy as np

from . import errors
from .orientation import AxialView, axial_view
from .calibration import Calibration, CalibrationError, load_calibration
from .lungs import LungMask
from .lesion_stage import LesionStage, lesion_stage
from .options import DEFAULT_MIN_FINDING_EXTENT_MM, AnalysisOptions
from .postprocess import (SliceBox, aggregate_slice_probabilities, link_slice_boxes,
                          remove_small_islands, suppress_duplicate_tracks, track_volume_mm3)
from .results import AnalysisResult, Finding
from .volume import AIR_HU, CTVolume
from .volume_io import validate_ct


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


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when PyTorch sees a GPU, else "cpu"; "cuda" without one is an error."""
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise errors.DeviceUnavailableError(
                "device %r requested but PyTorch sees no CUDA GPU (torch %s)" % (device,
                                                                                torch.__version__))
        return d
    if d == "cpu":
        return "cpu"
    raise errors.DeviceUnavailableError("unknown device %r (use auto, cpu or cuda)" % device)


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


def _as_model_error(exc: Exception) -> errors.ChestCTMTLError:
    if isinstance(exc, errors.ChestCTMTLError):
        return exc
    err = errors.ModelError(str(exc))
    err.__cause__ = exc
    return err


def resolve_model(model=None, device: str = "cpu"):
    """A ready ``modelio.LoadedModel`` on ``device`` from None (bundled default), a folder or one.

    Load failures (missing, corrupt, mismatching) come out as :class:`errors.ModelError`.
    """
    from . import modelio

    if model is not None and hasattr(model, "model") and hasattr(model, "identity"):
        loaded = model
        if str(getattr(loaded, "device", "cpu")) != device:
            loaded.model.to(device)
            loaded.device = device
        return loaded
    try:
        folder = modelio.default_model_dir() if model is None else Path(model)
        if model is not None and not Path(folder).exists():
            raise errors.ModelNotFoundError("model folder does not exist", str(folder))
        return modelio.load_model(folder, device=device)
    except errors.ChestCTMTLError:
        raise
    except (OSError, ValueError) as exc:  # safetensors/torch failures on a damaged folder
        raise _as_model_error(exc) from exc


def _autocast(device: str, precision: str = "bfloat16"):
    import torch

    if not device.startswith("cuda") or precision == "float32":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def fold_batch_norms(module):
    """Fold every eval-mode BatchNorm2d into the Conv2d before it (in place; returns module).

    At inference a BatchNorm is a per-channel affine map, so it can live in the convolution's
    weights: same outputs (to float rounding), one memory pass fewer per layer. Measured on
    the fast backbone on 2 CPU cores: 20-30 % less forward time. Only Conv2d -> BatchNorm2d
    pairs that are consecutive children of an ``nn.Sequential`` are folded, which is how
    ``model.conv_bn`` builds every one of them.
    """
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        if isinstance(child, nn.Sequential):
            names = list(child._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = child._modules[a], child._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) \
                        and bn.track_running_stats:
                    child._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                    child._modules[b] = nn.Identity()
        fold_batch_norms(child)
    return module


def inference_network(loaded, device: str, channels_last: bool = True,
                      precision: str = "float32"):
    """The network ``analyze`` runs: an eval copy of ``loaded.model`` with batch norms folded,
    in channels-last layout, with bfloat16 weights for ``precision`` "bfloat16" on a CPU,
    cached on ``loaded`` (the caller's model is never altered).

    The LoadedModel's weights are treated as frozen: the cache is keyed by the identity of
    ``loaded.model``, the device, the layout and the precision.
    """
    import copy

    import torch

    cpu_bf16 = precision == "bfloat16" and not str(device).startswith("cuda")
    key = (id(loaded.model), str(device), bool(channels_last), cpu_bf16)
    cache = loaded.__dict__.setdefault("_inference_networks", {})
    net = cache.get(key)
    if net is None:
        net = fold_batch_norms(copy.deepcopy(loaded.model).eval())
        net.to(device)
        if cpu_bf16:  # folded first, in float32: the fold's arithmetic stays exact
            net.to(torch.bfloat16)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        cache.clear()  # one device/layout at a time: keeps memory bounded
        cache[key] = net
    return net


def default_batch_size(device: str) -> int:
    """Small CPU batches are faster per slice (activations stay in cache; measured 4 best)."""
    return 32 if device.startswith("cuda") else 4


# --------------------------------------------------------------------------- findings
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
              lobes: Optional[Dict[str, np.ndarray]] = None) -> AnalysisResult:
        """Analyse ``volume``. ``lobes``: lobe name -> bool mask on the volume's grid (from another
        segmenter, :mod:`.lobes_io`); with all five, involvement adds per-lobe percentages and the
        Pan et al. score. Raises ValueError for lobe masks that are not on the volume's grid."""
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
            return self._apply(volume, progress, cancel, lobes)
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

    def _apply(self, volume, progress, cancel, lobes=None) -> AnalysisResult:
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
        timings["load_model"] = time.perf_counter() - t
        config = loaded.config
        prog(0.05, "Finding the lungs")
        # the network's box threshold: low enough for the lowest operating point in use
        box_threshold = min(self.score_threshold, self.calibration.score_threshold)
        outputs = run_network(volume, loaded, net, dev, self.tasks, box_threshold, opts.batch_size,
                              prog, opts.channels_last, opts.num_threads == "auto", (0.1, 0.7),
                              self.precision)
        timings.update(outputs.timings)

        prog(0.82, "Segmenting the lungs")
        view = outputs.view
        canon = view.to_canonical(volume.array)
        s_mm = view.spacing[0]
        shape = volume.array.shape
        masks: Dict[str, np.ndarray] = {}
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
            for tname, m in stage.masks.items():
                masks[tname] = np.zeros(shape, dtype=np.uint8)
                view.to_canonical(masks[tname])[stage.crop] = m
            if stage.lungs is not None:
                lung_labels = np.zeros(shape, dtype=np.uint8)
                # the lungs (grown into lesions) lie inside the lesion crop
                view.to_canonical(lung_labels)[stage.crop] = stage.lungs.labels[stage.crop]
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
            for tname, prob in outputs.seg_prob.items():
                masks[tname] = np.zeros(shape, dtype=np.uint8)
                mv = view.to_canonical(masks[tname])
                mv[outputs.seg_region] = prob >= thr
                if mv.any():
                    min_vox = int(math.ceil(opts.min_island_mm3 / float(np.prod(view.spacing))))
                    remove_small_islands(mv, min_vox)
            if "detection" in self.tasks:
                findings = [f for f in findings_from_slice_boxes(outputs.boxes, view, volume,
                                                                 opts.min_finding_extent_mm)
                            if f.score >= self.score_threshold]
        outputs.seg_prob = {}  # free the probability maps before the verdict
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
            lesion_masks=masks, reconstruction_hu=outputs.reconstruction_hu, findings=findings,
            model=loaded.identity, timings_s=timings, device=dev, precision=self.precision,
            slice_axis=int(view.perm[0]),
            lung_labels=lung_labels, lungs=lungs_report, verdict=verdict,
            involvement=involvement, stage=stage)
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


class _ThreadTuner:
    """Pick the faster CPU thread count while the batches run.

    Why: on a CPU shared with other busy processes, PyTorch's OpenMP threads wait for each
    other at every operation; measured on 2 cores with a training run beside us, LIDC-IDRI-0002
    took 80 s with 2 threads and 24 s with 1, while on an idle machine 2 threads are ~40 %
    faster than 1. So one batch is timed with each candidate (after a warm-up batch each) and
    the faster kept, re-checked every ``recheck`` batches as the load changes. Outputs do not
    depend on the thread count (tested), so this changes speed only.
    """

    def __init__(self, enabled: bool, recheck: int = 24) -> None:
        import torch

        self.torch = torch
        base = torch.get_num_threads()
        self.candidates = [base, 1] if (enabled and base > 1) else [base]
        self.recheck = recheck
        self.best = base
        self.times: Dict[int, float] = {}
        self.current = base

    # within each window of ``recheck`` batches: 0 runs as decided, 1 warms the alternative
    # up (thread pool, kernel caches), 2 times it, 3 times the base count; then the faster
    def _planned(self, index: int) -> int:
        phase = index % self.recheck
        if phase in (1, 2):
            return self.candidates[1]
        if phase == 3:
            return self.candidates[0]
        return self.best

    def before_batch(self, index: int) -> None:
        if len(self.candidates) == 1:
            return
        n = self._planned(index)
        if n != self.current:
            self.torch.set_num_threads(n)
            self.current = n

    def after_batch(self, index: int, seconds_per_slice: float) -> None:
        if len(self.candidates) == 1:
            return
        phase = index % self.recheck
        if phase in (2, 3):
            self.times[self.current] = seconds_per_slice
        if phase == 3:
            self.best = min(self.times, key=self.times.get)


@dataclass
class NetworkOutputs:
    """What the network said about one volume, on the canonical axial grid (slice, row, col).

    The stage between the network and every decision: lesion probabilities are kept (as
    uint8, probability x 255, on the full canonical grid) rather than thresholded masks, so the
    lung-aware post-processing, the verdict and the evaluation commands all start from the same
    numbers ``analyze`` starts from.
    """

    view: AxialView
    geometry: object  # representation.SliceGeometry
    region: object  # representation.LungRegion
    slices: np.ndarray  # canonical slice indices the network saw (sorted)
    seg_prob: Dict[str, np.ndarray]  # lesion type -> uint8 on ``seg_region``; {} if seg off
    boxes: List[SliceBox]  # detection-head boxes (canonical slice, input pixels)
    slice_probs: Optional[np.ndarray]  # (len(slices), n_classes) softmax, in ``slices`` order
    reconstruction_hu: Optional[np.ndarray]  # int16, input array order; None if recon off
    timings: Dict[str, float] = field(default_factory=dict)
    #: the part of the canonical grid the network saw (analysed slices x its in-plane box);
    #: probabilities are 0 elsewhere, so only this part is stored
    seg_region: Tuple[slice, slice, slice] = (slice(0, 0),) * 3

    def prob_crop(self, name: str, crop: Tuple[slice, slice, slice]) -> np.ndarray:
        """Lesion probabilities (uint8) of type ``name`` on any canonical ``crop``."""
        region, prob = self.seg_region, self.seg_prob[name]
        inner = tuple(slice(max(c.start, r.start), min(c.stop, r.stop)) for c, r in zip(crop, region))
        if all(i.start == c.start and i.stop == c.stop for i, c in zip(inner, crop)):
            return prob[tuple(slice(i.start - r.start, i.stop - r.start)
                              for i, r in zip(inner, region))]
        out = np.zeros(tuple(c.stop - c.start for c in crop), np.uint8)
        if all(i.stop > i.start for i in inner):
            out[tuple(slice(i.start - c.start, i.stop - c.start) for i, c in zip(inner, crop))] = \
                prob[tuple(slice(i.start - r.start, i.stop - r.start) for i, r in zip(inner, region))]
        return out


def run_network(volume: CTVolume, loaded, net, dev: str, run_tasks, box_threshold: float,
                batch_size: Optional[int], prog: "_Progress", channels_last: bool = True,
                tune_threads: bool = True, fraction=(0.1, 0.8),
                precision: str = "bfloat16") -> NetworkOutputs:
    """Batched slice inference over the lung-bearing slices of ``volume`` (steps 2-5)."""
    import torch

    from .model import detections_from_outputs
    from .representation import geometry_for_volume, hu_slices_to_model

    timings: Dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + (now - t0)
        return now

    config, rep = loaded.config, loaded.representation
    t = time.perf_counter()
    view = axial_view(volume.ijk_to_ras, volume.array.shape)
    canon = view.to_canonical(volume.array)
    s_mm, r_mm, c_mm = view.spacing
    geometry, region = geometry_for_volume(canon, (c_mm, r_mm, s_mm), rep)
    slices = np.asarray(region.slices, dtype=np.int64)
    t = lap("lung_region", t)

    lesion_types = tuple(config.lesion_types)
    in_h, in_w = canon.shape[1], canon.shape[2]
    rr = slice(max(0, geometry.row0), min(in_h, geometry.row0 + geometry.side))
    cc = slice(max(0, geometry.col0), min(in_w, geometry.col0 + geometry.side))
    k_lo = int(slices.min()) if slices.size else 0
    k_hi = int(slices.max()) + 1 if slices.size else 0
    seg_region = (slice(k_lo, k_hi), rr, cc)
    seg_prob: Dict[str, np.ndarray] = {}
    if "segmentation" in run_tasks:
        region_shape = (k_hi - k_lo, rr.stop - rr.start, cc.stop - cc.start)
        seg_prob = {name: np.zeros(region_shape, dtype=np.uint8) for name in lesion_types}
    recon: Optional[np.ndarray] = None
    recon_view = None
    if "reconstruction" in run_tasks:
        recon = np.full(volume.array.shape, AIR_HU, dtype=np.int16)
        recon_view = view.to_canonical(recon)
    slice_probs: List[np.ndarray] = []
    boxes: List[SliceBox] = []
    lo_hu, hi_hu = float(rep.hu_window[0]), float(rep.hu_window[1])

    bs = int(batch_size or default_batch_size(dev))
    n_batches = max(1, int(math.ceil(len(slices) / float(bs))))
    timings.update(preprocess=0.0, forward=0.0, map_back=0.0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    in_dtype = next(net.parameters()).dtype  # bfloat16 for a bfloat16 CPU network
    tuner = _ThreadTuner(tune_threads and dev == "cpu")
    f0, span = fraction
    with torch.inference_mode():
        for bi in range(n_batches):
            prog(f0 + span * bi / n_batches,
                 "Analysing slices %d/%d" % (min(bi * bs, len(slices)), len(slices)))
            t = time.perf_counter()
            idx = slices[bi * bs:(bi + 1) * bs]
            if idx.size == 0:
                break
            x = hu_slices_to_model(canon[idx], geometry, rep)
            x = x.to(dev, dtype=in_dtype, non_blocking=True).contiguous(memory_format=memory_format)
            t = lap("preprocess", t)
            tuner.before_batch(bi)
            with _autocast(dev, precision):
                out = net(x, run_tasks)
            out = {k: v.float().to("cpu") for k, v in out.items()}
            tuner.after_batch(bi, (time.perf_counter() - t) / len(idx))
            t = lap("forward", t)
            if "class_logits" in out:
                slice_probs.append(torch.softmax(out["class_logits"], dim=1).numpy())
            seg = torch.sigmoid(out["seg_logits"]) if "seg_logits" in out else None
            if seg is not None:
                prob = geometry.to_input(seg, fill=0.0)[:, :, rr, cc]
                q = torch.round(prob.clamp_(0.0, 1.0) * 255.0).to(torch.uint8).numpy()
                for ti, name in enumerate(lesion_types):
                    seg_prob[name][idx - k_lo] = q[:, ti]
            if "recon" in out:
                # the model reproduces the clipped unit image: outside [0, 1] means nothing
                hu = out["recon"].clamp_(0.0, 1.0) * (hi_hu - lo_hu) + lo_hu
                hu = geometry.to_input(hu, fill=float(AIR_HU))
                recon_view[idx] = torch.round(hu[:, 0]).clamp_(-32768, 32767).numpy().astype(
                    np.int16)
            if "det_heatmap" in out:
                dets = detections_from_outputs(out, config.det_stride, lesion_types,
                                               box_threshold, seg)
                for s_idx, per_slice in zip(idx.tolist(), dets):
                    for d in per_slice:
                        cx0, ry0 = geometry.model_to_input_xy(d.x0, d.y0)
                        cx1, ry1 = geometry.model_to_input_xy(d.x1, d.y1)
                        r0, r1 = max(0.0, float(ry0)), min(float(in_h), float(ry1))
                        c0, c1 = max(0.0, float(cx0)), min(float(in_w), float(cx1))
                        if r1 > r0 and c1 > c0:
                            boxes.append(SliceBox(int(s_idx), d.type, float(d.score),
                                                  r0, c0, r1, c1))
            del out
            lap("map_back", t)
    probs_arr = np.concatenate(slice_probs, axis=0).astype(np.float32) if slice_probs else None
    return NetworkOutputs(view, geometry, region, slices, seg_prob, boxes, probs_arr, recon,
                          timings, seg_region)


