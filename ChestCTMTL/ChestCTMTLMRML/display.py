"""What the panel shows in Slicer's views: the CT with the lesion overlay, the reconstruction
as a comparison layer, the segmentation in 3D, a finding at the slice views' centre.

slicer.util only (no Qt import here); the slice-layer calls need the application's layout, so
the callers skip them without a main window (``gui`` False), and every call is a no-op when the
result it would show does not exist.
"""
from __future__ import annotations

from typing import List

import slicer

from . import headless


def show_results(input_volume, result_nodes, gui: bool) -> None:
    """The CT as background, no foreground, the segmentation filled and outlined in 2D."""
    if not gui or result_nodes is None:
        return
    slicer.util.setSliceViewerLayers(background=input_volume, foreground=None, fit=True)
    segmentation = getattr(result_nodes, "segmentation", None)
    display = segmentation.GetDisplayNode() if segmentation is not None else None
    if display is not None:
        display.SetVisibility(True)
        display.SetVisibility2DFill(True)
        display.SetVisibility2DOutline(True)


def compare_reconstruction(input_volume, result_nodes, show: bool, gui: bool) -> None:
    """The reconstruction as foreground over the CT at 50 % opacity (``show``), or none."""
    recon = getattr(result_nodes, "reconstruction", None) if result_nodes else None
    if recon is None or not gui:
        return
    if show:
        slicer.util.setSliceViewerLayers(background=input_volume, foreground=recon,
                                         foregroundOpacity=0.5)
    else:
        slicer.util.setSliceViewerLayers(background=input_volume, foreground=None)


def show_segmentation_3d(result_nodes, show: bool) -> None:
    """Closed surfaces of the segmentation in the 3D view (built on first use)."""
    segmentation = getattr(result_nodes, "segmentation", None) if result_nodes else None
    if segmentation is None:
        return
    if show:
        segmentation.CreateClosedSurfaceRepresentation()
    display = segmentation.GetDisplayNode()
    if display is not None:
        display.SetVisibility3D(bool(show))


def center_on_finding(roi) -> List[float]:
    """Centre every slice view on the finding's ROI; returns the RAS centre."""
    center = [0.0, 0.0, 0.0]
    roi.GetCenterWorld(center)
    headless.get_logic("Markups").JumpSlicesToLocation(center[0], center[1], center[2], True)
    return center
