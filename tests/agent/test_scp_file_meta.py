"""The hand-encoded Part-10 header matches what pydicom's writer produces, byte for byte."""

from __future__ import annotations

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from agent.dicom.file_meta import part10_header


def pydicom_header(source_ae_title: str | None) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.1")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.9.3811.3.0.4")
    meta.ImplementationVersionName = "PYNETDICOM_304"
    if source_ae_title is not None:
        meta.SourceApplicationEntityTitle = source_ae_title
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


@pytest.mark.parametrize("source_ae_title", ["SCANNER", "ODD", None])
def test_header_is_identical_to_pydicoms(source_ae_title: str | None) -> None:
    ours = part10_header(
        sop_class_uid=MRImageStorage,
        sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.4",
        implementation_version_name="PYNETDICOM_304",
        source_ae_title=source_ae_title,
    )

    assert ours == pydicom_header(source_ae_title)


def test_header_refuses_a_uid_longer_than_64_characters() -> None:
    with pytest.raises(ValueError, match="longer than 64"):
        part10_header(
            sop_class_uid=MRImageStorage,
            sop_instance_uid="1." * 40,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            implementation_class_uid="1.2",
            implementation_version_name="X",
            source_ae_title=None,
        )
