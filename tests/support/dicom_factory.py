"""Synthetic DICOM for tests and benchmarks: never real patients, built entirely in code.

`make_instance` builds one MR image (by default ~130 KB: 256x256 16-bit) with file meta,
`make_series` a whole series, `write_files` writes Part-10 files, and `encode_part10` /
`encoded_dataset` give the bytes exactly as they travel (deflated or JPEG baseline included),
so tests can check that the connector stores them unchanged.

JPEG baseline pixel data is a real, decodable JPEG of a flat mid-grey image (a flat image
needs only one Huffman code per table, so the encoder fits in a few lines).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    generate_uid,
)

__all__ = [
    "UNCOMPRESSED_SYNTAXES",
    "dataset_offset",
    "encode_part10",
    "encoded_dataset",
    "jpeg_baseline_frame",
    "make_instance",
    "make_series",
    "write_files",
]

UNCOMPRESSED_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
_SUPPORTED_SYNTAXES = (*UNCOMPRESSED_SYNTAXES, JPEGBaseline8Bit)


def make_instance(
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    series_description: str,
    study_description: str,
    patient_comments: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    rows: int = 256,
    cols: int = 256,
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_class: str = MRImageStorage,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """One synthetic image with file meta, ready to send or write.

    Uncompressed syntaxes carry 16-bit pixels whose pattern depends on `instance_number`;
    `JPEGBaseline8Bit` carries one encapsulated 8-bit JPEG frame. `extra` maps keywords to
    values set last (override anything, e.g. ``{"PatientName": "SYNTH^ONE"}``).
    """
    syntax = UID(transfer_syntax)
    if syntax not in _SUPPORTED_SYNTAXES:
        raise ValueError(
            f"the factory builds {', '.join(s.name for s in _SUPPORTED_SYNTAXES)}; "
            f"not {syntax} ({syntax.name})"
        )
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240102"
    ds.SeriesDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{patient_id}"[:16]
    ds.Modality = "MR"
    ds.Manufacturer = "SYNTHETIC"
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.StudyDescription = study_description
    ds.ProcedureCodeSequence = DicomSequence([_code_item("SYN-MR", "Synthetic MR procedure")])
    ds.SeriesDescription = series_description
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    if patient_comments is not None:
        ds.PatientComments = patient_comments
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = "3"
    ds.RepetitionTime = "500"
    ds.EchoTime = "15"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0, 0, 3 * instance_number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = study_uid + ".1" if len(study_uid) <= 62 else generate_uid()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [1, 1]
    ds.PixelRepresentation = 0
    if syntax == JPEGBaseline8Bit:
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.LossyImageCompression = "01"
        ds.PixelData = encapsulate([jpeg_baseline_frame(rows, cols)])
        ds["PixelData"].VR = "OB"
    else:
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelData = _pixels(
            rows, cols, instance_number, big_endian=syntax == ExplicitVRBigEndian
        )
        ds["PixelData"].VR = "OW"
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
    return ds


def make_series(
    n: int,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    series_description: str,
    study_description: str,
    **kwargs: Any,
) -> list[Dataset]:
    """`n` instances of one series, instance numbers 1..n; other keywords as `make_instance`."""
    return [
        make_instance(
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            series_description=series_description,
            study_description=study_description,
            instance_number=number,
            **kwargs,
        )
        for number in range(1, n + 1)
    ]


def write_files(datasets: Iterable[Dataset], directory: Path) -> list[Path]:
    """Write each data set as `<SOPInstanceUID>.dcm` in `directory`; paths in input order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(encode_part10(ds))
        paths.append(path)
    return paths


def encode_part10(ds: Dataset) -> bytes:
    """The Part-10 file bytes (preamble, file meta, data set in the file meta's syntax)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dataset_offset(part10: bytes) -> int:
    """Where the data set starts in Part-10 bytes (after the file meta group)."""
    if part10[128:132] != b"DICM" or part10[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not Part-10 bytes starting with a (0002,0000) group length")
    (group_length,) = struct.unpack_from("<L", part10, 140)
    return 144 + int(group_length)


def encoded_dataset(ds: Dataset) -> bytes:
    """The data set bytes as they go on the wire in its transfer syntax (deflated included)."""
    part10 = encode_part10(ds)
    return part10[dataset_offset(part10) :]


def jpeg_baseline_frame(rows: int, cols: int) -> bytes:
    """A valid baseline (process 1) JPEG of a flat mid-grey 8-bit image of the given size.

    Mid-grey (128) level-shifts to 0, so every 8x8 block is DC difference 0 and end-of-block:
    one one-bit Huffman code per table and two bits per block.
    """
    if not (0 < rows < 65536 and 0 < cols < 65536):
        raise ValueError(f"JPEG dimensions must be 1..65535, got {rows}x{cols}")
    blocks = -(-rows // 8) * -(-cols // 8)
    scan_bits = "0" * (2 * blocks)
    scan_bits += "1" * (-len(scan_bits) % 8)
    scan = bytes(int(scan_bits[i : i + 8], 2) for i in range(0, len(scan_bits), 8))
    one_code_table = bytes([1] + [0] * 15 + [0])  # one code of length 1 for symbol 0
    return b"".join(
        (
            b"\xff\xd8",
            _segment(0xDB, b"\x00" + bytes([1] * 64)),
            _segment(0xC0, struct.pack(">BHHBBBB", 8, rows, cols, 1, 1, 0x11, 0)),
            _segment(0xC4, b"\x00" + one_code_table + b"\x10" + one_code_table),
            _segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0])),
            scan,
            b"\xff\xd9",
        )
    )


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _pixels(rows: int, cols: int, seed: int, *, big_endian: bool) -> bytes:
    """A 12-bit gradient rotated by `seed`, so instances of a series differ in their pixels."""
    base = _gradient(rows, cols, big_endian)
    shift = (seed * 2 * 97) % len(base)
    return base[shift:] + base[:shift]


@functools.cache
def _gradient(rows: int, cols: int, big_endian: bool) -> bytes:
    order = ">" if big_endian else "<"
    return struct.pack(f"{order}{rows * cols}H", *((i * 7) % 4096 for i in range(rows * cols)))


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "99SYN"
    item.CodeMeaning = meaning
    return item
