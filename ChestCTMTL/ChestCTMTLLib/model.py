"""One 2D multi-task network for axial chest-CT slices (classification, lesion segmentation,
reconstruction, detection), with a selectable shared encoder.

Design choices and why:

* Shared encoder, five feature levels at strides 2, 4, 8, 16, 32 for every backbone, so the
  heads are identical whichever backbone is chosen and the paper's backbone comparison
  (``vgg13`` vs ``resnet50``) isolates the encoder. Both are written here in plain PyTorch:
  torchvision is not importable in Slicer's bundled Python and no hub weights are available.
* ``fast`` (default) is a MobileNetV2-style encoder (inverted residuals, depthwise-separable
  convolutions, widths 24-192, 1.03 M parameters) with depthwise-separable decoders: 1.0 GFLOPs
  (2 x MACs, vs 11 for resnet50 and 30 for vgg13) per 256x256 slice for all four heads, so a
  whole chest CT fits the 30 s budget on 2 CPU cores. (v1 used widths 16-128: 0.6 GFLOPs, but 5
  COVID-Dice points behind VGG-13; the wider encoder costs ~5 % more CPU time, the decoders dominate.)
* Segmentation: U-Net decoder with skip connections from every encoder level, plus the input
  image itself at full resolution so boundaries are not limited to the stride-2 grid; one
  sigmoid channel per lesion type (types may overlap, so not a softmax).
* Infection types (optional, ``ModelConfig.infection_types``): a 1x1 convolution on the same
  full-resolution features gives ``type_logits``, a softmax over ground-glass opacity vs
  consolidation that is read *given* infection: P(type k) = P(covid-infection) x softmax_k. So
  the types are disjoint and their union is the covid-infection channel by construction, a
  slice labelled only "infected" supervises that channel and never the split, and a model
  without the option has exactly the layers (and outputs) it always had.
* Reconstruction: decoder fed by the bottleneck only - no skips, linear output - so it cannot
  copy the input through a shortcut and really regularises the shared encoder.
* Detection: anchor-free CenterNet-style head at stride 4 (a per-type centre heatmap, box size
  and sub-cell offset). Chosen over Mask R-CNN because it has no anchors, RoI pooling or
  proposal sampling to tune (which need far more data than our few hundred lesions), trains
  with dense per-pixel losses that mix well with the other tasks in one batch, costs one small
  convolution stack on a shared feature map (cheap on CPU), and decodes with a 3x3 max-pool
  instead of NMS. Stride 4 keeps 10 mm nodules (~10 model pixels) at 2-3 heatmap cells.
* Task switches (the paper's w_i): heads that are not requested are not computed; heads not
  enabled in :class:`ModelConfig` are not even built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .results import CLASS_NAMES, LESION_TYPES

TASKS = ("classification", "segmentation", "reconstruction", "detection")
BACKBONES = ("fast", "vgg13", "resnet50")

#: The lesion channel the infection types split, and the types our data labels (COVID-SemiSeg
#: MultiClassInfection: 1 ground-glass opacity, 2 consolidation), in that order.
INFECTION = "covid-infection"
INFECTION_TYPES = ("ground-glass opacity", "consolidation")

_DEFAULT_WIDTHS = {
    "fast": (24, 32, 64, 128, 192),  # v2; chestctmtl-fast-v1 was (16, 24, 40, 80, 128)
    "vgg13": (64, 128, 256, 512, 512),
    "resnet50": (64, 64, 128, 256, 512),  # stem, then bottleneck widths (x4 expansion)
}


@dataclass
class ModelConfig:
    """Architecture of a :class:`MultiTaskNet`; stored verbatim as ``architecture`` in model.json."""

    backbone: str = "fast"
    widths: Optional[Tuple[int, ...]] = None  # None: the backbone's default
    decoder_widths: Tuple[int, ...] = (96, 64, 32, 16)  # at strides 16, 8, 4, 2
    recon_widths: Tuple[int, ...] = (64, 32, 16, 16, 8)  # at strides 16, 8, 4, 2, 1
    det_width: int = 48
    det_stride: int = 4
    cls_hidden: int = 128
    dropout: float = 0.2
    input_size: int = 256
    in_channels: int = 1
    class_names: Tuple[str, ...] = CLASS_NAMES
    lesion_types: Tuple[str, ...] = LESION_TYPES
    tasks: Tuple[str, ...] = TASKS
    #: () or INFECTION_TYPES: the kinds the covid-infection channel is split into
    infection_types: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError("backbone must be one of %s, got %r" % (BACKBONES, self.backbone))
        if self.widths is None:
            self.widths = _DEFAULT_WIDTHS[self.backbone]
        self.widths = tuple(int(v) for v in self.widths)
        if len(self.widths) != 5:
            raise ValueError("widths needs 5 entries, got %d" % len(self.widths))
        self.decoder_widths = tuple(int(v) for v in self.decoder_widths)
        self.recon_widths = tuple(int(v) for v in self.recon_widths)
        if len(self.decoder_widths) != 4 or len(self.recon_widths) != 5:
            raise ValueError("decoder_widths needs 4 entries and recon_widths 5")
        self.class_names = tuple(self.class_names)
        self.lesion_types = tuple(self.lesion_types)
        self.tasks = tuple(t for t in TASKS if t in tuple(self.tasks))
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError("tasks must be a non-empty subset of %s" % (TASKS,))
        if self.det_stride != 4:
            raise ValueError("only det_stride 4 is implemented")
        if self.input_size % 32:
            raise ValueError("input_size must be a multiple of 32")
        self.infection_types = tuple(self.infection_types)
        if self.infection_types:
            # the training data labels exactly these, in this order (GT values 1, 2)
            if self.infection_types != INFECTION_TYPES:
                raise ValueError("infection_types must be empty or %s, got %s"
                                 % (list(INFECTION_TYPES), list(self.infection_types)))
            if INFECTION not in self.lesion_types:
                raise ValueError("infection_types split the %r channel, which lesion_types %s lacks"
                                 % (INFECTION, list(self.lesion_types)))
            if "segmentation" not in self.tasks:
                raise ValueError("infection_types need the segmentation task")

    def to_dict(self) -> dict:
        # infection_types only when set: a model without them keeps the architecture record
        # (and so the checkpoint and card comparisons) it always had
        extra = {"infection_types": list(self.infection_types)} if self.infection_types else {}
        return {
            "backbone": self.backbone, "widths": list(self.widths),
            "decoder_widths": list(self.decoder_widths), "recon_widths": list(self.recon_widths),
            "det_width": self.det_width, "det_stride": self.det_stride,
            "cls_hidden": self.cls_hidden, "dropout": self.dropout,
            "input_size": self.input_size, "in_channels": self.in_channels,
            "class_names": list(self.class_names), "lesion_types": list(self.lesion_types),
            "tasks": list(self.tasks), **extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        allowed = set(cls.__dataclass_fields__)
        unknown = set(d) - allowed
        if unknown:
            raise ValueError("unknown architecture keys: %s" % sorted(unknown))
        kw = dict(d)
        for k in ("widths", "decoder_widths", "recon_widths", "class_names", "lesion_types", "tasks",
                  "infection_types"):
            if k in kw and kw[k] is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)


# --------------------------------------------------------------------------- building blocks

def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DSConv(nn.Module):
    """Depthwise 3x3 + pointwise 1x1: ~1/8 of a full 3x3 convolution's cost at these widths."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.dw = conv_bn(cin, cin, 3, stride, groups=cin)
        self.pw = conv_bn(cin, cout, 1)

    def forward(self, x):
        return self.pw(self.dw(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn(cin, hid, 1), conv_bn(hid, hid, 3, stride, groups=hid), conv_bn(hid, cout, 1, act=False))

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class FastEncoder(nn.Module):
    def __init__(self, cin: int, widths: Sequence[int], blocks: Sequence[int] = (1, 2, 2, 3, 2)):
        super().__init__()
        self.stem = conv_bn(cin, widths[0], 3, 2)
        stages = [nn.Sequential(*[InvertedResidual(widths[0], widths[0], 1, 1)
                                  for _ in range(blocks[0])])]
        for i in range(1, 5):
            layers = [InvertedResidual(widths[i - 1], widths[i], 2)]
            layers += [InvertedResidual(widths[i], widths[i], 1) for _ in range(blocks[i] - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(widths)

    def forward(self, x) -> List[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class VGG13Encoder(nn.Module):
    """VGG-13 (two 3x3 convs per block, BN added so it trains from scratch); pooled block outputs."""

    def __init__(self, cin: int, widths: Sequence[int]):
        super().__init__()
        blocks, c = [], cin
        for w in widths:
            blocks.append(nn.Sequential(conv_bn(c, w), conv_bn(w, w), nn.MaxPool2d(2)))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = tuple(widths)

    def forward(self, x):
        feats = []
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        return feats


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride),
                                  conv_bn(width, cout, 1, act=False))
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        return F.relu(self.body(x) + idt, inplace=True)


class ResNet50Encoder(nn.Module):
    """ResNet-50 (3-4-6-3 bottlenecks), torchvision's layout without torchvision."""

    def __init__(self, cin: int, widths: Sequence[int], layers: Sequence[int] = (3, 4, 6, 3)):
        super().__init__()
        self.stem = conv_bn(cin, widths[0], 7, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        stages, c = [], widths[0]
        for i, (w, n) in enumerate(zip(widths[1:], layers)):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w * 4
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = (widths[0],) + tuple(w * 4 for w in widths[1:])

    def forward(self, x):
        x = self.stem(x)
        feats = [x]
        x = self.pool(x)
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return feats


def build_encoder(config: ModelConfig) -> nn.Module:
    if config.backbone == "fast":
        return FastEncoder(config.in_channels, config.widths)
    if config.backbone == "vgg13":
        return VGG13Encoder(config.in_channels, config.widths)
    return ResNet50Encoder(config.in_channels, config.widths)


# --------------------------------------------------------------------------- heads

class ClassifierHead(nn.Module):
    """MLP on global average + max pooled bottleneck features."""

    def __init__(self, cin: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * cin, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, bottleneck):
        pooled = torch.cat([bottleneck.mean(dim=(2, 3)), bottleneck.amax(dim=(2, 3))], dim=1)
        return self.mlp(pooled)


class UNetDecoder(nn.Module):
    """Upsample, concatenate the encoder skip, depthwise-separable conv; ends at full resolution.

    ``n_types`` > 0 adds ``type_out``, a second 1x1 head on the same final features (the
    infection-type logits); with 0 the module has exactly the parameters it always had.
    """

    def __init__(self, enc_channels: Sequence[int], widths: Sequence[int], n_out: int, in_channels: int,
                 n_types: int = 0):
        super().__init__()
        c = enc_channels[4]
        ups = []
        for skip_c, w in zip(reversed(enc_channels[:4]), widths):
            ups.append(nn.Sequential(DSConv(c + skip_c, w), DSConv(w, w)))
            c = w
        self.ups = nn.ModuleList(ups)
        full = max(8, widths[-1] // 2)
        self.full = DSConv(c + in_channels, full)
        self.out = nn.Conv2d(full, n_out, 1)
        if n_types:
            self.type_out = nn.Conv2d(full, n_types, 1)

    def features(self, feats: List[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = feats[4]
        for up, skip in zip(self.ups, reversed(feats[:4])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.full(torch.cat([x, image], dim=1))

    def forward(self, feats: List[torch.Tensor], image: torch.Tensor):
        return self.out(self.features(feats, image))


class ReconDecoder(nn.Module):
    """Bottleneck-only decoder (no skips), linear 1-channel output in unit intensity."""

    def __init__(self, cin: int, widths: Sequence[int]):
        super().__init__()
        layers, c = [], cin
        for w in widths:
            layers.append(DSConv(c, w))
            c = w
        self.layers = nn.ModuleList(layers)
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, bottleneck):
        x = bottleneck
        for layer in self.layers:
            x = layer(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.out(x)


class CenterNetHead(nn.Module):
    """Light FPN over strides 4/8/16, then centre heatmap, log-size and offset at stride 4."""

    def __init__(self, enc_channels: Sequence[int], width: int, n_types: int):
        super().__init__()
        self.lat = nn.ModuleList([conv_bn(enc_channels[i], width, 1) for i in (1, 2, 3)])
        self.smooth = nn.Sequential(DSConv(width, width), DSConv(width, width))
        self.heatmap = nn.Conv2d(width, n_types, 1)
        self.size = nn.Conv2d(width, 2, 1)
        self.offset = nn.Conv2d(width, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # prior 0.1, CenterNet's focal-loss init

    def forward(self, feats):
        x = self.lat[2](feats[3])
        for i in (1, 0):
            skip = self.lat[i](feats[i + 1])
            x = skip + F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.smooth(x)
        return self.heatmap(x), self.size(x), self.offset(x)


class MultiTaskNet(nn.Module):
    def __init__(self, config: Optional[ModelConfig] = None):
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        self.encoder = build_encoder(c)
        ch = self.encoder.out_channels
        self.classifier = ClassifierHead(ch[4], c.cls_hidden, len(c.class_names), c.dropout) \
            if "classification" in c.tasks else None
        self.seg_decoder = UNetDecoder(ch, c.decoder_widths, len(c.lesion_types), c.in_channels,
                                       len(c.infection_types)) \
            if "segmentation" in c.tasks else None
        self.recon_decoder = ReconDecoder(ch[4], c.recon_widths) if "reconstruction" in c.tasks else None
        self.det_head = CenterNetHead(ch, c.det_width, len(c.lesion_types)) \
            if "detection" in c.tasks else None

    def resolve_tasks(self, tasks: Optional[Iterable[str]]) -> Tuple[str, ...]:
        if tasks is None:
            return self.config.tasks
        tasks = tuple(tasks)
        bad = [t for t in tasks if t not in self.config.tasks]
        if bad:
            raise ValueError("tasks %s are not enabled in this model (enabled: %s)"
                             % (bad, list(self.config.tasks)))
        return tasks

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError("expected input (B, %d, H, W), got %s" % (self.config.in_channels, tuple(x.shape)))
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError("input height and width must be multiples of 32, got %s" % (tuple(x.shape[-2:]),))
        return self.encoder(x)

    def forward(self, x: torch.Tensor, tasks: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
        tasks = self.resolve_tasks(tasks)
        feats = self.encode(x)
        out: Dict[str, torch.Tensor] = {}
        if "classification" in tasks:
            out["class_logits"] = self.classifier(feats[4])
        if "segmentation" in tasks:
            if self.config.infection_types:
                f = self.seg_decoder.features(feats, x)
                out["seg_logits"] = self.seg_decoder.out(f)
                out["type_logits"] = self.seg_decoder.type_out(f)
            else:
                out["seg_logits"] = self.seg_decoder(feats, x)
        if "reconstruction" in tasks:
            out["recon"] = self.recon_decoder(feats[4])
        if "detection" in tasks:
            hm, size, off = self.det_head(feats)
            out["det_heatmap"], out["det_size"], out["det_offset"] = hm, size, off
        return out


def infection_type_probabilities(seg_logits: torch.Tensor, type_logits: torch.Tensor,
                                 config: ModelConfig) -> torch.Tensor:
    """(B, K, H, W) P(infection type k) = P(covid-infection) x softmax_k(type_logits).

    The one reading of the type head that training (per-type loss), evaluation, ``predict`` and
    the whole-CT pipeline share: the K maps sum to the infection probability.
    """
    p_inf = torch.sigmoid(seg_logits[:, config.lesion_types.index(INFECTION)].float())[:, None]
    return p_inf * torch.softmax(type_logits.float(), dim=1)


def infection_type_masks(p_infection, type_prob, threshold: float = 0.5):
    """Disjoint per-type masks whose union is the infection mask ``p_infection >= threshold``:
    each infected pixel goes to its most probable type. ``p_infection`` (..., H, W) and
    ``type_prob`` (..., K, H, W) torch tensors or numpy arrays on the same grid; returns a bool
    array (..., K, H, W)."""
    p = np.asarray(p_infection, dtype=np.float32)
    q = np.asarray(type_prob, dtype=np.float32)
    best = q.argmax(axis=-3)
    k = np.arange(q.shape[-3]).reshape((-1, 1, 1))
    return (np.expand_dims(best, -3) == k) & np.expand_dims(p >= threshold, -3)


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# --------------------------------------------------------------------------- detection decoding

@dataclass
class Detection2D:
    """One box on one slice, in continuous model-input pixels (pixel p spans [p, p+1))."""

    type_index: int
    type: str
    score: float
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def center(self) -> Tuple[float, float]:
        return (0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    def to_dict(self) -> dict:
        return {"type_index": self.type_index, "type": self.type, "score": self.score,
                "x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1}


def decode_detections(heatmap, size, offset, stride: int = 4,
                      lesion_types: Sequence[str] = LESION_TYPES,
                      score_threshold: float = 0.3, max_per_image: int = 50,
                      heatmap_is_logits: bool = True) -> List[List[Detection2D]]:
    """CenterNet decoding: 3x3 local maxima of the heatmap above ``score_threshold``.

    ``heatmap`` (B, T, h, w) logits (or probabilities with ``heatmap_is_logits=False``),
    ``size`` (B, 2, h, w) = log of box (width, height) in model-input pixels, ``offset``
    (B, 2, h, w) = sub-cell (x, y) position of the centre in cells. The centre of cell (i, j)
    plus offset is ``((j + ox) * stride, (i + oy) * stride)``. Boxes are clipped to the image.
    Pure function of its inputs, so inference and evaluation decode identically.
    """
    hm = torch.as_tensor(heatmap).float()
    sz = torch.as_tensor(size).float()
    off = torch.as_tensor(offset).float()
    if hm.dim() != 4 or sz.shape[1] != 2 or off.shape[1] != 2:
        raise ValueError("expected heatmap (B,T,h,w), size and offset (B,2,h,w)")
    prob = torch.sigmoid(hm) if heatmap_is_logits else hm
    peaks = prob == F.max_pool2d(prob, 3, 1, 1)
    prob = torch.where(peaks, prob, torch.zeros_like(prob))
    b_n, t_n, h, w = prob.shape
    width, height = w * stride, h * stride
    results: List[List[Detection2D]] = []
    for b in range(b_n):
        flat = prob[b].reshape(-1)
        k = min(max_per_image, flat.numel())
        scores, idx = torch.topk(flat, k)
        keep = scores >= score_threshold
        scores, idx = scores[keep], idx[keep]
        dets = []
        for s, ix in zip(scores.tolist(), idx.tolist()):
            t, rem = divmod(ix, h * w)
            i, j = divmod(rem, w)
            ox, oy = float(off[b, 0, i, j]), float(off[b, 1, i, j])
            bw = float(np.exp(np.clip(float(sz[b, 0, i, j]), -2.0, 7.0)))
            bh = float(np.exp(np.clip(float(sz[b, 1, i, j]), -2.0, 7.0)))
            cx, cy = (j + ox) * stride, (i + oy) * stride
            dets.append(Detection2D(
                int(t), str(lesion_types[t]) if t < len(lesion_types) else str(t), float(s),
                float(max(0.0, cx - bw / 2)), float(max(0.0, cy - bh / 2)),
                float(min(width, cx + bw / 2)), float(min(height, cy + bh / 2))))
        results.append(dets)
    return results


def rescore_detections(dets: List[List[Detection2D]], seg_prob,
                       score_threshold: float = 0.0) -> List[List[Detection2D]]:
    """Detection score x segmentation agreement: ``sqrt(det_score * peak lesion probability in
    the box)``, for the box's own lesion type; boxes below ``score_threshold`` are dropped.

    Why: the detection head proposes every lesion (findings are its boxes, never segmentation
    blobs), but its centre heatmap is trained on a few hundred lesions and fires on vessels and
    hila; the segmentation head, trained on every lesion pixel, rarely agrees there. Requiring
    both (the idea of Mask Scoring R-CNN, without an extra head) keeps a box's place and size and
    only changes its confidence. ``seg_prob`` is (B, T, H, W) sigmoid output at model-input size.
    A geometric mean keeps the score on the detection head's scale: a box needs a detection
    score of at least ``score_threshold ** 2`` to survive, so decode with that threshold.
    """
    p = torch.as_tensor(seg_prob).float()
    h, w = p.shape[-2:]
    out: List[List[Detection2D]] = []
    for b, per_image in enumerate(dets):
        kept = []
        for d in per_image:
            r0, r1 = int(np.floor(d.y0)), int(np.ceil(d.y1))
            c0, c1 = int(np.floor(d.x0)), int(np.ceil(d.x1))
            r0, c0 = min(max(r0, 0), h - 1), min(max(c0, 0), w - 1)
            r1, c1 = max(r1, r0 + 1), max(c1, c0 + 1)
            peak = float(p[b, d.type_index, r0:min(r1, h), c0:min(c1, w)].max())
            score = float(np.sqrt(max(0.0, d.score) * max(0.0, peak)))
            if score >= score_threshold:
                kept.append(Detection2D(d.type_index, d.type, score, d.x0, d.y0, d.x1, d.y1))
        out.append(kept)
    return out


def detections_from_outputs(out: Dict[str, torch.Tensor], stride: int, lesion_types: Sequence[str],
                            score_threshold: float, seg_prob=None) -> List[List[Detection2D]]:
    """The findings' boxes of one batch of network outputs, as inference and evaluation see them:
    decoded detection-head boxes, scored by :func:`rescore_detections` when the segmentation
    head ran (``seg_prob``: its sigmoid output, if the caller already has it)."""
    if "seg_logits" not in out:
        return decode_detections(out["det_heatmap"], out["det_size"], out["det_offset"], stride,
                                 lesion_types, score_threshold=score_threshold)
    dets = decode_detections(out["det_heatmap"], out["det_size"], out["det_offset"], stride,
                             lesion_types, score_threshold=score_threshold ** 2)
    if seg_prob is None:
        seg_prob = torch.sigmoid(out["seg_logits"])
    return rescore_detections(dets, seg_prob, score_threshold)
