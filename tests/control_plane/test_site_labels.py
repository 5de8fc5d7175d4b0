"""Site labels through the API (SQLite and PostgreSQL): on creation, replaced, set, removed,
shown on site answers, filtering the site list, refused when invalid, audited."""

from __future__ import annotations

import pytest

from tests.control_plane.harness import ControlPlane


async def _site(cp: ControlPlane, name: str, **labels: str) -> None:
    created = await cp.admin.post(
        "/api/v1/sites", json={"name": name, "timezone": "UTC", "labels": labels}
    )
    assert created.status_code == 201, created.text
    assert created.json()["labels"] == labels


async def _names(cp: ControlPlane, *terms: str) -> list[str]:
    response = await cp.admin.get("/api/v1/sites", params=[("label", term) for term in terms])
    assert response.status_code == 200, response.text
    return [site["name"] for site in response.json()["items"]]


async def test_the_site_list_is_filtered_by_every_label_given(control_plane: ControlPlane) -> None:
    await _site(control_plane, "paris", region="eu", scanner="mr")
    await _site(control_plane, "berlin", region="eu", scanner="ct")
    await _site(control_plane, "boston", region="us", scanner="mr")

    assert await _names(control_plane) == ["berlin", "boston", "paris"]
    assert await _names(control_plane, "region=eu") == ["berlin", "paris"]
    assert await _names(control_plane, "region=eu", "scanner=mr") == ["paris"]
    assert await _names(control_plane, "region=mars") == []


async def test_labels_are_replaced_set_and_removed(control_plane: ControlPlane) -> None:
    await _site(control_plane, "paris", region="eu")

    replaced = await control_plane.admin.put(
        "/api/v1/sites/paris/labels", json={"labels": {"scanner": "mr", "tier": "canary"}}
    )
    set_one = await control_plane.admin.put(
        "/api/v1/sites/paris/labels/region", json={"value": "eu-west"}
    )
    removed = await control_plane.admin.delete("/api/v1/sites/paris/labels/tier")
    removed_again = await control_plane.admin.delete("/api/v1/sites/paris/labels/tier")

    assert replaced.json()["labels"] == {"scanner": "mr", "tier": "canary"}
    assert set_one.json()["labels"] == {"region": "eu-west", "scanner": "mr", "tier": "canary"}
    assert removed.json()["labels"] == {"region": "eu-west", "scanner": "mr"}
    assert removed_again.status_code == 200
    entries = (
        await control_plane.admin.get("/api/v1/audit", params={"action": "site.labels"})
    ).json()["items"]
    # Three changes; removing a label the site no longer carries changes nothing.
    assert len(entries) == 3
    assert entries[0]["changes"] == {
        "before": {"region": "eu-west", "scanner": "mr", "tier": "canary"},
        "after": {"region": "eu-west", "scanner": "mr"},
    }


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("PUT", "/api/v1/sites/paris/labels", {"labels": {"Region": "eu"}}, "label key"),
        ("PUT", "/api/v1/sites/paris/labels", {"labels": {"region": "e u"}}, "label value"),
        ("PUT", "/api/v1/sites/paris/labels", {"labels": {"region": ""}}, "label value"),
        ("PUT", "/api/v1/sites/paris/labels/-bad", {"value": "x"}, "label key"),
        ("PUT", "/api/v1/sites/paris/labels/region", {"value": "x" * 64}, "label value"),
        (
            "PUT",
            "/api/v1/sites/paris/labels",
            {"labels": {f"k{index}": "v" for index in range(33)}},
            "at most 32 labels",
        ),
        ("POST", "/api/v1/sites", {"name": "x", "timezone": "UTC", "labels": {"_": "y"}}, "key"),
        ("GET", "/api/v1/sites?label=region", None, "KEY=VALUE"),
        ("GET", "/api/v1/sites?label=region=a&label=region=b", None, "twice"),
    ],
)
async def test_invalid_labels_and_selectors_are_a_422_saying_what_is_allowed(
    control_plane: ControlPlane,
    method: str,
    path: str,
    body: dict[str, object] | None,
    fragment: str,
) -> None:
    await _site(control_plane, "paris")

    response = await control_plane.admin.request(method, path, json=body)

    assert response.status_code == 422, response.text
    assert fragment in response.text


async def test_a_label_of_an_unknown_site_is_a_404(control_plane: ControlPlane) -> None:
    response = await control_plane.admin.put(
        "/api/v1/sites/nowhere/labels/region", json={"value": "eu"}
    )

    assert response.status_code == 404


async def test_fleet_health_counts_only_the_sites_carrying_the_labels(
    control_plane: ControlPlane,
) -> None:
    await _site(control_plane, "paris", region="eu")
    await _site(control_plane, "berlin", region="eu")
    await _site(control_plane, "boston", region="us")

    everything = (await control_plane.admin.get("/api/v1/fleet/health")).json()
    europe = (
        await control_plane.admin.get("/api/v1/fleet/health", params={"label": "region=eu"})
    ).json()
    refused = await control_plane.admin.get("/api/v1/fleet/health", params={"label": "eu"})

    assert sum(everything["sites"].values()) == 3
    assert sum(europe["sites"].values()) == 2
    assert sorted(entry["site"] for entry in europe["attention"]) == ["berlin", "paris"]
    assert refused.status_code == 422
