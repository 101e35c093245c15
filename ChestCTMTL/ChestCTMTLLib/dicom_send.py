"""Send DICOM files to a PACS by C-STORE (pynetdicom), saying exactly why when it fails.

A failed send never touches the files: the caller keeps them and can send again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

from . import errors

DEFAULT_CALLING_AET = "CHESTCTMTL"


class SendError(errors.ChestCTMTLError):
    """The PACS could not be reached, refused the association or refused an object."""

    cause = "send-failed"


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    ae_title: str

    def __str__(self) -> str:
        return "{}:{}:{}".format(self.host, self.port, self.ae_title)


def parse_destination(text: str) -> Destination:
    """``HOST:PORT:AET`` -> Destination; ValueError with the reason for anything else."""
    parts = str(text).rsplit(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ValueError("a PACS is HOST:PORT:AET (e.g. pacs.local:104:ORTHANC), got {!r}"
                         .format(text))
    host, port_text, aet = (p.strip() for p in parts)
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError("the PACS port must be a number, got {!r}".format(port_text)) from None
    if not 0 < port < 65536:
        raise ValueError("the PACS port must be 1-65535, got {}".format(port))
    if len(aet) > 16 or "\\" in aet:
        raise ValueError("an AE title has at most 16 characters and no backslash, got {!r}"
                         .format(aet))
    return Destination(host, port, aet)


def _reachable(destination: Destination, timeout_s: float) -> None:
    """A plain TCP connection first: pynetdicom reports an unreachable host only as an aborted
    association, while the socket error says what is wrong (refused, unknown host, timeout)."""
    import socket

    try:
        with socket.create_connection((destination.host, destination.port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise SendError("cannot reach the PACS {}: {}".format(
            destination, exc.strerror or exc.__class__.__name__ + (": " + str(exc) if str(exc)
                                                                   else "")))


def send_files(paths: Sequence, destination: Destination,
               calling_aet: str = DEFAULT_CALLING_AET, timeout_s: float = 30.0) -> List[str]:
    """C-STORE every file in one association; returns the SOP Instance UIDs stored.

    Raises SendError naming the destination and the reason (connection refused, association
    rejected, an object refused with its status) - after the first refusal nothing more is sent.
    """
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage  # noqa: F401

    datasets = [pydicom.dcmread(str(p)) for p in paths]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [pydicom.uid.ExplicitVRLittleEndian,
                                             pydicom.uid.ImplicitVRLittleEndian])
    _reachable(destination, timeout_s)
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except OSError as exc:
        raise SendError("cannot reach the PACS {}: {}".format(destination, exc))
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else \
            "association aborted" if assoc.is_aborted else \
            "no association (is a DICOM server listening there, with that AE title?)"
        raise SendError("the PACS {} did not accept us: {}".format(destination, reason))
    stored = []
    try:
        for path, ds in zip(paths, datasets):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError("the PACS {} did not answer the C-STORE of {} (connection lost "
                                "or timed out)".format(destination, path))
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise SendError("the PACS {} refused {} (status 0x{:04X})".format(
                    destination, path, code))
            stored.append(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()
    return stored
