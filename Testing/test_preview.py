"""preview.png: a real PNG, overlay pixels exactly where the lesion is, boxes in the lesion
type's colour, and the radiological orientation whatever the input's voxel order.

Synthetic volumes, because only a known answer tells where each coloured pixel must be.
Pixels are located through the figure's own data -> pixel transform, so the tests do not
depend on the layout's exact numbers.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread  # noqa: E402

from ChestCTMTLLib import preview  # noqa: E402
from ChestCTMTLLib.orientation import axial_view  # noqa: E402
from ChestCTMTLLib.results import AnalysisResult, Finding, ModelIdentity  # noqa: E402
from ChestCTMTLLib.volume import CTVolume  # noqa: E402

NODULE = preview.DEFAULT_COLORS["nodule-mass"]  # magenta: R and B above G
COVID = preview.DEFAULT_COLORS["covid-infection"]  # orange: R and G above B
LPS_IDENTITY = np.diag([-0.7, -0.7, 2.5, 1.0])  # ITK identity direction: i -> L, j -> P


def _result(array, ijk_to_ras, masks, findings=(), recon=None, probs=(0.2, 0.3, 0.5),
            analysed=None):
    volume = CTVolume(array=array, ijk_to_ras=ijk_to_ras, name="synthetic")
    names = ("non-covid", "covid", "cancer")
    probabilities = dict(zip(names, probs)) if probs else {}
    full = {name: masks.get(name, np.zeros(array.shape, np.uint8))
            for name in ("covid-infection", "nodule-mass")}
    return AnalysisResult(
        volume=volume, class_probabilities=probabilities,
        predicted_class=max(probabilities, key=probabilities.get) if probabilities else "",
        slice_probabilities=None,
        analysed_slices=np.arange(array.shape[0]) if analysed is None else np.asarray(analysed),
        lesion_masks=full, reconstruction_hu=recon, findings=list(findings),
        model=ModelIdentity("test-model", "0.0.1", "cd" * 32))


def _finding(fid, kind, score, ijk_min, ijk_max):
    return Finding(id=fid, type=kind, score=score, center_ras=[0.0, 0.0, 0.0],
                   size_ras=[1.0, 1.0, 1.0], ijk_min=list(ijk_min), ijk_max=list(ijk_max),
                   volume_mm3=1.0)


def _save(result, tmp_path, **kwargs):
    shown = preview.write_preview(result, tmp_path / preview.PREVIEW_FILE, **kwargs)
    image = imread(str(shown.path))[..., :3]
    return shown, image


def _pixel(shown, image, axes, row, col):
    prow, pcol = shown.data_to_pixel(axes, row, col)
    return image[int(prow), int(pcol)]


def _chroma(rgb):
    return float(np.max(rgb) - np.min(rgb))


def _coloured_voxels(shown, image, axes, shape):
    """Canonical (row, col) voxels whose centre pixel is coloured (not grey)."""
    rows, cols = shape
    return {(r, c) for r in range(rows) for c in range(cols)
            if _chroma(_pixel(shown, image, axes, r, c)) > 0.06}


@pytest.fixture()
def flat_ct():
    """Uniform lung-like HU (grey in the lung window) on the LPS identity grid."""
    return np.full((6, 40, 48), -700, dtype=np.int16)


def test_png_exists_with_sensible_size(tmp_path, flat_ct):
    nodule = np.zeros(flat_ct.shape, np.uint8)
    nodule[3, 10:20, 12:24] = 1
    result = _result(flat_ct, LPS_IDENTITY, {"nodule-mass": nodule}, recon=flat_ct.copy())
    shown, image = _save(result, tmp_path)
    assert shown.path.is_file() and shown.path.stat().st_size > 5000
    height, width = image.shape[:2]
    assert 500 <= width <= 1200 and 400 <= height <= 2500
    assert [p.name for p in tmp_path.iterdir()] == [preview.PREVIEW_FILE], "no temporary left"
    assert len(shown.panels) == 1 and shown.panels[0].slice.canonical == 3
    assert shown.panels[0].recon_axes is not None


def test_overlay_exactly_on_the_lesion_in_its_type_colour(tmp_path, flat_ct):
    nodule = np.zeros(flat_ct.shape, np.uint8)
    covid = np.zeros(flat_ct.shape, np.uint8)
    nodule[3, 10:20, 12:24] = 1
    covid[3, 26:34, 30:44] = 1
    recon = flat_ct.copy()
    result = _result(flat_ct, LPS_IDENTITY, {"nodule-mass": nodule, "covid-infection": covid},
                     recon=recon)
    shown, image = _save(result, tmp_path)
    panel = shown.panels[0]
    assert panel.slice.canonical == 3  # the LPS identity grid is already in display order
    # each voxel's centre pixel is coloured exactly when the voxel is lesion (the outline runs
    # along voxel borders, half a voxel = several pixels away from any centre)
    coloured = _coloured_voxels(shown, image, panel.ct_axes, flat_ct.shape[1:])
    lesion = {(int(r), int(c)) for r, c in zip(*np.nonzero(nodule[3] | covid[3]))}
    assert coloured == lesion, "overlay missing at {}, stray at {}".format(
        sorted(lesion - coloured)[:5], sorted(coloured - lesion)[:5])
    for mask, colour in ((nodule[3], NODULE), (covid[3], COVID)):
        for r, c in zip(*np.nonzero(mask)):
            rgb = _pixel(shown, image, panel.ct_axes, r, c)
            assert _chroma(rgb) > 0.1
            # blended over grey, the pixel leans towards the type colour's strong channels
            order = np.argsort(colour)
            assert rgb[order[2]] > rgb[order[0]] + 0.05 and rgb[order[1]] > rgb[order[0]]
    # the reconstruction panel is shown clean, without any overlay
    assert not _coloured_voxels(shown, image, panel.recon_axes, flat_ct.shape[1:])


def test_finding_boxes_are_drawn_in_the_type_colour(tmp_path, flat_ct):
    box_min, box_max = (30, 5, 2), (41, 14, 4)  # (i, j, k): cols 30..41, rows 5..14, slices 2..4
    far = _finding("L1", "covid-infection", 0.91, box_min, box_max)
    hidden = _finding("L2", "nodule-mass", 0.4, (2, 30, 0), (6, 36, 0))  # slice 0 only
    result = _result(flat_ct, LPS_IDENTITY, {}, findings=[far, hidden], recon=flat_ct.copy(),
                     analysed=[0, 1, 2, 3, 4, 5])
    shown, image = _save(result, tmp_path, max_slices=1)
    panel = shown.panels[0]
    assert 2 <= panel.slice.canonical <= 4 and panel.slice.reason.startswith("finding L1")
    assert set(panel.boxes) == {"L1"}, "only findings crossing the shown slice are drawn"
    label, (r0, c0, r1, c1) = panel.boxes["L1"]
    assert label == "L1 covid-infection 0.91" and (r0, c0, r1, c1) == (5, 30, 14, 41)
    # the edges lie on voxel borders: sample the bottom, left and right edges away from corners
    edge_points = [(r1 + 0.5, c) for c in np.linspace(c0 + 1, c1 - 1, 8)]
    edge_points += [(r, c0 - 0.5) for r in np.linspace(r0 + 2, r1 - 1, 5)]
    edge_points += [(r, c1 + 0.5) for r in np.linspace(r0 + 2, r1 - 1, 5)]
    for r, c in edge_points:
        rgb = _pixel(shown, image, panel.ct_axes, r, c)
        np.testing.assert_allclose(rgb, COVID, atol=0.08)
    inside = _pixel(shown, image, panel.ct_axes, (r0 + r1) / 2.0 + 2, (c0 + c1) / 2.0)
    assert _chroma(inside) < 0.03, "a detection box is an outline, not a fill"
    assert len(shown.panels) == 1


def _right_anterior_case(ijk_to_ras, shape):
    """A lesion in the patient's right anterior quadrant (defined in RAS, independently of
    the voxel order) and a bright spot at the same place in the reconstruction."""
    k, j, i = shape
    grid = np.stack(np.meshgrid(np.arange(i), np.arange(j), np.arange(k), indexing="ij"), -1)
    ras = grid.reshape(-1, 3) @ np.asarray(ijk_to_ras)[:3, :3].T + np.asarray(ijk_to_ras)[:3, 3]
    ras = ras.reshape(i, j, k, 3).transpose(2, 1, 0, 3)  # -> (k, j, i, 3)
    x, y, z = ras[..., 0], ras[..., 1], ras[..., 2]
    centre = [(v.min() + v.max()) / 2 for v in (x, y, z)]
    lesion = ((x > centre[0] + 4) & (x < centre[0] + 12) & (y > centre[1] + 3)
              & (y < centre[1] + 10) & (np.abs(z - centre[2]) < 1.5)).astype(np.uint8)
    ct = np.full(shape, -700, np.int16)
    recon = ct.copy()
    recon[lesion > 0] = 300
    return ct, recon, lesion


ORIENTATIONS = {
    "lps-identity": np.diag([-1.0, -1.0, 1.0, 1.0]),
    "ras-identity": np.diag([1.0, 1.0, 1.0, 1.0]),  # i -> R, j -> A: both in-plane axes flip
    "transposed": np.array([[0.0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
    "feet-first": np.diag([-1.0, -1.0, -1.0, 1.0]),
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_radiological_orientation(tmp_path, name):
    ijk_to_ras = ORIENTATIONS[name]
    ct, recon, lesion = _right_anterior_case(ijk_to_ras, (5, 32, 32))
    result = _result(ct, ijk_to_ras, {"nodule-mass": lesion}, recon=recon)
    shown, image = _save(result, tmp_path)
    panel = shown.panels[0]
    height, width = image.shape[:2]

    def quadrant_pixels(axes, predicate):
        bbox = axes.get_window_extent()
        top, bottom = height - bbox.y1, height - bbox.y0
        sub = image[int(top) + 2:int(bottom) - 2, int(bbox.x0) + 2:int(bbox.x1) - 2]
        hits = np.argwhere(predicate(sub))
        assert hits.size, "nothing drawn"
        return hits / np.array(sub.shape[:2], dtype=float)  # fractions of the panel

    coloured = quadrant_pixels(panel.ct_axes, lambda s: s.max(-1) - s.min(-1) > 0.1)
    bright = quadrant_pixels(panel.recon_axes, lambda s: s.min(-1) > 0.9)
    for hits in (coloured, bright):
        # patient's right on the image's left, anterior at the top
        assert (hits[:, 1] < 0.5).all() and (hits[:, 0] < 0.5).all(), name


def test_same_anatomy_gives_the_same_picture_in_every_voxel_order(tmp_path):
    pictures = []
    for name, ijk_to_ras in sorted(ORIENTATIONS.items()):
        ct, recon, lesion = _right_anterior_case(ijk_to_ras, (5, 32, 32))
        folder = tmp_path / name
        folder.mkdir()
        shown, image = _save(_result(ct, ijk_to_ras, {"nodule-mass": lesion}, recon=recon),
                             folder)
        bbox = shown.panels[0].ct_axes.get_window_extent()
        top = image.shape[0] - bbox.y1
        pictures.append(image[int(top):int(top + bbox.height), int(bbox.x0):int(bbox.x1)])
    for other in pictures[1:]:
        np.testing.assert_allclose(other, pictures[0], atol=0.02)


def test_slice_choice_known_answers():
    shape = (12, 20, 20)
    ct = np.full(shape, -700, np.int16)
    nodule = np.zeros(shape, np.uint8)
    nodule[7, 5:9, 5:9] = 1  # the biggest cross-section of the finding below is slice 7
    nodule[6, 6:8, 6:8] = 1
    covid = np.zeros(shape, np.uint8)
    covid[2, 10:18, 10:18] = 1  # a lesion no finding covers
    best = _finding("L1", "nodule-mass", 0.8, (4, 4, 5), (9, 9, 8))
    overlapping = _finding("L2", "nodule-mass", 0.6, (4, 4, 7), (9, 9, 9))  # crosses slice 7
    lone = _finding("L3", "covid-infection", 0.5, (1, 1, 10), (3, 3, 10))
    result = _result(ct, LPS_IDENTITY, {"nodule-mass": nodule, "covid-infection": covid},
                     findings=[lone, overlapping, best])
    chosen = preview.choose_slices(result, max_slices=3)
    assert [s.canonical for s in chosen] == [7, 10, 2]
    assert chosen[0].reason.startswith("finding L1") and chosen[1].reason.startswith("finding L3")
    assert chosen[2].reason == "largest lesion area"
    assert [s.canonical for s in preview.choose_slices(result, max_slices=1)] == [7]

    # nothing found: the middle of the analysed range, reported in input slice indices
    empty = _result(ct, np.diag([-1.0, -1.0, -1.0, 1.0]), {}, analysed=[2, 3, 4, 5, 6, 7, 8])
    (middle,) = preview.choose_slices(empty)
    assert middle.input_index == 5 and middle.canonical == shape[0] - 1 - 5
    assert "middle" in middle.reason


def test_without_reconstruction_or_classification(tmp_path, flat_ct):
    result = _result(flat_ct, LPS_IDENTITY, {}, recon=None, probs=None)
    shown, image = _save(result, tmp_path)
    assert shown.panels[0].recon_axes is None
    assert image.shape[1] < 800  # one column only
    texts = [t.get_text() for t in shown.figure.texts]
    assert "Classification not run" in texts and preview.NOTE in texts


def test_verdict_title_and_note(tmp_path, flat_ct):
    shown, _ = _save(_result(flat_ct, LPS_IDENTITY, {}, recon=flat_ct.copy()), tmp_path)
    texts = [t.get_text() for t in shown.figure.texts]
    assert "Model verdict: cancer (50%)" in texts
    assert "non-covid 0.20   covid 0.30   cancer 0.50" in texts
    assert preview.NOTE == "Research use, not a diagnosis." and preview.NOTE in texts


def test_drawing_and_encoding_apart_give_savefigs_very_bytes(tmp_path, flat_ct):
    """write_case draws the preview first and encodes it in a thread (draw_preview, then
    save_drawn_png): the file must be byte for byte what matplotlib's savefig writes."""
    mask = np.zeros(flat_ct.shape, np.uint8)
    mask[3:6, 30:50, 40:60] = 1
    result = _result(flat_ct, LPS_IDENTITY, {"nodule-mass": mask},
                     findings=[_finding(1, "nodule-mass", 0.9, (40, 30, 3), (59, 49, 5))],
                     recon=flat_ct.copy())
    drawn = preview.draw_preview(result, title="case")
    preview.save_drawn_png(drawn, tmp_path / "apart.png")
    reference = preview.preview_figure(result, title="case").figure
    reference.savefig(tmp_path / "savefig.png", format="png", dpi=preview.DEFAULT_DPI,
                      facecolor="white")
    assert (tmp_path / "apart.png").read_bytes() == (tmp_path / "savefig.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apart.png", "savefig.png"]


def test_failed_save_leaves_nothing(tmp_path, flat_ct, monkeypatch):
    import matplotlib.image

    def broken(path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half a png")
        raise OSError("No space left on device")

    monkeypatch.setattr(matplotlib.image, "imsave", broken)
    with pytest.raises(OSError, match="No space"):
        preview.write_preview(_result(flat_ct, LPS_IDENTITY, {}), tmp_path / "preview.png")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- lungs
LUNG = preview.DEFAULT_COLORS["right lung"]  # Slicer's lung colour (both lungs)


def _near_colour(shown, image, axes, row, col, colour, radius=2):
    """Smallest RGB distance to ``colour`` within ``radius`` pixels of a data point."""
    prow, pcol = shown.data_to_pixel(axes, row, col)
    r, c = int(round(prow)), int(round(pcol))
    patch = image[r - radius:r + radius + 1, c - radius:c + radius + 1]
    return float(np.abs(patch - np.asarray(colour)).max(axis=-1).min())


def _two_lungs(shape):
    """Right lung at the small column indices (the patient's right on the LPS identity grid),
    left lung at the large ones, over slices 5..shape[0]-6 (every slice of a short volume)."""
    labels = np.zeros(shape, np.uint8)
    k = shape[0]
    lo, hi = (5, k - 5) if k > 12 else (0, k)
    labels[lo:hi, 8:31, 4:21] = 1
    labels[lo:hi, 10:29, 26:45] = 2
    return labels


def test_lung_outlines_on_the_preview(tmp_path, flat_ct):
    result = _result(flat_ct, LPS_IDENTITY, {}, recon=flat_ct.copy())
    result.lung_labels = _two_lungs(flat_ct.shape)
    shown, image = _save(result, tmp_path)
    panel = shown.panels[0]
    # the outline runs along the lungs' voxel borders, in Slicer's lung colour ...
    for row, col in ((19, 3.5), (19, 20.5), (7.5, 12), (30.5, 12),  # right lung
                     (19, 25.5), (19, 44.5)):  # left lung
        assert _near_colour(shown, image, panel.ct_axes, row, col, LUNG) < 0.12, (row, col)
    # ... thin, and not a fill: the lung's inside stays grey, the reconstruction clean
    for row, col in ((19, 12), (19, 35)):
        assert _chroma(_pixel(shown, image, panel.ct_axes, row, col)) < 0.03
    assert not _coloured_voxels(shown, image, panel.recon_axes, flat_ct.shape[1:])
    legend = [t.get_text() for t in shown.figure.legends[0].get_texts()]
    assert "lung outline" in legend


def test_no_lung_labels_draws_no_outline(tmp_path, flat_ct):
    shown, image = _save(_result(flat_ct, LPS_IDENTITY, {}, recon=flat_ct.copy()), tmp_path)
    assert not _coloured_voxels(shown, image, shown.panels[0].ct_axes, flat_ct.shape[1:])
    legend = [t.get_text() for t in shown.figure.legends[0].get_texts()]
    assert "lung outline" not in legend


def test_lung_preview_coronal_and_three_zones(tmp_path):
    shape = (30, 40, 48)
    ct = np.full(shape, -700, np.int16)
    labels = _two_lungs(shape)
    result = _result(ct, LPS_IDENTITY, {})
    result.lung_labels = labels
    path = tmp_path / preview.LUNG_PREVIEW_FILE
    shown = preview.write_lung_preview(result, path, title="case")
    assert shown.path == path and path.is_file() and path.stat().st_size > 5000
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary left"
    image = imread(str(path))[..., :3]
    assert [p.kind for p in shown.panels] == ["coronal", "upper", "middle", "lower"]
    # the centre of each third of the lungs' extent (slices 5..24), top to bottom
    assert [p.index for p in shown.panels[1:]] == [21, 14, 8]
    voxel_ml = 0.7 * 0.7 * 2.5 / 1000.0
    assert shown.volumes_ml == pytest.approx({"right lung": (labels == 1).sum() * voxel_ml,
                                              "left lung": (labels == 2).sum() * voxel_ml})
    texts = [t.get_text() for t in shown.figure.texts]
    assert "case" in texts and preview.NOTE in texts
    assert any(t.startswith("right lung ") and "left lung " in t for t in texts)
    coronal = shown.panels[0]
    assert 10 <= coronal.index <= 28  # a row through both lungs
    # coronal rows run from the top slice (superior) down: the lungs span rows 5..24 there
    for row, col in ((14.5, 3.5), (14.5, 44.5), (4.5, 12), (24.5, 35)):
        assert _near_colour(shown, image, coronal.axes, row, col, LUNG) < 0.12, (row, col)
    for panel in shown.panels[1:]:
        assert _near_colour(shown, image, panel.axes, 19, 3.5, LUNG) < 0.12
        assert _chroma(_pixel(shown, image, panel.axes, 19, 12)) < 0.03

    # the same picture from a volume and its labels; a volume alone is refused
    again = preview.lung_preview_figure(result.volume, labels=labels)
    assert [(p.kind, p.index) for p in again.panels] == [(p.kind, p.index) for p in shown.panels]
    with pytest.raises(ValueError):
        preview.lung_preview_figure(result.volume)
    with pytest.raises(ValueError):
        preview.lung_preview_figure(_result(ct, LPS_IDENTITY, {}))  # lung stage not run


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_lung_preview_shows_the_right_lung_on_the_images_left(tmp_path, name):
    ijk_to_ras = ORIENTATIONS[name]
    ct, _, right = _right_anterior_case(ijk_to_ras, (5, 32, 32))
    result = _result(ct, ijk_to_ras, {})
    result.lung_labels = right  # value 1: the right lung, in the patient's right front
    shown = preview.write_lung_preview(result, tmp_path / "lungs.png")
    image = imread(str(shown.path))[..., :3]
    height = image.shape[0]
    for panel in shown.panels:
        bbox = panel.axes.get_window_extent()
        top, bottom = height - bbox.y1, height - bbox.y0
        sub = image[int(top) + 2:int(bottom) - 2, int(bbox.x0) + 2:int(bbox.x1) - 2]
        hits = np.argwhere(sub.max(-1) - sub.min(-1) > 0.05)
        assert hits.size, (name, panel.kind)
        fractions = hits / np.array(sub.shape[:2], dtype=float)
        assert (fractions[:, 1] < 0.5).all(), (name, panel.kind)  # patient's right on the left
        if panel.kind != "coronal":
            assert (fractions[:, 0] < 0.5).all(), (name, panel.kind)  # anterior at the top


def test_nodule_axes_and_measurements_are_drawn(tmp_path, flat_ct):
    nodule = _finding("L1", "nodule-mass", 0.8, (20, 10, 3), (29, 17, 3))
    zone = _finding("L2", "covid-infection", 0.6, (2, 25, 3), (8, 32, 3))
    view = axial_view(LPS_IDENTITY, flat_ct.shape)
    long_ijk = [[20, 13, 3], [29, 13, 3]]
    short_ijk = [[24, 10, 3], [24, 17, 3]]
    nodule.measurements = {
        "long_axis_mm": 6.3, "short_axis_mm": 4.9, "mean_diameter_mm": 5.6,
        "composition": "part-solid", "solid_component_mm": 2.0,
        "size_category": {"category": "3", "label": "research aid", "rule": "test"},
        "long_axis_points": preview.ijk_to_canonical(view, long_ijk).tolist(),
        "short_axis_points": preview.ijk_to_canonical(view, short_ijk).tolist()}
    result = _result(flat_ct, LPS_IDENTITY, {}, findings=[nodule, zone], analysed=range(6))
    shown, image = _save(result, tmp_path, max_slices=1)
    panel = shown.panels[0]
    assert panel.slice.canonical == preview.ijk_to_canonical(view, long_ijk)[0, 0]
    assert set(panel.axes) == {"L1"}, "a zone finding has no axes"
    assert panel.measurements == {"L1": "6.3 \u00d7 4.9 mm, part-solid, 3", "L2": ""}
    texts = [t.get_text() for t in panel.ct_axes.texts]
    assert "L1 nodule-mass 0.80\n6.3 \u00d7 4.9 mm, part-solid, 3" in texts
    assert "L2 covid-infection 0.60" in texts
    for which in ("long", "short"):
        (r0, c0), (r1, c1) = panel.axes["L1"][which]
        hits = 0
        for t in np.linspace(0.1, 0.9, 9):
            r, c = r0 + t * (r1 - r0), c0 + t * (c1 - c0)
            if abs(t - 0.5) < 0.15:
                continue  # where the two axes cross
            if np.allclose(_pixel(shown, image, panel.ct_axes, r, c), preview.AXIS_COLOR,
                           atol=0.15):
                hits += 1
        assert hits >= 6, "{} axis not drawn in the axis colour".format(which)
    # away from the axes (inside the box) the CT stays grey; the colour appears nowhere else
    (r0, c0), _ = panel.axes["L1"]["long"]
    assert _chroma(_pixel(shown, image, panel.ct_axes, r0 - 2, c0 + 1.5)) < 0.03
    without = _result(flat_ct, LPS_IDENTITY, {}, findings=[zone], analysed=range(6))
    (tmp_path / "plain").mkdir()
    _, plain = _save(without, tmp_path / "plain", max_slices=1)
    cyan = np.all(np.abs(plain - np.asarray(preview.AXIS_COLOR)) < 0.15, axis=-1)
    assert not cyan.any()
    assert np.all(np.abs(image - np.asarray(preview.AXIS_COLOR)) < 0.15, axis=-1).sum() > 10


def test_involvement_chart_known_answer(tmp_path, flat_ct):
    """Bars per zone and lung: ground glass, consolidation and the rest of the lesion, in % of
    the zone's lung volume; no chart without a measured involvement."""
    zone = {"volume_ml": 200.0, "lesion_ml": 20.0, "percent": 10.0, "ground_glass_ml": 10.0,
            "consolidation_ml": 6.0}
    empty = {"volume_ml": 100.0, "lesion_ml": 0.0, "percent": 0.0, "ground_glass_ml": 0.0,
             "consolidation_ml": 0.0}
    lung = {"volume_ml": 500.0, "lesion_ml": 20.0, "percent": 4.0, "ground_glass_ml": 10.0,
            "consolidation_ml": 6.0, "zones": {"upper": empty, "middle": empty, "lower": zone}}
    involvement = {"lungs": {"right lung": lung, "left lung": dict(lung, zones={})}, "both": {}}
    rows = preview.involvement_rows(involvement)
    assert rows[2] == ("R lower", pytest.approx(5.0), pytest.approx(3.0), pytest.approx(2.0))
    assert rows[3] == ("R lung", pytest.approx(2.0), pytest.approx(1.2), pytest.approx(0.8))
    assert [r[0] for r in rows] == ["R upper", "R middle", "R lower", "R lung", "L lung"]
    assert preview.involvement_rows({"reason": "no lungs found", "lungs": {}}) == []

    result = _result(flat_ct, LPS_IDENTITY, {})
    plain = preview.preview_figure(result)
    result.involvement = involvement
    charted = preview.preview_figure(result)
    assert len(charted.figure.axes) == len(plain.figure.axes) + 1
    chart = charted.figure.axes[-1]
    widths = sorted(round(p.get_width(), 3) for p in chart.patches if p.get_width() > 0)
    assert widths == sorted([5.0, 3.0, 2.0, 2.0, 1.2, 0.8, 2.0, 1.2, 0.8])
    assert [t.get_text() for t in chart.get_yticklabels()] == [r[0] for r in rows]  # top down


@pytest.mark.parametrize("chunk", [1, 3, 32])
def test_lesion_area_per_slice_known_answer(chunk, monkeypatch):
    """Voxels per canonical slice, a voxel two types share counted twice: the same from the
    shared layer of type bits and from one array per type, in any chunking, and on a volume
    stored sagittal (its canonical slices are not its first axis)."""
    from ChestCTMTLLib.results import LesionMasks

    shape = (7, 5, 6)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[1, :2, :3] = True  # 6 voxels on slice 1
    a[4, 0, 0] = True
    b[4, 0, :2] = True  # one shared with a
    b[6] = True  # 30 voxels
    expected = np.array([0, 6, 0, 0, 3, 0, 30])
    monkeypatch.setattr(preview._SliceMasks, "CHUNK", chunk)
    identity = axial_view(np.eye(4), shape)
    shared = LesionMasks.from_masks({"x": a, "y": b})
    for masks in (shared, {"x": a, "y": b}):
        got = preview._SliceMasks(masks, identity).area_per_slice(shape[0])
        np.testing.assert_array_equal(got, expected)
    # the same anatomy stored with the slice axis last
    ijk_to_ras = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    stored = {name: np.ascontiguousarray(np.transpose(m, (1, 2, 0))) for name, m in
              (("x", a), ("y", b))}
    view = axial_view(ijk_to_ras, stored["x"].shape)
    assert view.canonical_shape[0] == shape[0]
    got = preview._SliceMasks(LesionMasks.from_masks(stored), view).area_per_slice(shape[0])
    np.testing.assert_array_equal(np.sort(got), np.sort(expected))
