"""Where and how the network runs on one volume: device and model resolution, the inference
copy of the network (batch norms folded, channels-last, bfloat16 where native), and the
batched slice loop that turns a CT into the network's outputs on the canonical axial grid
(:func:`run_network` -> :class:`NetworkOutputs`).

The steps after it (lungs, candidates, findings, verdict) are :mod:`.lesion_stage` and
:class:`.inference.Analyzer`, which resolves every option once and calls these.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from . import errors
from .orientation import AxialView, axial_view
from .postprocess import SliceBox
from .volume import AIR_HU, CTVolume


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


class ModelGridReconstruction:
    """The reconstruction as the network made it: one unit image per analysed slice on the
    model's grid (``input_size`` squared, in the network's output dtype), mapped to HU on
    the input grid only when asked for.

    Why not the HU volume itself: on the input grid it is as large as the CT (int16), and
    holding it from the first batch to the last file doubles what a thin-slice scan needs
    (a 1,044-slice CT: 0.55 GB vs 0.12 GB here). :meth:`to_hu` runs the very operations the
    slice loop ran before (clip to [0, 1], window to HU, bilinear to the input box, round), so
    the volume it returns is the one the loop used to fill.
    """

    #: A float32 reconstruction is kept as int16 steps of the unit range [0, 1] (the range
    #: :meth:`to_hu` clips to anyway): half the bytes of a thin-slice scan's largest array on
    #: a float32 CPU, and within (hi - lo) / 65535 / 2, about 0.01 HU for the default window,
    #: of the float value before it is rounded to whole HU. bfloat16 is kept as it is.
    STEPS = 65535

    def __init__(self, unit, slices: np.ndarray, geometry, view: AxialView, shape,
                 hu_window: Tuple[float, float]) -> None:
        self.unit = unit  # torch tensor (n, S, S): bfloat16, or int16 steps (see quantize)
        self.slices = np.asarray(slices, dtype=np.int64)
        self.geometry = geometry
        self.view = view
        self.shape = tuple(int(v) for v in shape)
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))

    @classmethod
    def storage_dtype(cls, network_dtype):
        """How a batch of the network's reconstruction in ``network_dtype`` is stored."""
        import torch

        return network_dtype if network_dtype == torch.bfloat16 else torch.int16

    @classmethod
    def quantize(cls, recon, dtype):
        """One batch of unit reconstructions as :meth:`storage_dtype` says it is stored."""
        import torch

        if dtype != torch.int16:
            return recon.to(dtype)
        steps = torch.round(torch.clamp(recon.float(), 0.0, 1.0) * cls.STEPS) - 32768.0
        return steps.to(torch.int16)

    @property
    def nbytes(self) -> int:
        return int(self.unit.numel() * self.unit.element_size())

    def _unit_rows(self, rows):
        import torch

        unit = self.unit[rows]
        if unit.dtype == torch.int16:
            return (unit.float() + 32768.0) / float(self.STEPS)
        return unit.float()

    def _slices_hu(self, rows):
        import torch

        lo, hi = self.hu_window
        with torch.inference_mode():  # out of place: the stored maps are never changed
            hu = torch.clamp(self._unit_rows(rows), 0.0, 1.0) * (hi - lo) + lo
            hu = self.geometry.to_input(hu[:, None], fill=float(AIR_HU))
            return torch.round(hu[:, 0]).clamp_(-32768, 32767).numpy().astype(np.int16)

    def to_hu(self, batch: int = 16, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The reconstruction in HU on the input grid (int16, input array order; air where the
        network did not look). A new array on every call (keep it while you need it), or
        filled into ``out`` (int16 of the input's shape, e.g. a VTK image's own memory)."""
        if out is None:
            out = np.empty(self.shape, dtype=np.int16)
        elif out.shape != self.shape or out.dtype != np.int16:
            raise ValueError("out must be int16 of shape %s, got %s %s" % (self.shape, out.dtype,
                                                                          out.shape))
        out.fill(AIR_HU)
        canon = self.view.to_canonical(out)
        for start in range(0, len(self.slices), batch):
            rows = slice(start, start + batch)
            canon[self.slices[rows]] = self._slices_hu(rows)
        return out

    def hu_slabs(self, depth: int = 16):
        """:meth:`to_hu` as consecutive slabs along the input array's first axis, for writing
        a file without the whole HU volume in memory: yields ``(k0, slab)`` with ``slab`` the
        int16 input slices ``k0 .. k0 + len(slab)``. When that axis is not the scan's axial
        axis (a volume stored sagittal or coronal) every slab needs every slice, so the whole
        volume comes as one slab."""
        import torch

        view = self.view
        if view.perm[0] != 0:
            yield 0, self.to_hu()
            return
        n = self.shape[0]
        row_of = np.full(n, -1, dtype=np.int64)  # canonical slice -> row of self.unit
        row_of[self.slices] = np.arange(len(self.slices))
        # a slab's own view: rows and columns as the volume's; its slices in input order
        slab_view = AxialView(view.perm, (False,) + tuple(view.flips[1:]), view.shape, view.spacing)
        depth = max(1, int(depth))
        for k0 in range(0, n, depth):
            k1 = min(n, k0 + depth)
            slab = np.full((k1 - k0,) + self.shape[1:], AIR_HU, dtype=np.int16)
            ks = np.arange(k0, k1)
            rows = row_of[(n - 1 - ks) if view.flips[0] else ks]
            local = np.flatnonzero(rows >= 0)
            if local.size:
                canon = slab_view.to_canonical(slab)
                canon[local] = self._slices_hu(torch.from_numpy(rows[local]))
            yield k0, slab

    def canonical_slice_hu(self, k: int) -> np.ndarray:
        """One canonical axial slice of :meth:`to_hu` (rows, cols) without building the volume."""
        hits = np.flatnonzero(self.slices == int(k))
        if hits.size == 0:
            return np.full(self.view.canonical_shape[1:], AIR_HU, dtype=np.int16)
        return self._slices_hu(slice(int(hits[0]), int(hits[0]) + 1))[0]


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
    reconstruction: Optional[ModelGridReconstruction]  # None if recon off
    timings: Dict[str, float] = field(default_factory=dict)
    #: the part of the canonical grid the network saw (analysed slices x its in-plane box);
    #: probabilities are 0 elsewhere, so only this part is stored
    seg_region: Tuple[slice, slice, slice] = (slice(0, 0),) * 3
    #: infection type -> uint8 P(type) x 255 on ``seg_region`` (a model with
    #: ``infection_types``: P(covid-infection) x softmax over the types); {} otherwise
    type_prob: Dict[str, np.ndarray] = field(default_factory=dict)

    def prob_crop(self, name: str, crop: Tuple[slice, slice, slice]) -> np.ndarray:
        """Lesion (or infection type) probabilities (uint8) of ``name`` on any canonical
        ``crop``."""
        region = self.seg_region
        prob = self.type_prob[name] if name in self.type_prob else self.seg_prob[name]
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
                batch_size: Optional[int], prog: Callable[[float, str], None], channels_last: bool = True,
                tune_threads: bool = True, fraction=(0.1, 0.8),
                precision: str = "bfloat16") -> NetworkOutputs:
    """Batched slice inference over the lung-bearing slices of ``volume`` (steps 2-5)."""
    import torch

    from .model import detections_from_outputs, infection_type_probabilities
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
    type_prob: Dict[str, np.ndarray] = {}
    infection_types = tuple(getattr(config, "infection_types", ()) or ())
    if "segmentation" in run_tasks:
        region_shape = (k_hi - k_lo, rr.stop - rr.start, cc.stop - cc.start)
        seg_prob = {name: np.zeros(region_shape, dtype=np.uint8) for name in lesion_types}
        type_prob = {name: np.zeros(region_shape, dtype=np.uint8) for name in infection_types}
    recon_unit = None
    slice_probs: List[np.ndarray] = []
    boxes: List[SliceBox] = []
    lo_hu, hi_hu = float(rep.hu_window[0]), float(rep.hu_window[1])

    bs = int(batch_size or default_batch_size(dev))
    n_batches = max(1, int(math.ceil(len(slices) / float(bs))))
    timings.update(preprocess=0.0, forward=0.0, map_back=0.0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # bfloat16 for a bfloat16 CPU network; an ONNX Runtime network says its own
    in_dtype = getattr(net, "input_dtype", None) or next(net.parameters()).dtype
    # ONNX Runtime fixes its threads when the session is made: the tuner is PyTorch's only
    tuner = _ThreadTuner(tune_threads and dev == "cpu" and not getattr(net, "fixed_threads", False))
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
            recon_dtype = out["recon"].dtype if "recon" in out else None
            out = {k: v.float().to("cpu") for k, v in out.items()}
            tuner.after_batch(bi, (time.perf_counter() - t) / len(idx))
            t = lap("forward", t)
            if "class_logits" in out:
                slice_probs.append(torch.softmax(out["class_logits"], dim=1).numpy())
            seg = torch.sigmoid(out["seg_logits"]) if "seg_logits" in out else None
            if seg is not None:
                prob = geometry.to_input_box(seg)  # == to_input(seg)[:, :, rr, cc]
                q = torch.round(prob.clamp_(0.0, 1.0) * 255.0).to(torch.uint8).numpy()
                for ti, name in enumerate(lesion_types):
                    seg_prob[name][idx - k_lo] = q[:, ti]
                if type_prob and "type_logits" in out:
                    tp = geometry.to_input_box(infection_type_probabilities(
                        out["seg_logits"], out["type_logits"], config))
                    tq = torch.round(tp.clamp_(0.0, 1.0) * 255.0).to(torch.uint8).numpy()
                    for ti, name in enumerate(infection_types):
                        type_prob[name][idx - k_lo] = tq[:, ti]
            if "recon" in out:
                # kept on the model grid in 16 bits (bfloat16 exactly as the network made
                # it, float32 as int16 steps); mapped to HU on the input grid when asked for
                store = ModelGridReconstruction.storage_dtype(recon_dtype)
                if recon_unit is None:
                    recon_unit = torch.empty((len(slices),) + tuple(out["recon"].shape[-2:]),
                                             dtype=store)
                recon_unit[bi * bs:bi * bs + len(idx)] = ModelGridReconstruction.quantize(
                    out["recon"][:, 0], store)
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
    recon = None
    if recon_unit is not None:
        recon = ModelGridReconstruction(recon_unit, slices, geometry, view, volume.array.shape,
                                        (lo_hu, hi_hu))
    return NetworkOutputs(view, geometry, region, slices, seg_prob, boxes, probs_arr, recon,
                          timings, seg_region, type_prob)
