"""A small fleet for access tests: two sites, an agent and a stored file in each, a group, and
one bearer token per kind of caller (built through the API, as a support engineer would)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.control_plane.harness import ADMIN_TOKEN, ControlPlane, post_ingest
from tests.control_plane.instances import new_uid, part10

SITE_A = "hospital-a"
SITE_B = "hospital-b"
GROUP = "neuro"


@dataclass(frozen=True)
class Caller:
    """One kind of caller: its token, its role and the site it is bound to (if any)."""

    name: str
    token: str
    role: str
    site: str | None


@dataclass(frozen=True)
class World:
    """What the access tests address: per site its agent id and a file id; callers by name."""

    callers: dict[str, Caller]
    agent_ids: dict[str, str]
    file_ids: dict[str, str]
    session_ids: dict[str, str]
    spare_session_ids: dict[str, str]
    spare_token_id: str


async def create_token(cp: ControlPlane, **body: Any) -> dict[str, Any]:
    """POST /api/v1/tokens as the admin; the answer (with the token) as JSON."""
    response = await cp.admin.post("/api/v1/tokens", json=body)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def build_world(cp: ControlPlane) -> World:
    """Create the sites, agents, files, group and tokens of the access tests."""
    created = await cp.admin.post("/api/v1/groups", json={"id": GROUP, "label": "Neuro"})
    assert created.status_code == 201, created.text
    agent_tokens, agent_ids, file_ids = {}, {}, {}
    session_ids: dict[str, str] = {}
    spare_session_ids: dict[str, str] = {}
    for site in (SITE_A, SITE_B):
        token = await cp.register_agent(site=site, name="agent-1")
        agent_tokens[site] = token
        listed = (await cp.admin.get(f"/api/v1/sites/{site}/agents")).json()["items"]
        agent_ids[site] = listed[0]["id"]
        sop = new_uid()
        async with cp.client(token) as agent:
            # A session of its own per site: the store files a session under the site that
            # first sent it.
            stored = await post_ingest(
                agent,
                part10(sop, series_instance_uid=new_uid()),
                sop_instance_uid=sop,
                subject=f"SUBJ-{site}",
                session=f"SESSION-{site}",
            )
            assert stored.status_code == 200, stored.text
            # A second session per site, for the routes that delete one.
            spare_sop = new_uid()
            spare = await post_ingest(
                agent,
                part10(spare_sop, series_instance_uid=new_uid()),
                sop_instance_uid=spare_sop,
                subject=f"SUBJ-{site}",
                session=f"SPARE-{site}",
            )
            assert spare.status_code == 200, spare.text
        file_ids[site] = stored.json()["file_id"]
        listing = await cp.admin.get("/api/v1/acquisitions", params={"subject": f"SUBJ-{site}"})
        for acquisition in listing.json()["items"]:
            kept = acquisition["session"] == f"SESSION-{site}"
            (session_ids if kept else spare_session_ids)[site] = acquisition["session_id"]
    callers = {
        "admin": Caller("admin", ADMIN_TOKEN, "support", None),
        "agent": Caller("agent", agent_tokens[SITE_A], "agent", SITE_A),
    }
    for name, body in {
        "support": {"role": "support"},
        "site-admin": {"role": "site-admin", "site": SITE_A},
        "read-only": {"role": "read-only"},
        "read-only-site": {"role": "read-only", "site": SITE_A},
    }.items():
        answer = await create_token(cp, name=f"test {name}", **body)
        callers[name] = Caller(name, answer["token"], body["role"], body.get("site"))
    spare = await create_token(cp, name="spare", role="read-only")
    return World(
        callers=callers,
        agent_ids=agent_ids,
        file_ids=file_ids,
        session_ids=session_ids,
        spare_session_ids=spare_session_ids,
        spare_token_id=spare["id"],
    )
