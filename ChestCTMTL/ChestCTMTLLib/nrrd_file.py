"""A scalar volume written as a gzip NRRD one slab at a time, laid out as Slicer writes it.

Why: Slicer's volume storage node (vtkMRMLVolumeArchetypeStorageNode, through ITK's
NrrdImageIO) writes from a whole image in memory. The reconstruction exists on the model grid
(:class:`.network.ModelGridReconstruction`); writing it that way needs a CT-sized HU array
just for the file (0.55 GB on a 1,044-slice CT, the largest allocation of the write). Here
each slab is mapped to HU, compressed into one gzip stream and dropped. ``gzip`` and
``zlib`` release the GIL while compressing, so the write can run beside other work.

The header has the storage node's fields, order and number format (a test holds this file's
header and voxels to the storage node's, and reads it back with it). Slicer's NRRD readers
(teem, ITK) inflate any gzip level; level 1 is the fastest and, on CT-like int16 data,
within 1 % of the storage node's size.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

import numpy as np

#: NRRD type names of the dtypes written here
_NRRD_TYPES = {np.dtype(np.int16): "short", np.dtype(np.uint8): "unsigned char",
               np.dtype(np.uint16): "unsigned short", np.dtype(np.int32): "int",
               np.dtype(np.float32): "float"}
#: RAS -> LPS, the space Slicer writes volumes in
_LPS = np.diag([-1.0, -1.0, 1.0])
#: slices per slab: 8 MB of int16 at 512 x 512, enough for zlib to run long without the GIL
SLAB_DEPTH = 16
#: slices per slab of :class:`SlabsAhead`, which runs beside the CT-sized lung stages: smaller
#: slabs keep its temporaries (HU mapping in float32 at the input's size) off their peak
AHEAD_SLAB_DEPTH = 4


def _number(value: float) -> str:
    return "%.17g" % float(value)


def _vector(values) -> str:
    return "(" + ",".join(_number(v) for v in values) + ")"


def header(shape_kji, ijk_to_ras, dtype) -> bytes:
    """The NRRD header (through the blank line) of a volume of ``shape_kji`` (numpy order)
    placed by the 4x4 ``ijk_to_ras``, with gzip-encoded voxels of ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype not in _NRRD_TYPES:
        raise ValueError("no NRRD type for %s" % dtype)
    m = np.asarray(ijk_to_ras, dtype=np.float64).reshape(4, 4)
    directions = _LPS @ m[:3, :3]
    origin = _LPS @ m[:3, 3]
    k, j, i = (int(v) for v in shape_kji)
    lines = ["NRRD0004",
             "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html",
             "type: " + _NRRD_TYPES[dtype],
             "dimension: 3",
             "space: left-posterior-superior",
             "sizes: %d %d %d" % (i, j, k),
             "space directions: " + " ".join(_vector(directions[:, a]) for a in range(3)),
             "kinds: domain domain domain"]
    if dtype.itemsize > 1:
        lines.append("endian: little")
    lines += ["encoding: gzip", "space origin: " + _vector(origin)]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def array_slabs(array: np.ndarray, depth: int = SLAB_DEPTH):
    """``(k0, view)`` slabs of an array that is already whole, for :func:`write_slabs`."""
    return ((k0, array[k0:k0 + depth]) for k0 in range(0, array.shape[0], depth))


def _gzip_slabs(raw, shape, dtype, slabs: Iterable[Tuple[int, np.ndarray]], level: int,
                stop: Optional[threading.Event] = None) -> None:
    """Each slab, checked to continue the volume, into one gzip stream written to ``raw``."""
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=int(level),
                       mtime=0) as packed:
        _compress_slabs(packed, shape, dtype, slabs, stop)


def _compress_slabs(packed, shape, dtype, slabs, stop) -> None:
    expected = 0
    for k0, slab in slabs:
        if stop is not None and stop.is_set():
            raise _Stopped()
        slab = np.asarray(slab)
        if int(k0) != expected or slab.shape[1:] != shape[1:] or slab.dtype != dtype:
            raise ValueError("slab at %d of shape %s %s does not continue a %s %s "
                             "volume at %d" % (k0, slab.shape, slab.dtype, shape, dtype, expected))
        packed.write(np.ascontiguousarray(slab).astype("<" + dtype.str[1:], copy=False).data)
        expected += slab.shape[0]
    if expected != shape[0]:
        raise ValueError("slabs covered %d of %d slices" % (expected, shape[0]))


def _atomic_write(path: Path, fill) -> None:
    """``fill(raw)`` into a hidden file beside ``path``, renamed into place: a failure leaves
    nothing."""
    partial = path.with_name("." + path.name + ".partial")
    try:
        with open(partial, "wb") as raw:
            fill(raw)
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise


def write_slabs(path: Union[str, Path], shape_kji, ijk_to_ras,
                slabs: Iterable[Tuple[int, np.ndarray]], dtype=np.int16,
                compression_level: int = 1) -> None:
    """Write ``slabs`` (``(k0, array)`` pairs covering axis 0 of ``shape_kji`` in order, e.g.
    :meth:`.network.ModelGridReconstruction.hu_slabs`) to ``path`` as a gzip NRRD.

    Written to a hidden file beside ``path`` and renamed into place: a failure leaves nothing.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(v) for v in shape_kji)

    def fill(raw) -> None:
        raw.write(header(shape, ijk_to_ras, dtype))
        _gzip_slabs(raw, shape, dtype, slabs, compression_level)

    _atomic_write(Path(path), fill)


class _Stopped(Exception):
    """A compression ahead that was closed before it finished."""


class SlabsAhead:
    """The voxels of a gzip NRRD compressed ahead, in a thread of their own, before the file's
    folder exists; :meth:`write` then puts header and voxels into place.

    Why: the batch knows the reconstruction as soon as the network has run, while the lung and
    candidate stages that follow use one core. Compressing it then (zlib and torch release the
    GIL) takes it off the end of the analysis, where the case's files wait for it. The voxels
    go to an unnamed temporary file (deleted when closed, or when the process ends however it
    ends: nothing half-made is ever visible), not to memory, so peak memory does not grow with
    the scan. :meth:`write` gives the file :func:`write_slabs` writes, byte for byte.
    Always :meth:`close` it (also after :meth:`write`); closing one still compressing stops it
    at the next slab.
    """

    def __init__(self, shape_kji, ijk_to_ras, slabs: Iterable[Tuple[int, np.ndarray]],
                 dtype=np.int16, compression_level: int = 1, source: object = None,
                 directory: Optional[Union[str, Path]] = None) -> None:
        """``directory``: where the unnamed temporary file lives (default: the system's
        temporary folder); the destination's folder keeps the bytes on the disk they go to."""
        dtype = np.dtype(dtype)
        shape = tuple(int(v) for v in shape_kji)
        self._header = header(shape, ijk_to_ras, dtype)  # an unknown dtype fails here, at once
        #: what the voxels were made from (the caller's check that they are still the ones wanted)
        self.source = source
        self._body = tempfile.TemporaryFile(prefix=".chestctmtl-slabs-",
                                            dir=None if directory is None else str(directory))
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._compress, name="chestctmtl-slabs-ahead",
                                        args=(slabs, shape, dtype, int(compression_level)))
        self._thread.start()

    def _compress(self, slabs, shape, dtype, level: int) -> None:
        try:
            _gzip_slabs(self._body, shape, dtype, slabs, level, self._stop)
        except BaseException as exc:  # noqa: BLE001 - raised again by write()
            self._error = exc

    def write(self, path: Union[str, Path]) -> None:
        """Wait for the voxels and write the NRRD to ``path`` (atomically); raises what the
        compression raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._body.closed:
            raise ValueError("this compression was closed")

        def fill(raw) -> None:
            raw.write(self._header)
            self._body.seek(0)
            shutil.copyfileobj(self._body, raw, 1 << 22)

        _atomic_write(Path(path), fill)

    def close(self) -> None:
        """Stop (at the next slab) and drop the compressed voxels."""
        self._stop.set()
        self._thread.join()
        self._body.close()
