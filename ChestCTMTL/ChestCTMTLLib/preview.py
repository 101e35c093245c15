"""A one-picture summary of one analysis (``preview.png`` in every case folder).

Why a picture: most people open a case folder to see *whether the result looks plausible*,
and a PNG shows that at a glance anywhere (file browser, mail, a CI artefact) without Slicer.
It is a thumbnail of the result, not a viewer: a few informative axial slices, the lesion
overlay, the detection boxes, thin lung outlines and the reconstruction next to the CT.
:func:`write_lung_preview` draws a second, standalone picture of the lung segmentation alone
(a coronal slice and one axial slice per lung zone), for checking the lungs of many CTs fast.

Orientation: slices are taken through :func:`orientation.axial_view`, the same permutation and
flips the model itself sees, so they are shown in the radiological convention whatever the
input's voxel order (patient's right on the image's left, anterior at the top).

Only numpy and matplotlib's object API are used (a ``Figure`` on an Agg canvas, never
``pyplot``): no global backend is switched, no window can open, and it is safe to call from a
worker thread inside Slicer, where it must not disturb the application's own matplotlib use.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .lungs import LUNG_NAMES
from .orientation import AxialView, axial_view
from .results import CLASS_NAMES, AnalysisResult, Finding, LesionMasks

PREVIEW_FILE = "preview.png"
NOTE = "Research use, not a diagnosis."

#: Lung window (level, width) in HU: the setting radiologists read parenchyma and nodules in.
LUNG_WINDOW = (-600.0, 1500.0)
#: The terminology's recommended colours (Resources/Terminology/ChestCTMTL.term.json), used
#: when the caller passes none, so the picture matches Slicer's segment colours.
DEFAULT_COLORS: Dict[str, Tuple[float, float, float]] = {
    "covid-infection": (230 / 255.0, 159 / 255.0, 0.0),
    "ground-glass opacity": (240 / 255.0, 228 / 255.0, 66 / 255.0),
    "consolidation": (213 / 255.0, 94 / 255.0, 0.0),
    "nodule-mass": (204 / 255.0, 51 / 255.0, 153 / 255.0),
    "mass": (170 / 255.0, 34 / 255.0, 120 / 255.0),
    # Slicer's General Anatomy colour for both lungs (see the terminology file)
    "right lung": (197 / 255.0, 165 / 255.0, 145 / 255.0),
    "left lung": (197 / 255.0, 165 / 255.0, 145 / 255.0),
}
#: Colours for lesion types nobody coloured: saturated, so they never vanish into grey CT.
_SPARE_COLORS = ((0.0, 158 / 255.0, 115 / 255.0), (86 / 255.0, 180 / 255.0, 233 / 255.0),
                 (0.0, 114 / 255.0, 178 / 255.0))
OVERLAY_ALPHA = 0.4
LUNG_LINE_WIDTH = 0.9  # points: thin, so lesion outlines at the pleura stay readable
DEFAULT_DPI = 110
DEFAULT_MAX_SLICES = 3
#: Boxes beyond this many per slice are drawn without a label (an untrained or noisy model
#: can report dozens; their labels would hide the image).
MAX_LABELS_PER_SLICE = 6
#: Colour of a nodule's long and short axis: a cyan no lesion type or lung outline uses.
AXIS_COLOR = (0.0, 0.9, 1.0)
AXIS_LINE_WIDTHS = {"long": 1.3, "short": 1.0}
_BODY_HU = -500.0  # above this a pixel is patient (or table), below it is air


class PreviewUnavailableError(RuntimeError):
    """matplotlib is not installed (e.g. a bare Slicer Python): no preview can be drawn."""


def available() -> bool:
    """Whether matplotlib can be imported (Slicer does not ship it)."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class PreviewSlice:
    """One shown slice: its canonical (axial display) index and why it was chosen."""

    canonical: int  # index along the axial view's slice axis (inferior -> superior)
    input_index: int  # the same slice as an index along the input array's slice axis
    reason: str


@dataclass
class PreviewPanel:
    """Where one slice went in the figure (kept so tests can find pixels of known things)."""

    slice: PreviewSlice
    ct_axes: object
    recon_axes: Optional[object]
    #: finding id -> (label text, (row0, col0, row1, col1) inclusive canonical box)
    boxes: Dict[str, Tuple[str, Tuple[int, int, int, int]]] = field(default_factory=dict)
    #: finding id -> {"long"|"short": ((row0, col0), (row1, col1))} canonical axis end points
    axes: Dict[str, Dict[str, Tuple[Tuple[float, float], Tuple[float, float]]]] = \
        field(default_factory=dict)
    #: finding id -> its measurement line next to the box label ("" for none)
    measurements: Dict[str, str] = field(default_factory=dict)


@dataclass
class Preview:
    figure: object
    panels: List[PreviewPanel]
    view: AxialView
    path: Optional[Path] = None

    def data_to_pixel(self, axes, row: float, col: float) -> Tuple[float, float]:
        """Canonical (row, col) on ``axes`` -> (pixel row, pixel col) in the saved PNG."""
        x, y = axes.transData.transform((col, row))
        height = self.figure.get_size_inches()[1] * self.figure.dpi
        return float(height - y), float(x)


# --------------------------------------------------------------------------- geometry
def ijk_to_canonical(view: AxialView, ijk) -> np.ndarray:
    """(N, 3) voxel indices (i, j, k) -> (N, 3) canonical (slice, row, col); inverse of
    :meth:`AxialView.canonical_to_ijk`."""
    p = np.atleast_2d(np.asarray(ijk, dtype=np.float64))[:, ::-1]  # numpy order (k, j, i)
    c = p[:, list(view.perm)].copy()
    shape = view.canonical_shape
    for axis, flipped in enumerate(view.flips):
        if flipped:
            c[:, axis] = (shape[axis] - 1) - c[:, axis]
    return c


def finding_canonical_box(view: AxialView, finding: Finding) -> Tuple[np.ndarray, np.ndarray]:
    """A finding's inclusive voxel box as inclusive canonical (slice, row, col) min and max."""
    corners = ijk_to_canonical(view, [finding.ijk_min, finding.ijk_max])
    return (np.rint(corners.min(axis=0)).astype(int), np.rint(corners.max(axis=0)).astype(int))


def measurement_label(finding: Finding) -> str:
    """"18.7 \u00d7 15.1 mm, part-solid, 4B" for a measured nodule; "" otherwise."""
    m = finding.measurements or {}

    def mm(key):
        try:
            value = float(m.get(key))
        except (TypeError, ValueError):
            return None
        return None if value != value else value

    parts = []
    long_mm, short_mm = mm("long_axis_mm"), mm("short_axis_mm")
    if long_mm is not None and short_mm is not None:
        parts.append("{:.1f} \u00d7 {:.1f} mm".format(long_mm, short_mm))
    elif long_mm is not None:
        parts.append("{:.1f} mm".format(long_mm))
    if m.get("composition"):
        parts.append(str(m["composition"]))
    category = m.get("size_category")
    band = category.get("category") if isinstance(category, dict) else category
    if band:
        parts.append(str(band))
    return ", ".join(parts)


def finding_axes(finding: Finding) -> Dict[str, np.ndarray]:
    """A nodule's measured axes as {"long"|"short": (2, 3) canonical (slice, row, col)}."""
    out = {}
    for which in ("long", "short"):
        points = (finding.measurements or {}).get(which + "_axis_points")
        if not points:
            continue
        array = np.asarray(points, dtype=np.float64)
        if array.shape == (2, 3) and np.all(np.isfinite(array)):
            out[which] = array
    return out


def _input_index(view: AxialView, canonical_slice: int) -> int:
    n = view.canonical_shape[0]
    return int(n - 1 - canonical_slice) if view.flips[0] else int(canonical_slice)


def _slice_s_mm(result: AnalysisResult, view: AxialView, canonical_slice: int) -> float:
    _, rows, cols = view.canonical_shape
    ijk = view.canonical_to_ijk([[canonical_slice, (rows - 1) / 2.0, (cols - 1) / 2.0]])
    return float(result.volume.ijk_to_ras_points(ijk)[0, 2])


# --------------------------------------------------------------------------- slice choice
class _SliceMasks:
    """The lesion masks on the canonical grid, read a slice or a box at a time: from an
    analysis (:class:`LesionMasks`) straight from its one array of type bits, so drawing a
    preview makes no CT-sized copy per type."""

    CHUNK = 32  # slices per step of :meth:`area_per_slice` (bounds its temporary)

    def __init__(self, masks, view: AxialView) -> None:
        self._arrays: Dict[str, np.ndarray] = {}
        self._labels = None
        self._bits: Dict[str, int] = {}
        if isinstance(masks, LesionMasks):
            self._labels = view.to_canonical(masks.labels)
            self._bits = dict(masks.bits)
        else:
            self._arrays = {name: view.to_canonical(np.asarray(m)) for name, m in masks.items()}

    @property
    def names(self) -> List[str]:
        return list(self._bits) if self._labels is not None else list(self._arrays)

    def __bool__(self) -> bool:
        return bool(self.names)

    def on(self, name: str, index) -> np.ndarray:
        """Where type ``name`` is, on ``array[index]`` of the canonical grid (bool)."""
        if self._labels is None:
            return self._arrays[name][index] > 0
        return np.bitwise_and(self._labels[index], self._bits[name]) != 0

    def area_per_slice(self, n_slices: int) -> np.ndarray:
        """Lesion voxels per canonical slice, summed over types (a voxel two types share
        counts twice)."""
        area = np.zeros(n_slices, dtype=np.int64)
        if self._labels is None:
            for mask in self._arrays.values():
                area += mask.reshape(n_slices, -1).sum(axis=1, dtype=np.int64)
            return area
        # per type bit, voxels counted in uint8 chunks (a lookup into int64 weights made
        # CT-sized int64 temporaries: five times slower)
        for bit in self._bits.values():
            for k0 in range(0, n_slices, self.CHUNK):
                on = np.bitwise_and(self._labels[k0:k0 + self.CHUNK], bit)  # a new array
                area[k0:k0 + len(on)] += np.count_nonzero(on.reshape(len(on), -1), axis=1)
        return area


def choose_slices(result: AnalysisResult, max_slices: int = DEFAULT_MAX_SLICES,
                  view: Optional[AxialView] = None) -> List[PreviewSlice]:
    """The most informative axial slices, best first.

    The slice of each top-scoring finding (within its box, the one with most lesion voxels;
    a finding already visible on a chosen slice adds none), then slices of largest lesion
    area, well apart; with neither, the middle of the analysed range.
    """
    if max_slices < 1:
        raise ValueError("max_slices must be at least 1")
    view = view or axial_view(result.volume.ijk_to_ras, result.volume.array.shape)
    n_slices = view.canonical_shape[0]
    masks = _SliceMasks(result.lesion_masks, view)
    chosen: List[PreviewSlice] = []

    def taken(canonical: int) -> bool:
        return any(s.canonical == canonical for s in chosen)

    for finding in sorted(result.findings, key=lambda f: -float(f.score)):
        if len(chosen) >= max_slices:
            break
        lo, hi = finding_canonical_box(view, finding)
        s0, s1 = max(0, int(lo[0])), min(n_slices - 1, int(hi[0]))
        if s1 < s0 or any(s0 <= s.canonical <= s1 for s in chosen):
            continue
        best = (s0 + s1) // 2
        if masks:
            area = [sum(int(masks.on(name, (s, slice(lo[1], hi[1] + 1),
                                            slice(lo[2], hi[2] + 1))).sum())
                        for name in masks.names)
                    for s in range(s0, s1 + 1)]
            if max(area) > 0:
                best = s0 + int(np.argmax(area))
        chosen.append(PreviewSlice(best, _input_index(view, best), "finding {} ({} {:.2f})".format(
            finding.id, finding.type, float(finding.score))))

    if masks and len(chosen) < max_slices:
        area = masks.area_per_slice(n_slices)
        gap = max(1, n_slices // (2 * max_slices))
        for s in np.argsort(-area, kind="stable"):
            if len(chosen) >= max_slices or area[s] == 0:
                break
            if any(abs(int(s) - c.canonical) < gap for c in chosen):
                continue
            chosen.append(PreviewSlice(int(s), _input_index(view, int(s)), "largest lesion area"))

    if not chosen:
        analysed = result.analysed_slices
        if analysed is not None and len(analysed):
            canonical = [n_slices - 1 - int(a) if view.flips[0] else int(a) for a in analysed]
            middle = (min(canonical) + max(canonical)) // 2
            reason = "no lesion found: middle of the analysed range"
        else:
            middle = n_slices // 2
            reason = "no lesion found: middle slice"
        chosen.append(PreviewSlice(middle, _input_index(view, middle), reason))
    return chosen


# --------------------------------------------------------------------------- drawing
def _colors_for(types: Sequence[str], colors: Optional[Dict[str, Sequence[float]]]):
    merged = dict(DEFAULT_COLORS)
    merged.update({k: tuple(float(c) for c in v[:3]) for k, v in (colors or {}).items()})
    out, spare = {}, 0
    for name in types:
        if name not in merged:
            merged[name] = _SPARE_COLORS[spare % len(_SPARE_COLORS)]
            spare += 1
        out[name] = merged[name]
    return out


def _body_crop(ct_slices: Sequence[np.ndarray], boxes: Sequence[Tuple[int, int, int, int]]):
    """(row0, row1, col0, col1) half-open: the patient plus a margin, so the lungs fill the
    panel instead of the air around the body (same crop for every row, for comparability)."""
    rows, cols = ct_slices[0].shape
    body = np.zeros((rows, cols), dtype=bool)
    for ct in ct_slices:
        body |= ct > _BODY_HU
    row_hits = np.flatnonzero(body.sum(axis=1) > max(3, 0.02 * cols))
    col_hits = np.flatnonzero(body.sum(axis=0) > max(3, 0.02 * rows))
    if row_hits.size == 0 or col_hits.size == 0:
        return 0, rows, 0, cols
    r0, r1, c0, c1 = int(row_hits[0]), int(row_hits[-1]) + 1, int(col_hits[0]), int(col_hits[-1]) + 1
    for br0, bc0, br1, bc1 in boxes:
        r0, r1, c0, c1 = min(r0, br0), max(r1, br1 + 1), min(c0, bc0), max(c1, bc1 + 1)
    margin_r, margin_c = max(2, (r1 - r0) // 20), max(2, (c1 - c0) // 20)
    return (max(0, r0 - margin_r), min(rows, r1 + margin_r),
            max(0, c0 - margin_c), min(cols, c1 + margin_c))


def _verdict_lines(result: AnalysisResult) -> Tuple[str, str]:
    probs = result.class_probabilities or {}
    if not probs or not result.predicted_class:
        return "Classification not run", ""
    names = [n for n in CLASS_NAMES if n in probs] + [n for n in probs if n not in CLASS_NAMES]
    verdict = "Model verdict: {} ({:.0%})".format(result.predicted_class,
                                                  float(probs[result.predicted_class]))
    return verdict, "   ".join("{} {:.2f}".format(n, float(probs[n])) for n in names)


def _show_slice(axes, image: np.ndarray, aspect: float, crop) -> None:
    level, width = LUNG_WINDOW
    axes.imshow(image, cmap="gray", vmin=level - width / 2.0, vmax=level + width / 2.0,
                interpolation="antialiased", aspect=aspect, origin="upper")
    r0, r1, c0, c1 = crop
    axes.set_xlim(c0 - 0.5, c1 - 0.5)
    axes.set_ylim(r1 - 0.5, r0 - 0.5)  # row 0 (anterior) at the top
    # no ticks: hidden axes draw none (set_xticks([]) makes and drops tick artists: slower)
    axes.xaxis.set_visible(False)
    axes.yaxis.set_visible(False)
    for spine in axes.spines.values():
        spine.set_visible(False)


def _orientation_letters(axes, top: str = "A", bottom: str = "P") -> None:
    style = dict(transform=axes.transAxes, color="white", fontsize=7, fontweight="bold",
                 alpha=0.8)
    axes.text(0.015, 0.5, "R", ha="left", va="center", **style)
    axes.text(0.985, 0.5, "L", ha="right", va="center", **style)
    axes.text(0.5, 0.985, top, ha="center", va="top", **style)
    axes.text(0.5, 0.015, bottom, ha="center", va="bottom", **style)


def _draw_lung_outlines(axes, labels_2d: np.ndarray, palette, crop) -> None:
    """A thin contour around each lung's voxels (at voxel borders), then the crop restored
    (``contour`` autoscales the axes)."""
    for value, name in sorted(LUNG_NAMES.items()):
        on = labels_2d == value
        if on.any():
            axes.contour(on.astype(np.float32), levels=[0.5], colors=[palette[name]],
                         linewidths=LUNG_LINE_WIDTH)
    r0, r1, c0, c1 = crop
    axes.set_xlim(c0 - 0.5, c1 - 0.5)
    axes.set_ylim(r1 - 0.5, r0 - 0.5)


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch, Rectangle
    except ImportError as exc:
        raise PreviewUnavailableError("matplotlib is needed for preview.png: {}".format(exc)) \
            from exc
    return FigureCanvasAgg, Figure, Line2D, Patch, Rectangle


def preview_figure(result: AnalysisResult, max_slices: int = DEFAULT_MAX_SLICES,
                   colors: Optional[Dict[str, Sequence[float]]] = None,
                   title: Optional[str] = None, dpi: int = DEFAULT_DPI) -> Preview:
    """Draw the preview of ``result`` on a new Agg figure (not saved)."""
    FigureCanvasAgg, Figure, Line2D, Patch, Rectangle = _matplotlib()

    volume = result.volume
    view = axial_view(volume.ijk_to_ras, volume.array.shape)
    slices = choose_slices(result, max_slices, view)
    ct = view.to_canonical(volume.array)
    # the reconstruction of the shown slices only (from an analysis it is built on demand)
    recon = ({c.canonical: result.reconstruction_canonical_slice(view, c.canonical)
              for c in slices} if result.has_reconstruction else None)
    lesion_types = list(result.lesion_masks)
    for finding in result.findings:
        if finding.type not in lesion_types:
            lesion_types.append(finding.type)
    lungs = (view.to_canonical(np.asarray(result.lung_labels))
             if result.lung_labels is not None else None)
    palette = _colors_for(lesion_types + [LUNG_NAMES[v] for v in sorted(LUNG_NAMES)], colors)
    masks = _SliceMasks(result.lesion_masks, view)
    finding_boxes = [(f, finding_canonical_box(view, f)) for f in result.findings]

    s_mm, r_mm, c_mm = view.spacing
    aspect = float(r_mm / c_mm)
    shown_boxes = [(int(lo[1]), int(lo[2]), int(hi[1]), int(hi[2])) for _, (lo, hi) in finding_boxes
                   if any(lo[0] <= s.canonical <= hi[0] for s in slices)]
    crop = _body_crop([ct[s.canonical] for s in slices], shown_boxes)
    crop_h_mm = (crop[1] - crop[0]) * r_mm
    crop_w_mm = (crop[3] - crop[2]) * c_mm

    # layout in inches, placed by hand so the panels keep the patient's true proportions
    n_cols = 2 if recon is not None else 1
    panel_w = 3.3 if n_cols == 2 else 4.4
    panel_h = panel_w * crop_h_mm / max(crop_w_mm, 1e-6)
    panel_h = min(max(panel_h, 1.2), 1.6 * panel_w)
    side, gap, header, row_title, footer = 0.15, 0.12, 0.78, 0.36, 0.72
    fig_w = 2 * side + n_cols * panel_w + (n_cols - 1) * gap
    zone_rows = involvement_rows(result.involvement)
    chart_h = (0.5 + 0.16 * len(zone_rows)) if zone_rows else 0.0
    fig_h = header + len(slices) * (row_title + panel_h) + chart_h + footer
    figure = Figure(figsize=(fig_w, fig_h), dpi=dpi, facecolor="white")
    FigureCanvasAgg(figure)

    verdict, probabilities = _verdict_lines(result)
    figure.text(0.5, 1 - 0.2 / fig_h, title or volume.name, ha="center", va="top", fontsize=10,
                color="0.25")
    figure.text(0.5, 1 - 0.42 / fig_h, verdict, ha="center", va="top", fontsize=12,
                fontweight="bold")
    if probabilities:
        figure.text(0.5, 1 - 0.64 / fig_h, probabilities, ha="center", va="top", fontsize=9)

    panels: List[PreviewPanel] = []
    for row, chosen in enumerate(slices):
        top = header + row * (row_title + panel_h) + row_title
        bottom = 1 - (top + panel_h) / fig_h
        rect_ct = [side / fig_w, bottom, panel_w / fig_w, panel_h / fig_h]
        ct_axes = figure.add_axes(rect_ct)
        s = chosen.canonical
        _show_slice(ct_axes, ct[s], aspect, crop)
        overlay = np.zeros(ct[s].shape + (4,), dtype=np.float32)
        shown = {name: masks.on(name, s) for name in masks.names}
        for name, on in shown.items():
            if on.any():
                overlay[on] = palette[name] + (OVERLAY_ALPHA,)
        if overlay[..., 3].any():
            ct_axes.imshow(overlay, interpolation="nearest", aspect=aspect, origin="upper")
        if lungs is not None:  # under the lesion outlines, which matter more at the pleura
            _draw_lung_outlines(ct_axes, lungs[s], palette, crop)
        for name, on in shown.items():
            if on.any():
                ct_axes.contour(on.astype(np.float32), levels=[0.5],
                                colors=[palette[name]], linewidths=1.0)
        r0c, r1c, c0c, c1c = crop  # contour() autoscales: put the crop back
        ct_axes.set_xlim(c0c - 0.5, c1c - 0.5)
        ct_axes.set_ylim(r1c - 0.5, r0c - 0.5)
        panel = PreviewPanel(chosen, ct_axes, None)
        on_slice = [(f, (lo, hi)) for f, (lo, hi) in finding_boxes if lo[0] <= s <= hi[0]]
        on_slice.sort(key=lambda item: -float(item[0].score))
        for rank, (finding, (lo, hi)) in enumerate(on_slice):
            color = palette[finding.type]
            box = (int(lo[1]), int(lo[2]), int(hi[1]), int(hi[2]))
            ct_axes.add_patch(Rectangle((box[1] - 0.5, box[0] - 0.5), box[3] - box[1] + 1,
                                        box[2] - box[0] + 1, fill=False, edgecolor=color,
                                        linewidth=1.6))
            label = "{} {} {:.2f}".format(finding.id, finding.type, float(finding.score))
            panel.boxes[finding.id] = (label, box)
            axes_of = finding_axes(finding)
            for which, points in axes_of.items():
                # solid on the slice it was measured on, dotted on a neighbouring one
                on_measured = int(round(points[0, 0])) == s
                ct_axes.plot(points[:, 2], points[:, 1], color=AXIS_COLOR,
                             linewidth=AXIS_LINE_WIDTHS[which],
                             linestyle="-" if on_measured else ":", solid_capstyle="butt",
                             clip_on=True)
                panel.axes.setdefault(finding.id, {})[which] = (
                    (float(points[0, 1]), float(points[0, 2])),
                    (float(points[1, 1]), float(points[1, 2])))
            measured = measurement_label(finding)
            panel.measurements[finding.id] = measured
            if rank >= MAX_LABELS_PER_SLICE:
                continue
            if measured:
                label = label + "\n" + measured
            above = box[0] - 0.5 - (crop[1] - crop[0]) * 0.01
            ct_axes.text(box[1] - 0.5, above, label, fontsize=6.5, color="white", ha="left",
                         va="bottom", clip_on=True,
                         bbox=dict(boxstyle="square,pad=0.15", facecolor=color, edgecolor="none",
                                   alpha=0.9))
        _orientation_letters(ct_axes)
        figure.text(side / fig_w, 1 - (top - 0.04) / fig_h, "Slice {} (S {:+.1f} mm)\n{}".format(
            chosen.input_index, _slice_s_mm(result, view, s), chosen.reason),
            ha="left", va="bottom", fontsize=7.5, linespacing=1.3)
        if recon is not None:
            rect_recon = [(side + panel_w + gap) / fig_w, bottom, panel_w / fig_w, panel_h / fig_h]
            recon_axes = figure.add_axes(rect_recon)
            _show_slice(recon_axes, recon[s], aspect, crop)
            _orientation_letters(recon_axes)
            figure.text(rect_recon[0], 1 - (top - 0.04) / fig_h, "Reconstruction",
                        ha="left", va="bottom", fontsize=7.5)
            panel.recon_axes = recon_axes
        panels.append(panel)

    if zone_rows:
        top = header + len(slices) * (row_title + panel_h) + 0.34
        height = chart_h - 0.5
        _draw_involvement(figure.add_axes([(side + 1.25) / fig_w, 1 - (top + height) / fig_h,
                                           (fig_w - 2 * side - 1.6) / fig_w, height / fig_h]),
                          zone_rows)
        figure.text(side / fig_w, 1 - (top - 0.06) / fig_h,
                    "Lung involvement by zone (% of the zone's lung volume)", ha="left",
                    va="bottom", fontsize=7.5)
    handles = [Patch(facecolor=palette[name] + (OVERLAY_ALPHA,), edgecolor=palette[name],
                     label=name) for name in lesion_types]
    if lungs is not None:
        handles += _lung_handles(Line2D, palette)
    if result.findings:
        handles.append(Line2D([], [], color="0.3", linewidth=1.6, label="detection box (id type score)"))
    if any(panel.axes for panel in panels):
        handles.append(Line2D([], [], color=AXIS_COLOR, linewidth=AXIS_LINE_WIDTHS["long"],
                              label="nodule long / short axis"))
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4),
                      fontsize=7.5, frameon=False, bbox_to_anchor=(0.5, 0.38 / fig_h))
    model = result.model
    level, width = LUNG_WINDOW
    details = "CT and reconstruction in lung window (L {:.0f} / W {:.0f} HU). Model {} {} ({}), " \
        "{} finding{}.".format(level, width, model.id, model.version, (model.sha256 or "")[:12],
                               len(result.findings), "" if len(result.findings) == 1 else "s")
    figure.text(0.5, 0.24 / fig_h, details, ha="center", va="bottom", fontsize=6.5, color="0.3")
    figure.text(0.5, 0.06 / fig_h, NOTE, ha="center", va="bottom", fontsize=8,
                color="firebrick", fontweight="bold")
    return Preview(figure, panels, view)


#: Bar colours of the involvement chart: ground glass, consolidation, other lesion voxels.
INVOLVEMENT_COLORS = ((0.95, 0.75, 0.25), (0.80, 0.25, 0.20), (0.65, 0.65, 0.65))


def involvement_rows(involvement: Optional[dict]) -> List[Tuple[str, float, float, float]]:
    """(label, ground glass %, consolidation %, other lesion %) per lung zone and per lung, from
    ``result.involvement``; [] when it was not measured (no lungs)."""
    if not isinstance(involvement, dict) or involvement.get("reason") \
            or not isinstance(involvement.get("lungs"), dict):
        return []
    rows = []

    def row(label, entry):
        volume = entry.get("volume_ml") or 0.0
        if not volume or entry.get("percent") is None:
            return
        ggo = 100.0 * float(entry.get("ground_glass_ml") or 0.0) / volume
        cons = 100.0 * float(entry.get("consolidation_ml") or 0.0) / volume
        rows.append((label, ggo, cons, max(0.0, float(entry["percent"]) - ggo - cons)))

    for name, short in (("right lung", "R"), ("left lung", "L")):
        lung = involvement["lungs"].get(name) or {}
        for zone in ("upper", "middle", "lower"):
            row("{} {}".format(short, zone), (lung.get("zones") or {}).get(zone) or {})
        row("{} lung".format(short), lung)
    return rows


def _draw_involvement(axes, rows) -> None:
    """Stacked horizontal bars: ground glass, consolidation, other lesion voxels, per row."""
    labels = [r[0] for r in rows]
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    names = ("ground glass", "consolidation", "other lesion")
    for part, (name, color) in enumerate(zip(names, INVOLVEMENT_COLORS)):
        values = np.array([r[1 + part] for r in rows])
        axes.barh(y, values, left=left, color=color, height=0.7, label=name)
        left += values
    for yy, total in zip(y, left):
        axes.text(total, yy, " {:.1f} %".format(total), va="center", ha="left", fontsize=6)
    axes.set_yticks(y)
    axes.set_yticklabels(labels, fontsize=6.5)
    axes.set_xlim(0, max(5.0, float(left.max()) * 1.25))
    axes.tick_params(axis="x", labelsize=6)
    for spine in ("top", "right"):
        axes.spines[spine].set_visible(False)
    axes.legend(fontsize=6, frameon=False, loc="lower right", ncol=3)


def _lung_handles(Line2D, palette) -> list:
    """Legend entries for the lung outlines (one when both lungs share a colour)."""
    names = [LUNG_NAMES[v] for v in sorted(LUNG_NAMES)]
    if len({palette[n] for n in names}) == 1:
        return [Line2D([], [], color=palette[names[0]], linewidth=LUNG_LINE_WIDTH * 1.5,
                       label="lung outline")]
    return [Line2D([], [], color=palette[n], linewidth=LUNG_LINE_WIDTH * 1.5, label=n)
            for n in names]


def _save_png(figure, path: Path, dpi: int) -> None:
    """Save under a temporary name and rename, so a reader never sees half a file."""
    temporary = str(path.with_name(".{}.partial-{}".format(path.name, os.getpid())))
    try:
        figure.savefig(temporary, format="png", dpi=dpi, facecolor="white")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def draw_preview(result: AnalysisResult, max_slices: int = DEFAULT_MAX_SLICES,
                 colors: Optional[Dict[str, Sequence[float]]] = None,
                 title: Optional[str] = None, dpi: int = DEFAULT_DPI) -> Preview:
    """The preview of ``result`` drawn to its final pixels, ready for :func:`save_drawn_png`.

    Drawing is matplotlib's (Python, holding the GIL); encoding the PNG is Pillow's zlib,
    which does not hold it. Kept apart, the encoding can run in a thread beside other work
    (``write_case`` writes the NRRD files meanwhile). Both together give the very bytes of
    ``figure.savefig`` (``FigureCanvasAgg.print_png`` is this draw, then ``imsave`` of its
    RGBA buffer).
    """
    preview = preview_figure(result, max_slices=max_slices, colors=colors, title=title, dpi=dpi)
    preview.figure.canvas.draw()
    return preview


def save_drawn_png(preview: Preview, path: Union[str, Path]) -> None:
    """Encode a :func:`draw_preview` picture to ``path`` (a temporary name, then renamed)."""
    from matplotlib.image import imsave

    path = Path(path)
    rgba = preview.figure.canvas.buffer_rgba()
    temporary = str(path.with_name(".{}.partial-{}-{}".format(path.name, os.getpid(),
                                                             threading.get_ident())))
    try:
        imsave(temporary, rgba, format="png", origin="upper", dpi=preview.figure.dpi)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    preview.path = path


def write_preview(result: AnalysisResult, path: Union[str, Path],
                  max_slices: int = DEFAULT_MAX_SLICES,
                  colors: Optional[Dict[str, Sequence[float]]] = None,
                  title: Optional[str] = None, dpi: int = DEFAULT_DPI) -> Preview:
    """Draw and save the preview PNG at ``path`` (written to a temporary name first and
    renamed, so a reader never sees half a file)."""
    preview = draw_preview(result, max_slices=max_slices, colors=colors, title=title, dpi=dpi)
    save_drawn_png(preview, path)
    return preview


# the lung picture (its own module; kept importable from here)
from .lung_preview import (LUNG_PREVIEW_FILE, LUNG_ZONES, LungPanel, LungPreview,  # noqa: E402,F401
                           lung_preview_figure, write_lung_preview)
