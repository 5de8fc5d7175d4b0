"""`dicom-connector admin route-check`: where a routing string, header values or a DICOM file
would land under a site's current config, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.admin import _call as call_api
from cli.admin import console


def route_check(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(
            help="A DICOM file whose header to check (the attributes the config reads)."
        ),
    ] = None,
    site: Annotated[str | None, typer.Option(help="The site whose config applies.")] = None,
    routing_string: Annotated[
        str | None, typer.Option("--string", help="A routing string, e.g. fw://neuro/study-a.")
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(help="A header value as KEYWORD=VALUE; repeat for more."),
    ] = None,
    calling_ae: Annotated[
        str | None,
        typer.Option(
            "--calling-ae",
            help="The sending scanner's AE title: its dicom.peers routing block applies.",
        ),
    ] = None,
) -> None:
    """Say where a series would land today and why, with the nearest names for a typo."""
    headers = dict(_pair(item) for item in header or [])
    if file is not None:
        headers = {**_file_headers(ctx, file, site), **headers}
    body: dict[str, Any] = {"headers": headers}
    if site is not None:
        body["site"] = site
    if routing_string is not None:
        body["routing_string"] = routing_string
    if calling_ae is not None:
        body["calling_ae_title"] = calling_ae
    answer = call_api(ctx, "POST", "/api/v1/routing/check", json=body)
    if not answer["upload"]:
        console.print(f"not uploaded: the upload policy says {answer['policy_reason']}")
        return
    console.print(
        f"{answer['group']}/{escape(answer['project'])}/{escape(answer['subject'])}/"
        f"{escape(answer['session'])} (acquisition {escape(answer['acquisition'])})"
    )
    console.print(
        f"reason: {answer['reason']} (routing string looked for in {answer['routing_from']}.fields)"
    )
    for name, value in sorted(answer.get("metadata", {}).items()):
        console.print(f"session metadata {escape(name)}: {escape(value)}")
    for suggestion in answer["suggestions"]:
        project = f"/{escape(suggestion['project'])}" if suggestion["project"] else ""
        console.print(f"did you mean fw://{suggestion['group']}{project} ?")
    for note in answer["notes"]:
        console.print(f"[yellow]{escape(note)}[/yellow]")


def _pair(item: str) -> tuple[str, str]:
    keyword, separator, value = item.partition("=")
    if not separator or not keyword:
        raise typer.BadParameter(f"{item!r} is not KEYWORD=VALUE")
    return keyword, value


def _file_headers(ctx: typer.Context, file: Path, site: str | None) -> dict[str, str]:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from common.config import dicom_keywords, validate_site_config

    if site is None:
        sites = call_api(ctx, "GET", "/api/v1/sites")["items"]
        if len(sites) != 1:
            raise typer.BadParameter("name the site with --site: there is more than one")
        site = str(sites[0]["name"])
    config = validate_site_config(call_api(ctx, "GET", f"/api/v1/sites/{site}/config")["config"])
    keywords = {keyword for _, keyword in dicom_keywords(config)} | {
        "PatientID",
        "StudyInstanceUID",
        "StudyDescription",
        "SeriesInstanceUID",
        "SeriesDescription",
        "SeriesNumber",
        "AcquisitionNumber",
    }
    try:
        dataset = dcmread(file, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as exc:
        raise typer.BadParameter(f"{file} is not a readable DICOM file: {exc}") from exc
    return {
        keyword: str(dataset[keyword].value)
        for keyword in sorted(keywords)
        if keyword in dataset and dataset[keyword].value not in (None, "")
    }
