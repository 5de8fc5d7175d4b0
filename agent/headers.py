"""Reads the few header values a reap decision needs from one spooled DICOM file.

Only the attributes named here and the configured routing/policy keywords are parsed
(`specific_tags`, pixel data never read), so a reap costs the same for a 1 MB CT slice and a
1 GB multi-frame object.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from common.hierarchy import SeriesHeader

_HEADER_KEYWORDS = (
    "SpecificCharacterSet",  # needed to decode the text values below correctly
    "PatientID",
    "StudyInstanceUID",
    "StudyDescription",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "AcquisitionNumber",
)


class UnknownKeywordError(ValueError):
    """A configured field name is not a keyword of the DICOM data dictionary."""


class HeaderReadError(Exception):
    """A spooled file could not be read as DICOM."""


def keyword_vr(keyword: str) -> str | None:
    """The VR of the attribute `keyword`, None when the dictionary has no such keyword."""
    tag = tag_for_keyword(keyword)
    return None if tag is None else str(dictionary_VR(tag))


def validate_keywords(keywords: Iterable[str]) -> tuple[str, ...]:
    """Return the keywords, deduplicated in order; raise `UnknownKeywordError` for unknown ones."""
    unique = tuple(dict.fromkeys(keywords))
    unknown = [keyword for keyword in unique if tag_for_keyword(keyword) is None]
    if unknown:
        raise UnknownKeywordError(
            f"unknown DICOM keyword(s) {', '.join(map(repr, unknown))}: use a keyword of the "
            "DICOM data dictionary, spelled as in the standard (e.g. 'PatientComments')"
        )
    return unique


def read_series_header(source: Path | BinaryIO, keywords: Iterable[str]) -> SeriesHeader:
    """Read the series-level header of one DICOM file (a path or an open binary file), with
    `keywords` in `.fields`.

    `.fields` maps each keyword present in the file with a non-empty value to its text;
    `.calling_ae_title` is the meta group's SourceApplicationEntityTitle (who sent it).
    Raises `UnknownKeywordError` for a keyword pydicom does not know and `HeaderReadError`
    when the file is missing or not DICOM.
    """
    wanted = validate_keywords(keywords)
    try:
        dataset = dcmread(
            source,
            stop_before_pixels=True,
            specific_tags=list(dict.fromkeys((*_HEADER_KEYWORDS, *wanted))),
        )
        fields = {
            keyword: value
            for keyword in (*wanted, "AcquisitionNumber")
            if (value := _text(dataset, keyword))
        }
        return SeriesHeader(
            patient_id=_text(dataset, "PatientID"),
            study_instance_uid=_text(dataset, "StudyInstanceUID"),
            study_description=_text(dataset, "StudyDescription"),
            series_instance_uid=_text(dataset, "SeriesInstanceUID"),
            series_description=_text(dataset, "SeriesDescription"),
            series_number=_text(dataset, "SeriesNumber"),
            fields=fields,
            calling_ae_title=_calling_ae_title(dataset),
        )
    except InvalidDicomError as exc:
        reason = str(exc)  # about the file's structure, never its values
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    # Damaged data makes pydicom raise many exception types, whose text may quote the bad
    # value (a name, a date): only the type is kept, and the file becomes a visible failure
    # instead of stopping the pipeline.
    except Exception as exc:
        reason = f"{type(exc).__name__} while parsing it"
    name = source.name if isinstance(source, Path) else "a de-identified copy"
    raise HeaderReadError(f"cannot read the DICOM header of {name}: {reason}")


def _calling_ae_title(dataset: Dataset) -> str | None:
    # The SCP writes the association's calling AE title into the meta group it builds for
    # every received instance (agent.dicom.file_meta), so the spool file is its record.
    meta = getattr(dataset, "file_meta", None)
    value = meta.get("SourceApplicationEntityTitle") if meta is not None else None
    if value is None:
        return None
    return str(value).strip(" ") or None


def _text(dataset: Dataset, keyword: str) -> str | None:
    if keyword not in dataset:
        return None
    value = dataset[keyword].value
    if value is None or isinstance(value, bytes):
        return None
    text = "\\".join(str(item) for item in value) if isinstance(value, MultiValue) else str(value)
    return text or None
