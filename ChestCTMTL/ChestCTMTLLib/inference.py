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
5. each batch's outputs are resized back into the box and written straight into the output
   arrays through the axial *view* of those arrays - no full-volume float copies exist;
6. post-processing (:mod:`.postprocess`): mask islands under ``min_island_mm3`` removed;
   per-slice boxes (from the detection head only) linked across adjacent slices into 3D
   findings - score = the best slice's score, volume = inscribed ellipses x slice thickness,
   centre/size from the merged box mapped to RAS, findings shorter than
   ``min_finding_extent_mm`` along the slice axis dropped, duplicates suppressed by 3D NMS;
   slice probabilities aggregated to a volume verdict
   (:func:`postprocess.aggregate_slice_probabilities`, "any disease present" rule).

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
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Union

import numpy as np

from . import errors
from .orientation import AxialView, axial_view
from .postprocess import (SliceBox, Track, aggregate_slice_probabilities, link_slice_boxes,
                          remove_small_islands, suppress_duplicate_tracks, track_volume_mm3)
from .results import AnalysisResult, Finding
from .volume import AIR_HU, CTVolume
from .volume_io import validate_ct

DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_SEG_THRESHOLD = 0.5
DEFAULT_MIN_ISLAND_MM3 = 14.0  # a 3 mm sphere: LIDC's own lower limit for outlined nodules
DEFAULT_MIN_FINDING_EXTENT_MM = 3.0  # along the slice axis; drops one-slice flickers

ProgressCallback = Callable[[float, str], None]


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


def _autocast(device: str):
    import torch

    if not device.startswith("cuda"):
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


def inference_network(loaded, device: str, channels_last: bool = True):
    """The network ``analyze`` runs: an eval copy of ``loaded.model`` with batch norms folded,
    in channels-last layout, cached on ``loaded`` (the caller's model is never altered).

    The LoadedModel's weights are treated as frozen: the cache is keyed by the identity of
    ``loaded.model``, the device and the layout.
    """
    import copy

    import torch

    key = (id(loaded.model), str(device), bool(channels_last))
    cache = loaded.__dict__.setdefault("_inference_networks", {})
    net = cache.get(key)
    if net is None:
        net = fold_batch_norms(copy.deepcopy(loaded.model).eval())
        net.to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        cache.clear()  # one device/layout at a time: keeps memory bounded
        cache[key] = net
    return net


def default_batch_size(device: str) -> int:
    """Small CPU batches are faster per slice (activations stay in cache; measured 4 best)."""
    return 32 if device.startswith("cuda") else 4


# --------------------------------------------------------------------------- findings
def _tracks_to_findings(tracks: List[Track], view: AxialView, volume: CTVolume,
                        in_shape) -> List[Finding]:
    h, w = in_shape
    s_mm, r_mm, c_mm = view.spacing
    findings = []
    for n, t in enumerate(tracks, start=1):
        s0, s1, r0, r1, c0, c1 = t.box3d()
        lo = (s0, max(0, math.floor(r0)), max(0, math.floor(c0)))
        hi = (s1, min(h - 1, max(lo[1], math.ceil(r1) - 1)), min(w - 1, max(lo[2], math.ceil(c1) - 1)))
        ijk_min, ijk_max = view.canonical_box_to_ijk(lo, hi)
        # voxel-centre coordinates: continuous pixel x in [p, p+1) is centre coordinate x - 0.5
        centre = view.canonical_to_ijk([[0.5 * (s0 + s1), 0.5 * (r0 + r1) - 0.5,
                                         0.5 * (c0 + c1) - 0.5]])
        corners = np.array([[s, r, c] for s in (s0 - 0.5, s1 + 0.5) for r in (r0 - 0.5, r1 - 0.5)
                            for c in (c0 - 0.5, c1 - 0.5)])
        corners_ras = volume.ijk_to_ras_points(view.canonical_to_ijk(corners))
        centre_ras = volume.ijk_to_ras_points(centre)[0]
        findings.append(Finding(
            id="L%d" % n, type=t.type, score=float(t.score),
            center_ras=[float(v) for v in centre_ras],
            size_ras=[float(v) for v in corners_ras.max(axis=0) - corners_ras.min(axis=0)],
            ijk_min=[int(v) for v in ijk_min], ijk_max=[int(v) for v in ijk_max],
            volume_mm3=track_volume_mm3(t, r_mm, c_mm, s_mm)))
    return findings


def findings_from_slice_boxes(boxes: Iterable[SliceBox], view: AxialView, volume: CTVolume,
                              min_extent_mm: float = DEFAULT_MIN_FINDING_EXTENT_MM,
                              iou_threshold: float = 0.3, max_gap: int = 1) -> List[Finding]:
    """Per-slice boxes (canonical slice, input pixels) -> 3D findings in RAS, best first.

    Public so that evaluation and tests use exactly the merge that ``analyze`` uses.
    """
    s_mm = view.spacing[0]
    min_slices = max(1, int(math.ceil(min_extent_mm / max(s_mm, 1e-6) - 1e-6)))
    tracks = link_slice_boxes(list(boxes), iou_threshold=iou_threshold, max_gap=max_gap)
    tracks = [t for t in tracks if t.slice_range[1] - t.slice_range[0] + 1 >= min_slices]
    tracks = suppress_duplicate_tracks(tracks)
    tracks.sort(key=lambda t: (-t.score, t.slice_range[0]))
    _, rows, cols = view.canonical_shape
    return _tracks_to_findings(tracks, view, volume, (rows, cols))


# --------------------------------------------------------------------------- main entry
def analyze(volume: CTVolume, model=None, device: str = "auto",
            tasks: Optional[Iterable[str]] = None,
            score_threshold: float = DEFAULT_SCORE_THRESHOLD,
            batch_size: Optional[int] = None,
            progress: Optional[ProgressCallback] = None,
            cancel: Union[None, Callable[[], bool], threading.Event] = None,
            seg_threshold: float = DEFAULT_SEG_THRESHOLD,
            min_island_mm3: float = DEFAULT_MIN_ISLAND_MM3,
            min_finding_extent_mm: float = DEFAULT_MIN_FINDING_EXTENT_MM,
            channels_last: bool = True,
            num_threads: Union[None, int, str] = "auto") -> AnalysisResult:
    """Analyse one CT volume with one multi-task model; results are on ``volume``'s grid.

    ``model``: None (the bundled default, ``modelio.default_model_dir()``), a model folder, or a
    ``modelio.LoadedModel`` (reused as is - keep one around to avoid reloading). ``tasks``: a
    subset of the model's tasks (None: all it has); a task not asked for costs nothing.
    ``progress(fraction, stage_text)`` is called with non-decreasing fractions ending at 1.0.
    ``cancel`` (a callable returning True, or a ``threading.Event``) is polled between steps
    and batches; when set, :class:`errors.Cancelled` is raised and nothing is returned.
    ``num_threads`` (CPU only): an int fixes PyTorch's threads for this call; None keeps
    PyTorch's setting; "auto" (default) measures batches with PyTorch's setting and with one
    thread and keeps the faster (see :class:`_ThreadTuner`). The previous setting is restored.
    ``score_threshold`` applies to per-slice detections.

    Raises :class:`errors.InputError` subclasses for bad input, :class:`errors.ModelError` for
    a missing/corrupt model, :class:`errors.DeviceUnavailableError`, :class:`errors.Cancelled`.
    """
    import torch

    previous = torch.get_num_threads()
    try:
        if num_threads not in (None, "auto"):
            torch.set_num_threads(max(1, int(num_threads)))
        return _analyze(volume, model, device, tasks, score_threshold, batch_size, progress,
                        cancel, seg_threshold, min_island_mm3, min_finding_extent_mm,
                        channels_last, num_threads == "auto")
    finally:
        torch.set_num_threads(previous)


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


def _analyze(volume, model, device, tasks, score_threshold, batch_size, progress, cancel,
             seg_threshold, min_island_mm3, min_finding_extent_mm, channels_last, tune_threads):
    import torch

    from .model import detections_from_outputs
    from .representation import geometry_for_volume, hu_slices_to_model

    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    prog = _Progress(progress, cancel)

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + (now - t0)
        return now

    # 1. validate ------------------------------------------------------------------------
    prog(0.0, "Validating input")
    t = time.perf_counter()
    validate_ct(volume)
    dev = resolve_device(device)
    t = lap("validate", t)

    prog(0.02, "Loading model")
    loaded = resolve_model(model, dev)
    config = loaded.config
    rep = loaded.representation
    try:
        run_tasks = loaded.model.resolve_tasks(tasks)
    except ValueError as exc:
        raise errors.TaskNotAvailableError(str(exc)) from exc
    net = inference_network(loaded, dev, channels_last)
    t = lap("load_model", t)

    # 2./3. axial view and lung region --------------------------------------------------
    prog(0.05, "Finding the lungs")
    view = axial_view(volume.ijk_to_ras, volume.array.shape)
    canon = view.to_canonical(volume.array)
    s_mm, r_mm, c_mm = view.spacing
    geometry, region = geometry_for_volume(canon, (c_mm, r_mm, s_mm), rep)
    slices = np.asarray(region.slices, dtype=np.int64)
    n_slices = canon.shape[0]
    t = lap("lung_region", t)

    # outputs, allocated in input order and written through their axial views
    shape = volume.array.shape
    lesion_types = tuple(config.lesion_types)
    masks: Dict[str, np.ndarray] = {}
    mask_views = []
    if "segmentation" in run_tasks:
        for name in lesion_types:
            masks[name] = np.zeros(shape, dtype=np.uint8)
            mask_views.append(view.to_canonical(masks[name]))
    recon: Optional[np.ndarray] = None
    recon_view = None
    if "reconstruction" in run_tasks:
        recon = np.full(shape, AIR_HU, dtype=np.int16)
        recon_view = view.to_canonical(recon)
    slice_probs: List[np.ndarray] = []
    boxes: List[SliceBox] = []
    in_h, in_w = canon.shape[1], canon.shape[2]
    lo_hu, hi_hu = float(rep.hu_window[0]), float(rep.hu_window[1])

    # 4./5. batched inference --------------------------------------------------------------
    bs = int(batch_size or default_batch_size(dev))
    n_batches = max(1, int(math.ceil(len(slices) / float(bs))))
    timings.update(preprocess=0.0, forward=0.0, map_back=0.0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    tuner = _ThreadTuner(tune_threads and dev == "cpu")
    with torch.inference_mode():
        for bi in range(n_batches):
            prog(0.1 + 0.8 * bi / n_batches,
                 "Analysing slices %d/%d" % (min(bi * bs, len(slices)), len(slices)))
            t = time.perf_counter()
            idx = slices[bi * bs:(bi + 1) * bs]
            if idx.size == 0:
                break
            x = hu_slices_to_model(canon[idx], geometry, rep)
            x = x.to(dev, non_blocking=True).contiguous(memory_format=memory_format)
            t = lap("preprocess", t)
            tuner.before_batch(bi)
            with _autocast(dev):
                out = net(x, run_tasks)
            out = {k: v.float().to("cpu") for k, v in out.items()}
            t_forward = time.perf_counter() - t
            tuner.after_batch(bi, t_forward / len(idx))
            t = lap("forward", t)
            if "class_logits" in out:
                slice_probs.append(torch.softmax(out["class_logits"], dim=1).numpy())
            seg_prob = torch.sigmoid(out["seg_logits"]) if "seg_logits" in out else None
            if seg_prob is not None:
                prob = geometry.to_input(seg_prob, fill=0.0)
                on = (prob > seg_threshold).numpy()
                for ti, mv in enumerate(mask_views):
                    mv[idx] = on[:, ti]
            if "recon" in out:
                # the model reproduces the clipped unit image: outside [0, 1] means nothing
                hu = out["recon"].clamp_(0.0, 1.0) * (hi_hu - lo_hu) + lo_hu
                hu = geometry.to_input(hu, fill=float(AIR_HU))
                recon_view[idx] = torch.round(hu[:, 0]).clamp_(-32768, 32767).numpy().astype(
                    np.int16)
            if "det_heatmap" in out:
                dets = detections_from_outputs(out, config.det_stride, lesion_types, score_threshold,
                                               seg_prob)
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

    # 6. post-processing ---------------------------------------------------------------------
    prog(0.9, "Post-processing")
    t = time.perf_counter()
    if mask_views and slices.size:
        voxel_mm3 = float(s_mm * r_mm * c_mm)
        min_voxels = int(math.ceil(min_island_mm3 / voxel_mm3))
        k0, k1 = int(slices.min()), int(slices.max()) + 1
        r0b, c0b = max(0, geometry.row0), max(0, geometry.col0)
        r1b = min(in_h, geometry.row0 + geometry.side)
        c1b = min(in_w, geometry.col0 + geometry.side)
        for mv in mask_views:
            prog.check()
            sub = mv[k0:k1, r0b:r1b, c0b:c1b]
            if sub.any():
                remove_small_islands(sub, min_voxels)
    findings = []
    if "detection" in run_tasks:
        findings = findings_from_slice_boxes(boxes, view, volume, min_finding_extent_mm)
    class_probs: Dict[str, float] = {}
    predicted = ""
    probs_arr: Optional[np.ndarray] = None
    # analysed slices as indices along the input array's slice axis (view.perm[0])
    analysed = np.asarray((n_slices - 1 - slices) if view.flips[0] else slices, dtype=np.int64)
    order = np.argsort(analysed, kind="stable")
    if slice_probs:
        probs_arr = np.concatenate(slice_probs, axis=0).astype(np.float32)
        class_probs = aggregate_slice_probabilities(probs_arr, slice_mm=s_mm,
                                                    class_names=config.class_names)
        predicted = max(class_probs, key=lambda k: class_probs[k])
        probs_arr = probs_arr[order]
    lap("postprocess", t)
    timings["total"] = time.perf_counter() - t_start
    prog.check()

    result = AnalysisResult(
        volume=volume, class_probabilities=class_probs, predicted_class=predicted,
        slice_probabilities=probs_arr, analysed_slices=analysed[order],
        lesion_masks=masks, reconstruction_hu=recon, findings=findings,
        model=loaded.identity, timings_s=timings, device=dev, slice_axis=int(view.perm[0]))
    prog(1.0, "Done")
    return result
