"""Nodule measurements against shapes whose answers are known, and the Lung-RADS band edges.

Shapes are rasterised from their physical definition (a voxel belongs to the lesion when its
centre is inside), so a measurement may differ from the ideal by about one pixel.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from ChestCTMTLLib.measurements import (LUNG_RADS_LABEL, lung_rads_size_category, mean_diameter,
                                        measure_nodule, round_half_up)


def ellipsoid(shape, spacing, diameters, center=None, angle_deg=0.0):
    """Boolean (slice, row, col) ellipsoid; ``diameters`` = (along slice, long, short) mm.

    The long in-plane axis points along the columns, turned by ``angle_deg`` towards the rows.
    """
    if center is None:
        center = [(n - 1) / 2.0 for n in shape]
    z, r, c = np.meshgrid(*[(np.arange(n) - c0) * s for n, c0, s in zip(shape, center, spacing)],
                          indexing="ij")
    t = math.radians(angle_deg)
    along = c * math.cos(t) + r * math.sin(t)
    across = -c * math.sin(t) + r * math.cos(t)
    dz, d_long, d_short = (d / 2.0 for d in diameters)
    return (z / dz) ** 2 + (along / d_long) ** 2 + (across / d_short) ** 2 <= 1.0


def _direction_deg(points, spacing):
    """Angle of a segment, in physical mm, from the column axis towards the row axis."""
    (_, r0, c0), (_, r1, c1) = points
    angle = math.degrees(math.atan2((r1 - r0) * spacing[1], (c1 - c0) * spacing[2]))
    return angle % 180.0


SPACING = (2.5, 0.7, 0.7)


def test_sphere_on_isotropic_voxels():
    spacing = (0.5, 0.5, 0.5)
    m = measure_nodule(ellipsoid((25, 25, 25), spacing, (10, 10, 10)), spacing)
    assert m["long_axis_mm"] == pytest.approx(10.0, abs=0.5)
    assert m["short_axis_mm"] == pytest.approx(10.0, abs=0.5)
    assert m["axial_slice"] == 12
    assert m["equivalent_diameter_mm"] == pytest.approx(10.0, abs=0.3)
    assert m["volume_mm3"] == pytest.approx(math.pi / 6 * 1000, rel=0.05)
    # ITK measures between voxel centres: at most one voxel diagonal short of the outline
    assert 10.0 - math.sqrt(3) * 0.5 - 0.01 <= m["feret_diameter_mm"] <= 10.0 + 0.01
    assert m["reason"]["hu_mean"] == "no HU image given" and m["composition"] is None


def test_ellipse_20_by_10_mm_on_lidc_like_voxels():
    m = measure_nodule(ellipsoid((9, 41, 41), SPACING, (10, 20, 10)), SPACING)
    assert m["long_axis_mm"] == pytest.approx(20.0, abs=0.7)
    assert m["short_axis_mm"] == pytest.approx(10.0, abs=0.7)
    assert m["axial_slice"] == 4
    assert m["mean_diameter_mm"] == pytest.approx(15.0, abs=0.7)
    assert m["mean_diameter_mm"] == round(m["mean_diameter_mm"], 1)
    # the end points are the measured lengths, and lie on the measured slice
    for key, length in (("long_axis_points", "long_axis_mm"),
                        ("short_axis_points", "short_axis_mm")):
        p = np.asarray(m[key])
        assert p.shape == (2, 3) and np.all(p[:, 0] == 4)
        assert np.linalg.norm((p[1] - p[0]) * np.asarray(SPACING)) == pytest.approx(m[length])
    assert _direction_deg(m["long_axis_points"], SPACING) == pytest.approx(0.0, abs=6.0) or \
        _direction_deg(m["long_axis_points"], SPACING) == pytest.approx(180.0, abs=6.0)


def test_ellipse_turned_30_degrees_in_plane():
    m = measure_nodule(ellipsoid((9, 41, 41), SPACING, (10, 20, 10), angle_deg=30), SPACING)
    assert m["long_axis_mm"] == pytest.approx(20.0, abs=0.7)
    assert m["short_axis_mm"] == pytest.approx(10.0, abs=0.7)
    assert _direction_deg(m["long_axis_points"], SPACING) == pytest.approx(30.0, abs=5.0)
    long_dir = np.diff(np.asarray(m["long_axis_points"]) * SPACING, axis=0)[0]
    short_dir = np.diff(np.asarray(m["short_axis_points"]) * SPACING, axis=0)[0]
    assert abs(long_dir @ short_dir) < 1e-6 * np.linalg.norm(long_dir) * np.linalg.norm(short_dir)


@pytest.mark.parametrize("angle", [0.0, 90.0])
def test_anisotropic_pixels_are_measured_in_mm(angle):
    spacing = (1.25, 0.5, 1.0)  # rows 0.5 mm, columns 1 mm
    off_grid = (4.0, 30.3, 15.3)  # no voxel centre exactly on the surface
    m = measure_nodule(ellipsoid((9, 61, 31), spacing, (5, 20, 10), off_grid, angle), spacing)
    assert m["long_axis_mm"] == pytest.approx(20.0, abs=1.0)
    assert m["short_axis_mm"] == pytest.approx(10.0, abs=1.0)
    # the flat tips of a digitised ellipse let the longest chord tilt by a few rows
    assert _direction_deg(m["long_axis_points"], spacing) == pytest.approx(angle, abs=8.0)


def test_one_voxel_lesion_has_values_not_an_error():
    mask = np.zeros((3, 5, 5), dtype=np.uint8)
    mask[1, 2, 3] = 1
    m = measure_nodule(mask, SPACING, hu=np.full(mask.shape, 30.0))
    assert m["long_axis_mm"] == pytest.approx(0.7)  # one pixel, edge to edge
    assert m["short_axis_mm"] == pytest.approx(0.7, abs=0.07)
    assert m["mean_diameter_mm"] == 0.7
    assert m["axial_slice"] == 1 and m["n_voxels"] == 1
    assert m["volume_mm3"] == pytest.approx(2.5 * 0.7 * 0.7)
    assert m["feret_diameter_mm"] == 0.0  # ITK: centre to centre
    assert m["composition"] == "solid" and m["hu_median"] == 30.0
    ends = np.asarray(m["long_axis_points"])[:, 1:]
    assert np.all(ends >= np.array([1.5, 2.5]) - 1e-9)  # on the pixel's edges
    assert np.all(ends <= np.array([2.5, 3.5]) + 1e-9)


def test_lesion_cut_by_the_array_border():
    # a 12 mm sphere centred on the first row: only its posterior half is in the array
    spacing = (0.7, 0.7, 0.7)
    mask = ellipsoid((21, 12, 21), spacing, (12, 12, 12), center=(10, 0, 10))
    hu = np.where(mask, 10.0, -850.0)
    m = measure_nodule(mask, spacing, hu=hu)
    assert m["long_axis_mm"] == pytest.approx(12.0, abs=0.7)  # the chord along the cut
    assert m["short_axis_mm"] == pytest.approx(6.0 + 0.35, abs=0.7)
    points = np.asarray(m["long_axis_points"] + m["short_axis_points"])[:, 1:]
    assert np.all(points >= -0.5 - 0.05) and np.all(points <= np.array(mask.shape[1:]) - 0.5 + 0.05)
    assert m["composition"] == "solid"


def test_empty_mask_gives_reasons_not_an_error():
    m = measure_nodule(np.zeros((3, 4, 4)), SPACING, hu=np.zeros((3, 4, 4)))
    assert m["long_axis_mm"] is None and m["composition"] is None and m["n_voxels"] == 0
    assert m["reason"]["long_axis_mm"] == "the mask is empty"


def test_unusable_arguments_are_refused():
    with pytest.raises(ValueError):
        measure_nodule(np.ones((3, 3)), SPACING)
    with pytest.raises(ValueError):
        measure_nodule(np.ones((3, 3, 3)), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        measure_nodule(np.ones((3, 3, 3)), SPACING, hu=np.zeros((3, 3, 4)))


def test_hu_statistics():
    mask = np.zeros((1, 4, 5), dtype=bool)
    mask[0, 1:3, 1:4] = True
    hu = np.arange(20, dtype=np.float64).reshape(1, 4, 5) * 10 - 100
    m = measure_nodule(mask, (1.0, 1.0, 1.0), hu=hu)
    inside = hu[mask]
    assert m["hu_mean"] == pytest.approx(inside.mean())
    assert m["hu_median"] == pytest.approx(np.median(inside))
    assert m["hu_p10"] == pytest.approx(np.percentile(inside, 10))
    assert m["hu_p90"] == pytest.approx(np.percentile(inside, 90))


# --------------------------------------------------------------------------- composition
def _sphere12():
    spacing = (0.7, 0.7, 0.7)
    return ellipsoid((21, 21, 21), spacing, (12, 12, 12)), spacing


def test_uniform_ground_glass():
    mask, spacing = _sphere12()
    m = measure_nodule(mask, spacing, hu=np.full(mask.shape, -700.0))
    assert m["composition"] == "ground-glass" and m["solid_fraction"] == 0.0
    assert m["solid_component_mm"] is None and "part-solid" in m["reason"]["solid_component_mm"]


def test_ground_glass_crossed_by_a_thin_vessel_stays_ground_glass():
    mask, spacing = _sphere12()
    hu = np.full(mask.shape, -700.0)
    hu[10, 10, :] = 40.0  # a 0.7 mm vessel through the middle
    m = measure_nodule(mask, spacing, hu=hu)
    assert 0 < m["solid_fraction"] < 0.06 and m["composition"] == "ground-glass"


def test_uniform_solid():
    mask, spacing = _sphere12()
    m = measure_nodule(mask, spacing, hu=np.full(mask.shape, 20.0))
    assert m["composition"] == "solid" and m["solid_fraction"] == 1.0


def test_solid_nodule_with_a_partial_volume_rim_stays_solid():
    from scipy import ndimage

    mask, spacing = _sphere12()
    rim = mask & ~ndimage.binary_erosion(mask)
    m = measure_nodule(mask, spacing, hu=np.where(rim, -500.0, 20.0))
    assert m["solid_fraction"] < 0.8  # the shell alone would fail the 80 % rule
    assert m["composition"] == "solid"


def test_solid_core_in_ground_glass_is_part_solid_with_the_core_size():
    spacing = (0.7, 0.7, 0.7)
    mask = ellipsoid((31, 31, 31), spacing, (18, 18, 18))
    core = ellipsoid((31, 31, 31), spacing, (6, 6, 6))
    m = measure_nodule(mask, spacing, hu=np.where(core, 20.0, -650.0))
    assert m["solid_fraction"] < 0.06  # too small a share for the volume rule alone
    assert m["composition"] == "part-solid"
    assert m["solid_component_mm"] == pytest.approx(6.0, abs=0.7)
    assert m["mean_diameter_mm"] == pytest.approx(18.0, abs=0.7)
    assert lung_rads_size_category(m["mean_diameter_mm"], m["composition"],
                                   m["solid_component_mm"])["category"] in ("3", "4A")


# --------------------------------------------------------------------------- Lung-RADS bands
def test_rounding_follows_lung_rads_one_decimal_half_up():
    assert round_half_up(2.25) == 2.3 and round_half_up(2.35) == 2.4 and round_half_up(5.95) == 6.0
    assert mean_diameter(6.04, 5.95) == 6.0  # 6.0 and 6.0 (each axis to 0.1 mm first)
    assert mean_diameter(10.0, 5.0) == 7.5


@pytest.mark.parametrize("size, category", [
    (3.0, "2"), (5.9, "2"), (5.94, "2"), (5.95, "3"), (6.0, "3"), (7.9, "3"), (8.0, "4A"),
    (14.9, "4A"), (15.0, "4B"), (40.0, "4B")])
def test_solid_bands(size, category):
    out = lung_rads_size_category(size, "solid")
    assert out["category"] == category and out["rule"].startswith("solid")
    assert out["label"] == LUNG_RADS_LABEL


@pytest.mark.parametrize("total, solid, category", [
    (5.9, None, "2"), (5.9, 5.0, "2"), (6.0, 5.9, "3"), (12.0, 0.5, "3"), (6.0, 6.0, "4A"),
    (12.0, 7.9, "4A"), (12.0, 8.0, "4B"), (25.0, 20.0, "4B")])
def test_part_solid_bands(total, solid, category):
    assert lung_rads_size_category(total, "part-solid", solid)["category"] == category


def test_part_solid_without_its_solid_component_is_not_assessable():
    out = lung_rads_size_category(6.0, "part-solid", None)
    assert out["category"] is None and "solid component" in out["rule"]


@pytest.mark.parametrize("size, category", [(5.0, "2"), (29.9, "2"), (29.95, "3"), (30.0, "3"),
                                            (45.0, "3")])
def test_ground_glass_bands(size, category):
    assert lung_rads_size_category(size, "ground-glass")["category"] == category


def test_missing_inputs_and_unknown_composition():
    assert lung_rads_size_category(None, "solid")["category"] is None
    assert lung_rads_size_category(7.0, None)["category"] is None
    with pytest.raises(ValueError):
        lung_rads_size_category(7.0, "calcified")
