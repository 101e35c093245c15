"""Every kind of bad input is refused with its own error class (its stated cause), before any
work is done and without anything being written."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ChestCTMTLLib import errors, volume_io
from ChestCTMTLLib.inference import analyze
from ChestCTMTLLib.options import RANGES, AnalysisOptions, OptionError
from ChestCTMTLLib.volume import CTVolume
from ct_testutil import crop_volume, read_cached, small_model_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real_crop(lidc0002_nifti) -> CTVolume:
    return crop_volume(read_cached(str(lidc0002_nifti)), 130, 136)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return small_model_folder(tmp_path_factory.mktemp("model") / "m", input_size=64)


def _listing(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _refused(exc_type, func, *args, folder: Path = None, exact: bool = True, **kw):
    """Call ``func`` expecting ``exc_type`` (exactly, not a sibling), and nothing new on disk."""
    before = _listing(folder) if folder else None
    with pytest.raises(errors.ChestCTMTLError) as info:
        func(*args, **kw)
    ok = type(info.value) is exc_type if exact else isinstance(info.value, exc_type)
    assert ok, "expected %s, got %s: %s" % (exc_type.__name__, type(info.value).__name__,
                                            info.value)
    if exact:
        assert info.value.cause == exc_type.cause
    if folder is not None:
        assert _listing(folder) == before, "something was written"
    return info.value


def _write_sitk(image, path: Path) -> Path:
    import SimpleITK as sitk

    sitk.WriteImage(image, str(path))
    return path


def test_error_causes_are_distinct():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.ChestCTMTLError)]
    causes = [c.cause for c in classes]
    assert len(causes) == len(set(causes)), causes
    for c in classes:
        if c.__name__.endswith(("FileError", "FolderError")) or c in (
                errors.NotAVolumeError, errors.VolumeTooSmallError, errors.NotCTIntensityError,
                errors.NonFiniteValuesError):
            assert issubclass(c, errors.InputError)


# --------------------------------------------------------------------------- files
def test_missing_path(tmp_path):
    _refused(errors.InputNotFoundError, volume_io.read_ct, tmp_path / "nope.nrrd", folder=tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.nrrd").write_bytes(b"")
    _refused(errors.EmptyFileError, volume_io.read_ct, tmp_path / "empty.nrrd", folder=tmp_path)


@pytest.mark.parametrize("name,content", [("junk.nrrd", os.urandom(4096)),
                                          ("notes.nii.gz", b"this is not an image\n" * 50)])
def test_unreadable_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    _refused(errors.UnreadableFileError, volume_io.read_ct, tmp_path / name, folder=tmp_path)


@pytest.mark.parametrize("ext,compress", [(".nrrd", False), (".nrrd", True), (".nii", False),
                                          (".nii.gz", True), (".mha", False), (".mha", True)])
def test_truncated_file(real_crop, tmp_path, ext, compress):
    """Half a file: NRRD and MetaImage fail in ITK; NIfTI reads 'fine' in ITK and is caught here."""
    full = tmp_path / ("full" + ext)
    volume_io.write_ct(real_crop, full, compress=compress)
    data = full.read_bytes()
    cut = tmp_path / ("cut" + ext)
    cut.write_bytes(data[: len(data) // 2])
    _refused(errors.TruncatedFileError, volume_io.read_ct, cut, folder=tmp_path)


def test_empty_dicom_folder(tmp_path):
    empty = tmp_path / "series"
    empty.mkdir()
    _refused(errors.EmptyDicomFolderError, volume_io.read_ct, empty, folder=tmp_path)
    (empty / "readme.txt").write_text("no images here")
    (empty / "sub").mkdir()
    _refused(errors.EmptyDicomFolderError, volume_io.read_ct, empty, folder=tmp_path)


# --------------------------------------------------------------------------- content
def test_2d_image_file(real_crop, tmp_path):
    import SimpleITK as sitk

    path = _write_sitk(sitk.GetImageFromArray(real_crop.array[0]), tmp_path / "slice.nrrd")
    err = _refused(errors.NotAVolumeError, volume_io.read_ct, path, folder=tmp_path)
    assert err.dimension == 2


def test_single_slice_volume_is_2d(real_crop):
    one = crop_volume(real_crop, 0, 1)
    err = _refused(errors.NotAVolumeError, volume_io.validate_ct, one)
    assert err.dimension == 2


def test_4d_image_file(real_crop, tmp_path):
    import SimpleITK as sitk

    img = volume_io.volume_to_image(real_crop)
    four = sitk.JoinSeries([img, img])
    path = _write_sitk(four, tmp_path / "timeseries.nrrd")
    err = _refused(errors.NotAVolumeError, volume_io.read_ct, path, folder=tmp_path)
    assert err.dimension == 4


def test_4d_array(real_crop):
    arr4 = np.stack([real_crop.array, real_crop.array])
    err = _refused(errors.NotAVolumeError, volume_io.validate_ct,
                   CTVolume(arr4, real_crop.ijk_to_ras))
    assert err.dimension == 4


def test_multicomponent_image_file(real_crop, tmp_path):
    import SimpleITK as sitk

    img = volume_io.volume_to_image(real_crop)
    rgb = sitk.Compose([img, img, img])
    path = _write_sitk(rgb, tmp_path / "colour.nrrd")
    _refused(errors.NotAVolumeError, volume_io.read_ct, path, folder=tmp_path)


def test_too_few_slices(real_crop):
    _refused(errors.VolumeTooSmallError, volume_io.validate_ct, crop_volume(real_crop, 0, 2))


def test_too_small_in_plane(real_crop):
    _refused(errors.VolumeTooSmallError, volume_io.validate_ct,
             crop_volume(real_crop, 0, 6, 200, 250, 200, 250))


def test_mr_like_intensities(real_crop, tmp_path):
    """An MR-like image (non-negative, no air below -500) written and read as a file."""
    mr = real_crop.array.astype(np.float32)
    mr = np.clip((mr + 1000.0) * 0.8, 0, None)  # air ~0, soft tissue ~800: MR-like range
    path = volume_io.write_ct(CTVolume(mr, real_crop.ijk_to_ras), tmp_path / "t1.nii.gz")
    _refused(errors.NotCTIntensityError, volume_io.read_ct, path)


def test_unscaled_ct_values(real_crop):
    raw = CTVolume((real_crop.array.astype(np.int32) + 1024).clip(0).astype(np.uint16),
                   real_crop.ijk_to_ras)
    _refused(errors.NotCTIntensityError, volume_io.validate_ct, raw)


def test_label_map_is_not_ct(real_crop):
    lab = CTVolume((real_crop.array > 0).astype(np.uint8), real_crop.ijk_to_ras)
    _refused(errors.NotCTIntensityError, volume_io.validate_ct, lab)


def test_nan_voxels_in_file(real_crop, tmp_path):
    arr = real_crop.array.astype(np.float32)
    arr[3, 200, 200] = np.nan
    path = volume_io.write_ct(CTVolume(arr, real_crop.ijk_to_ras), tmp_path / "nan.nrrd")
    _refused(errors.NonFiniteValuesError, volume_io.read_ct, path)


def test_infinite_voxels(real_crop):
    arr = real_crop.array.astype(np.float32)
    arr[-1, 0, 0] = np.inf
    _refused(errors.NonFiniteValuesError, volume_io.validate_ct, CTVolume(arr, real_crop.ijk_to_ras))


def test_singular_geometry(real_crop):
    m = real_crop.ijk_to_ras.copy()
    m[:3, 2] = m[:3, 1]
    _refused(errors.InvalidGeometryError, volume_io.validate_ct, CTVolume(real_crop.array, m))


def test_real_ct_passes(real_crop):
    summary = volume_io.validate_ct(real_crop)
    assert summary["slice_axis"] == 0 and summary["n_slices"] == 6


# --------------------------------------------------------------------------- analyze
def test_analyze_refuses_bad_volume_before_running_the_network(real_crop, model_dir, tmp_path,
                                                               monkeypatch):
    """A bad volume fails on its own cause before the network sees a slice (the Analyzer has
    resolved the model by then: that happens once, in its constructor)."""
    from ChestCTMTLLib import inference

    def never(*args, **kwargs):
        raise AssertionError("the network ran on a bad volume")

    monkeypatch.setattr(inference, "run_network", never)
    nan = real_crop.array.astype(np.float32)
    nan[0, 0, 0] = np.nan
    _refused(errors.NonFiniteValuesError, analyze, CTVolume(nan, real_crop.ijk_to_ras),
             model=model_dir, device="cpu", folder=tmp_path)


def test_missing_model_folder(real_crop, tmp_path):
    _refused(errors.ModelNotFoundError, analyze, real_crop, model=tmp_path / "no-model",
             device="cpu", folder=tmp_path)


def test_corrupt_model_weights(real_crop, model_dir, tmp_path):
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(model_dir, bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    err = _refused(errors.ModelError, analyze, real_crop, model=bad, device="cpu", folder=tmp_path,
                   exact=False)
    assert "sha" in str(err).lower() or "corrupt" in str(err).lower()


def test_model_folder_without_card(real_crop, tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    _refused(errors.ModelError, analyze, real_crop, model=folder, device="cpu", folder=tmp_path,
             exact=False)


def test_unavailable_cuda(real_crop, model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    _refused(errors.DeviceUnavailableError, analyze, real_crop, model=model_dir, device="cuda")


def test_task_not_in_model(real_crop, tmp_path):
    from ChestCTMTLLib.model import ModelConfig
    from ChestCTMTLLib.modelio import create_untrained_model_folder

    folder = create_untrained_model_folder(
        tmp_path / "clsonly", ModelConfig(input_size=64, tasks=("classification",)))
    _refused(errors.TaskNotAvailableError, analyze, real_crop, model=folder, device="cpu",
             tasks=("segmentation",))


# --------------------------------------------------------------------------- options
_BAD_OPTIONS = [dict(score_threshold=RANGES["score_threshold"][1] + 0.5),
                dict(score_threshold=RANGES["score_threshold"][0] - 0.1),
                dict(score_threshold=float("nan")), dict(score_threshold="high"),
                dict(score_threshold=[0.3]), dict(seg_threshold=RANGES["seg_threshold"][0] / 2),
                dict(seg_threshold=None), dict(min_island_mm3=-1.0),
                dict(min_finding_extent_mm=RANGES["min_finding_extent_mm"][1] + 1),
                dict(lung_margin_mm=-0.5), dict(device="tpu"), dict(device="gpu"),
                dict(tasks="segmentation"), dict(batch_size=0), dict(num_threads=0),
                dict(num_threads="many")]


@pytest.mark.parametrize("values", _BAD_OPTIONS, ids=lambda v: "%s=%r" % next(iter(v.items())))
def test_bad_options_are_refused(values):
    err = _refused(OptionError, AnalysisOptions, **values)
    assert isinstance(err, ValueError) and err.cause == "bad-option"
    assert next(iter(values)) in str(err)  # the message names the option
    with pytest.raises(OptionError):  # a copy is validated again
        AnalysisOptions().replace(**values)


def test_every_range_is_inclusive_and_options_are_frozen():
    import dataclasses

    for name, (low, high) in RANGES.items():
        assert getattr(AnalysisOptions(**{name: low}), name) == low
        assert getattr(AnalysisOptions(**{name: high}), name) == high
    options = AnalysisOptions(device="CPU", tasks=["classification"], num_threads="2")
    assert (options.device, options.tasks, options.num_threads) == ("cpu", ("classification",), 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.score_threshold = 0.9


def test_bad_option_is_refused_before_the_volume_or_model_is_touched(tmp_path):
    """analyze() builds its options first: a bad value fails on its own cause, even with a
    missing model and no volume worth the name."""
    _refused(OptionError, analyze, None, model=tmp_path / "no-model",
             score_threshold=RANGES["score_threshold"][1] + 1, folder=tmp_path)
