"""Sites and their config: immutable numbered revisions with author and diff."""

from __future__ import annotations

import json

import pytest

from common.config import SiteConfig
from tests.control_plane.harness import ControlPlane

DEFAULTS = SiteConfig().model_dump(mode="json")


@pytest.fixture
async def site(control_plane: ControlPlane) -> str:
    """A site named `hospital-a` (Europe/Berlin)."""
    response = await control_plane.admin.post(
        "/api/v1/sites", json={"name": "hospital-a", "timezone": "Europe/Berlin"}
    )
    assert response.status_code == 201
    return "hospital-a"


async def _put(control_plane: ControlPlane, site: str, document: object) -> int:
    response = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config", content=json.dumps(document)
    )
    assert response.status_code == 200, response.text
    revision: int = response.json()["revision"]
    return revision


async def test_created_sites_are_listed(control_plane: ControlPlane, site: str) -> None:
    response = await control_plane.admin.get("/api/v1/sites")

    assert response.json() == {
        "items": [{"name": "hospital-a", "timezone": "Europe/Berlin", "labels": {}}]
    }


async def test_creating_an_existing_site_is_409(control_plane: ControlPlane, site: str) -> None:
    response = await control_plane.admin.post(
        "/api/v1/sites", json={"name": site, "timezone": "UTC"}
    )

    assert response.status_code == 409


async def test_unknown_timezone_is_422_naming_the_expected_form(
    control_plane: ControlPlane,
) -> None:
    response = await control_plane.admin.post(
        "/api/v1/sites", json={"name": "hospital-b", "timezone": "Mars/Olympus_Mons"}
    )

    assert response.status_code == 422
    assert "IANA timezone" in response.text


async def test_site_never_configured_has_revision_0_with_defaults(
    control_plane: ControlPlane, site: str
) -> None:
    response = await control_plane.admin.get(f"/api/v1/sites/{site}/config")

    assert response.json() == {
        "revision": 0,
        "config": DEFAULTS,
        "created_at": None,
        "created_by": None,
    }


async def test_each_changed_config_gets_the_next_revision(
    control_plane: ControlPlane, site: str
) -> None:
    first = await _put(control_plane, site, {"timing": {"acquisition_delay": "45s"}})
    second = await _put(control_plane, site, {"timing": {"acquisition_delay": "60s"}})

    current = (await control_plane.admin.get(f"/api/v1/sites/{site}/config")).json()
    assert (first, second) == (1, 2)
    assert current["revision"] == 2
    assert current["config"]["timing"]["acquisition_delay"] == "1m"
    assert current["created_by"] == "admin"
    assert current["created_at"] is not None


async def test_identical_config_keeps_the_current_revision(
    control_plane: ControlPlane, site: str
) -> None:
    document = {"dicom": {"ae_title": "SITE_A", "port": 104}}
    first = await _put(control_plane, site, document)
    # Same content in another spelling: YAML, defaults written out.
    response = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config",
        content="dicom:\n  ae_title: SITE_A\n  port: 104\n  peers: []\nmode: push\n",
        headers={"Content-Type": "application/yaml"},
    )

    assert response.json() == {"revision": first}
    revisions = (await control_plane.admin.get(f"/api/v1/sites/{site}/config/revisions")).json()
    assert [revision["revision"] for revision in revisions["items"]] == [1]


async def test_revisions_record_the_changed_keys_with_old_and_new_values(
    control_plane: ControlPlane, site: str
) -> None:
    await _put(control_plane, site, {"dicom": {"ae_title": "SITE_A"}})
    await _put(
        control_plane,
        site,
        {"dicom": {"ae_title": "SITE_B", "peers": [{"ae_title": "CT1", "host": "10.0.0.5"}]}},
    )

    items = (await control_plane.admin.get(f"/api/v1/sites/{site}/config/revisions")).json()[
        "items"
    ]

    assert [item["revision"] for item in items] == [1, 2]
    assert items[0]["diff"] == [{"key": "dicom.ae_title", "old": "CONNECTOR", "new": "SITE_A"}]
    assert items[1]["diff"] == [
        {"key": "dicom.ae_title", "old": "SITE_A", "new": "SITE_B"},
        {"key": "dicom.peers", "old": [], "new": [{"ae_title": "CT1", "host": "10.0.0.5"}]},
    ]
    assert items[0]["config"]["dicom"]["ae_title"] == "SITE_A"
    assert {item["created_by"] for item in items} == {"admin"}


async def test_invalid_config_is_422_naming_the_key_and_allowed_values(
    control_plane: ControlPlane, site: str
) -> None:
    response = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config", content=json.dumps({"mode": "sideways"})
    )

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["message"]
    [problem] = detail["problems"]
    assert problem.startswith("mode:")
    assert "sideways" in problem
    assert "push" in problem
    assert "pull" in problem
    current = (await control_plane.admin.get(f"/api/v1/sites/{site}/config")).json()
    assert current["revision"] == 0


@pytest.mark.parametrize(
    ("document", "key", "why"),
    [
        (
            {"metadata": {"patterns": [{"field": "PatientID", "regex": "(?P<subject>\\w+"}]}},
            "metadata.patterns[0].regex",
            "is not a regular expression",
        ),
        (
            {"metadata": {"patterns": [{"field": "PatientID", "regex": "(?P<subjet>\\w+)"}]}},
            "metadata.patterns[0].regex",
            "did you mean 'subject'",
        ),
        (
            {"metadata": {"patterns": [{"field": "StudyDate", "regex": "^(?P<session>V\\d)$"}]}},
            "metadata.patterns[0].regex",
            "a DA value never holds",
        ),
        (
            {"routing": {"fields": ["PatientComments", "StudyComent"]}},
            "routing.fields[1]",
            "not a keyword of the DICOM data dictionary",
        ),
        (
            {"hierarchy": {"acquisition_label": "{SeriesNumber} - {SeriesDescriptoin}"}},
            "hierarchy.acquisition_label",
            "not a keyword of the DICOM data dictionary",
        ),
        (
            {"hierarchy": {"subject_field": "PatientsName"}},
            "hierarchy.subject_field",
            "not a keyword of the DICOM data dictionary",
        ),
        (
            {
                "dicom": {
                    "peers": [
                        {"ae_title": "MR1", "host": "10.0.0.6"},
                        {
                            "ae_title": "CT1",
                            "host": "10.0.0.5",
                            "routing": {"field": "StudyComent"},
                        },
                    ]
                }
            },
            "dicom.peers[1].routing.fields[0]",
            "not a keyword of the DICOM data dictionary",
        ),
        (
            {
                "dicom": {
                    "peers": [
                        {"ae_title": "CT1", "host": "10.0.0.5", "routing": {"unknown_group": "x"}}
                    ]
                }
            },
            "dicom.peers[0].routing.unknown_group",
            "set for the whole site only",
        ),
    ],
)
async def test_a_config_the_dicom_dictionary_refutes_is_422_naming_the_key(
    control_plane: ControlPlane, site: str, document: dict[str, object], key: str, why: str
) -> None:
    response = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config", content=json.dumps(document)
    )

    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]["problems"]
    assert problem.startswith(f"{key}: ")
    assert why in problem


async def test_config_that_is_not_text_is_422(control_plane: ControlPlane, site: str) -> None:
    response = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config", content=b"\xff\xfe\x00binary"
    )

    assert response.status_code == 422
    assert "UTF-8" in response.json()["detail"]["message"]


async def test_config_of_an_unknown_site_is_404(control_plane: ControlPlane) -> None:
    put = await control_plane.admin.put("/api/v1/sites/nowhere/config", content="{}")
    get = await control_plane.admin.get("/api/v1/sites/nowhere/config")

    assert (put.status_code, get.status_code) == (404, 404)


async def test_agent_reads_the_current_config_of_its_site(
    control_plane: ControlPlane, site: str
) -> None:
    await _put(control_plane, site, {"routing": {"unknown_group": "triage"}})
    token = await control_plane.register_agent(site=site)

    async with control_plane.client(token) as agent:
        response = await agent.get("/api/v1/agent/config")

    answer = response.json()
    assert (answer["site"], answer["timezone"], answer["revision"]) == (
        "hospital-a",
        "Europe/Berlin",
        1,
    )
    assert answer["config"]["routing"]["unknown_group"] == "triage"
    assert SiteConfig.model_validate(answer["config"]).routing.unknown_group == "triage"


async def _add_agent(control_plane: ControlPlane, site: str, name: str, deployment: str) -> None:
    response = await control_plane.admin.post(
        f"/api/v1/sites/{site}/agents", json={"name": name, "deployment": deployment}
    )
    assert response.status_code == 201, response.text


_TLS = {"cert": "/etc/dc/agent.crt", "key": "/etc/dc/agent.key", "ca": "/etc/dc/ca.crt"}
_PULL = {"mode": "pull", "pull": {"sources": [{"ae_title": "PACS", "host": "pacs", "port": 104}]}}


async def test_a_site_of_in_cluster_agents_refuses_a_config_without_mtls_or_in_pull_mode(
    control_plane: ControlPlane, site: str
) -> None:
    await _add_agent(control_plane, site, "pod-1", "in-cluster")

    plain = await control_plane.admin.put(f"/api/v1/sites/{site}/config", content="{}")
    pulling = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config", content=json.dumps({"dicom": {"tls": _TLS}, **_PULL})
    )
    one_way = {"dicom": {"tls": _TLS | {"require_client_cert": False}}}
    no_client_cert = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config", content=json.dumps(one_way)
    )

    assert (plain.status_code, pulling.status_code, no_client_cert.status_code) == (422, 422, 422)
    assert "in-cluster" in plain.json()["detail"]["message"]
    assert plain.json()["detail"]["problems"][0].startswith("dicom.tls:")
    assert pulling.json()["detail"]["problems"][0].startswith("mode:")
    assert no_client_cert.json()["detail"]["problems"][0].startswith(
        "dicom.tls.require_client_cert:"
    )
    assert await _put(control_plane, site, {"dicom": {"tls": _TLS}}) == 1


async def test_a_site_with_an_edge_agent_too_may_store_a_plain_config(
    control_plane: ControlPlane, site: str
) -> None:
    await _add_agent(control_plane, site, "pod-1", "in-cluster")
    await _add_agent(control_plane, site, "vm-1", "edge")

    assert await _put(control_plane, site, _PULL) == 1
