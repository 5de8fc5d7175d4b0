"""The DICOM data dictionary (pydicom's), for checking the keywords a site config names.

The control plane may read DICOM files and the dictionary; it never speaks DICOM on the
network (no pynetdicom).
"""

from pydicom.datadict import dictionary_VR, tag_for_keyword


def keyword_vr(keyword: str) -> str | None:
    """The VR of the attribute `keyword`, None when the dictionary has no such keyword."""
    tag = tag_for_keyword(keyword)
    return None if tag is None else str(dictionary_VR(tag))
