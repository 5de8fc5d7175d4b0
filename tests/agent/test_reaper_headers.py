"""Reading the series header a reap needs from one spooled file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.headers import (
    HeaderReadError,
    UnknownKeywordError,
    read_series_header,
    validate_keywords,
)
from tests.support.dicom_factory import make_instance, write_files


def _write(tmp_path: Path, **kwargs: object) -> Path:
    ds = make_instance(
        patient_id="SYNTH042",
        study_uid="1.2.826.0.1.3680043.8.498.7",
        series_uid="1.2.826.0.1.3680043.8.498.7.1",
        series_description="DWI",
        study_description="Head",
        rows=16,
        cols=16,
        **kwargs,  # type: ignore[arg-type]
    )
    [path] = write_files([ds], tmp_path)
    return path


def test_header_holds_the_series_values_and_the_configured_keywords(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        patient_comments="fw://neuro/study-a",
        series_number=7,
        extra={"ImageComments": "NOFW"},
    )

    header = read_series_header(path, ["PatientComments", "ImageComments"])

    assert header.patient_id == "SYNTH042"
    assert header.study_description == "Head"
    assert header.series_description == "DWI"
    assert header.series_number == "7"
    assert header.series_instance_uid == "1.2.826.0.1.3680043.8.498.7.1"
    assert dict(header.fields) == {
        "PatientComments": "fw://neuro/study-a",
        "ImageComments": "NOFW",
    }


def test_header_leaves_a_keyword_out_when_the_file_does_not_hold_it(tmp_path: Path) -> None:
    header = read_series_header(_write(tmp_path), ["PatientComments"])

    assert dict(header.fields) == {}


def test_header_decodes_text_with_the_files_character_set(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        patient_comments="Müller fw://neuro/study-a",
        extra={"SpecificCharacterSet": "ISO_IR 192"},
    )

    header = read_series_header(path, ["PatientComments"])

    assert header.fields["PatientComments"] == "Müller fw://neuro/study-a"


def test_unknown_keyword_is_refused_with_the_keyword_named() -> None:
    with pytest.raises(UnknownKeywordError, match="'PatientComentz'"):
        validate_keywords(["PatientComments", "PatientComentz"])


def test_a_file_that_is_not_dicom_raises_a_header_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"\x00" * 10)

    with pytest.raises(HeaderReadError, match=r"junk\.dcm"):
        read_series_header(path, ["PatientComments"])


@pytest.mark.parametrize(("source", "calling"), [("CT1", "CT1"), ("MR 1 ", "MR 1"), (None, None)])
def test_header_holds_the_calling_ae_title_the_scp_wrote_into_the_meta_group(
    tmp_path: Path, source: str | None, calling: str | None
) -> None:
    ds = make_instance(
        patient_id="SYNTH042",
        study_uid="1.2.826.0.1.3680043.8.498.7",
        series_uid="1.2.826.0.1.3680043.8.498.7.1",
        series_description="DWI",
        study_description="Head",
        rows=16,
        cols=16,
    )
    if source is not None:
        ds.file_meta.SourceApplicationEntityTitle = source
    [path] = write_files([ds], tmp_path)

    assert read_series_header(path, []).calling_ae_title == calling
