"""The lung picture (``lungs.png``): coronal overview and one axial slice per lung zone, with
the lung mask's outlines, to check the lung segmentation by eye. The drawing helpers are the
case preview's (:mod:`.preview`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .lungs import LUNG_NAMES
from .orientation import AxialView, axial_view
from .preview import (DEFAULT_DPI, NOTE, _body_crop, _colors_for, _draw_lung_outlines,
                      _input_index, _lung_handles, _matplotlib, _orientation_letters, _save_png,
                      _show_slice)
from .results import AnalysisResult
from .volume import CTVolume

LUNG_PREVIEW_FILE = "lungs.png"
#: Axial slices of the lung picture: the centre of each third of the lungs' cranio-caudal
#: extent (the zones findings are assigned to), top to bottom.
LUNG_ZONES = (("upper", 5.0 / 6.0), ("middle", 0.5), ("lower", 1.0 / 6.0))


@dataclass
class LungPanel:
    """One panel of the lung picture: ``kind`` "coronal" (``index`` = canonical row) or an
    axial zone name (``index`` = canonical slice)."""

    kind: str
    index: int
    axes: object


@dataclass
class LungPreview:
    figure: object
    panels: List[LungPanel]
    view: AxialView
    volumes_ml: Dict[str, float]
    path: Optional[Path] = None

    def data_to_pixel(self, axes, row: float, col: float) -> Tuple[float, float]:
        """(row, col) in a panel's image -> (pixel row, pixel col) in the saved PNG; for the
        coronal panel rows count canonical slices from the top (superior) down."""
        x, y = axes.transData.transform((col, row))
        height = self.figure.get_size_inches()[1] * self.figure.dpi
        return float(height - y), float(x)


def _lung_inputs(source, labels) -> Tuple[CTVolume, np.ndarray]:
    if isinstance(source, AnalysisResult):
        volume = source.volume
        labels = source.lung_labels if labels is None else labels
    elif isinstance(source, CTVolume):
        volume = source
    else:
        raise TypeError("lung_preview needs an AnalysisResult or a CTVolume, not {}".format(
            type(source).__name__))
    if labels is None:
        raise ValueError("no lung labels: the result has none (lung stage not run) and none "
                         "were given")
    labels = np.asarray(labels)
    if labels.shape != volume.array.shape[:3]:
        raise ValueError("lung labels have shape {}, the volume {}".format(
            labels.shape, volume.array.shape))
    return volume, labels


def lung_preview_figure(source, labels: Optional[np.ndarray] = None,
                        colors: Optional[Dict[str, Sequence[float]]] = None,
                        title: Optional[str] = None, dpi: int = DEFAULT_DPI) -> LungPreview:
    """The lung segmentation of one CT on a new Agg figure (not saved): a coronal slice
    through the most lung, and an axial slice at the centre of the upper, middle and lower
    third of the lungs, each with the right and left lung outlined.

    ``source`` is an :class:`AnalysisResult` (its ``lung_labels`` unless ``labels`` is
    given) or a :class:`CTVolume` with ``labels`` (0, 1 right, 2 left; the volume's grid).
    """
    FigureCanvasAgg, Figure, Line2D, _, _ = _matplotlib()
    volume, labels = _lung_inputs(source, labels)
    view = axial_view(volume.ijk_to_ras, volume.array.shape)
    ct = view.to_canonical(volume.array)
    lungs = view.to_canonical(labels)
    palette = _colors_for([LUNG_NAMES[v] for v in sorted(LUNG_NAMES)], colors)
    n_slices, n_rows, _ = view.canonical_shape
    s_mm, r_mm, c_mm = view.spacing
    voxel_ml = float(abs(np.linalg.det(np.asarray(volume.ijk_to_ras)[:3, :3]))) / 1000.0
    volumes_ml = {name: float(np.count_nonzero(labels == value)) * voxel_ml
                  for value, name in sorted(LUNG_NAMES.items())}

    inside = lungs > 0
    per_slice = inside.reshape(n_slices, -1).sum(axis=1)
    occupied = np.flatnonzero(per_slice)
    if occupied.size:
        lo, hi = int(occupied[0]), int(occupied[-1])
        row = int(np.argmax(inside.sum(axis=(0, 2))))
    else:
        lo, hi, row = 0, n_slices - 1, n_rows // 2
    axial = [(zone, int(round(lo + fraction * (hi - lo)))) for zone, fraction in LUNG_ZONES]

    coronal_ct = ct[::-1, row, :]  # superior at the top
    coronal_lungs = lungs[::-1, row, :]
    coronal_crop = _body_crop([coronal_ct], [])
    axial_crop = _body_crop([ct[s] for _, s in axial], [])
    axial_aspect = float(r_mm / c_mm)
    coronal_aspect = float(s_mm / c_mm)

    # layout in inches: the coronal panel on top (centred), the three axial panels below it
    panel_w, side, gap, header, row_title, footer = 2.6, 0.15, 0.12, 0.62, 0.26, 0.5
    axial_h = panel_w * (axial_crop[1] - axial_crop[0]) * r_mm / max(
        (axial_crop[3] - axial_crop[2]) * c_mm, 1e-6)
    axial_h = min(max(axial_h, 1.0), 1.4 * panel_w)
    row_w = 3 * panel_w + 2 * gap
    coronal_ratio = (coronal_crop[1] - coronal_crop[0]) * s_mm / max(
        (coronal_crop[3] - coronal_crop[2]) * c_mm, 1e-6)  # height / width
    coronal_w = row_w
    coronal_h = min(max(coronal_w * coronal_ratio, 1.2), 5.5)
    coronal_w = min(row_w, coronal_h / max(coronal_ratio, 1e-6))
    fig_w = 2 * side + row_w
    fig_h = header + row_title + coronal_h + row_title + axial_h + footer
    figure = Figure(figsize=(fig_w, fig_h), dpi=dpi, facecolor="white")
    FigureCanvasAgg(figure)
    figure.text(0.5, 1 - 0.2 / fig_h, title or volume.name, ha="center", va="top", fontsize=10,
                color="0.25")
    summary = "   ".join("{} {:.0f} ml".format(name, volumes_ml[name]) for name in volumes_ml)
    figure.text(0.5, 1 - 0.42 / fig_h, summary if occupied.size else "no lung found",
                ha="center", va="top", fontsize=9, fontweight="bold")

    panels: List[LungPanel] = []
    top = header + row_title
    left = side + (row_w - coronal_w) / 2.0
    axes = figure.add_axes([left / fig_w, 1 - (top + coronal_h) / fig_h, coronal_w / fig_w,
                            coronal_h / fig_h])
    _show_slice(axes, coronal_ct, coronal_aspect, coronal_crop)
    _draw_lung_outlines(axes, coronal_lungs, palette, coronal_crop)
    for _, s in axial:  # where the axial slices are, as ticks on the coronal's left edge
        axes.axhline(n_slices - 1 - s, xmin=0.0, xmax=0.03, color="white", linewidth=1.2)
    _orientation_letters(axes, "S", "I")
    figure.text(left / fig_w, 1 - (top - 0.04) / fig_h, "Coronal (row {})".format(row),
                ha="left", va="bottom", fontsize=7.5)
    panels.append(LungPanel("coronal", row, axes))
    top += coronal_h + row_title
    for number, (zone, s) in enumerate(axial):
        x = (side + number * (panel_w + gap)) / fig_w
        axes = figure.add_axes([x, 1 - (top + axial_h) / fig_h, panel_w / fig_w, axial_h / fig_h])
        _show_slice(axes, ct[s], axial_aspect, axial_crop)
        _draw_lung_outlines(axes, lungs[s], palette, axial_crop)
        _orientation_letters(axes)
        figure.text(x, 1 - (top - 0.04) / fig_h, "{} third (slice {})".format(
            zone.capitalize(), _input_index(view, s)), ha="left", va="bottom", fontsize=7.5)
        panels.append(LungPanel(zone, s, axes))
    figure.legend(handles=_lung_handles(Line2D, palette), loc="lower center", fontsize=7.5,
                  frameon=False, ncol=2, bbox_to_anchor=(0.5, 0.24 / fig_h))
    figure.text(0.5, 0.06 / fig_h, NOTE, ha="center", va="bottom", fontsize=8,
                color="firebrick", fontweight="bold")
    return LungPreview(figure, panels, view, volumes_ml)


def write_lung_preview(source, path: Union[str, Path], labels: Optional[np.ndarray] = None,
                       colors: Optional[Dict[str, Sequence[float]]] = None,
                       title: Optional[str] = None, dpi: int = DEFAULT_DPI) -> LungPreview:
    """Draw (see :func:`lung_preview_figure`) and save the lung picture at ``path``
    atomically, like :func:`write_preview`."""
    path = Path(path)
    shown = lung_preview_figure(source, labels=labels, colors=colors, title=title, dpi=dpi)
    _save_png(shown.figure, path, dpi)
    shown.path = path
    return shown
