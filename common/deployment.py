"""What an agent's deployment kind demands of its site config.

The admin guide: connectors running in a cluster take DICOM over networks the site does not
own, so they use mutual TLS and PUSH only. An in-cluster agent refuses a config that breaks
this (answering `config_result` failed with the reason), and the control plane refuses to
store one for a site whose agents are all in-cluster (HTTP 422 with the same reason).

Imports `common` only.
"""

from __future__ import annotations

from common.config import SiteConfig

__all__ = ["IN_CLUSTER", "in_cluster_problems"]

IN_CLUSTER = "in-cluster"


def in_cluster_problems(config: SiteConfig) -> list[str]:
    """Why an in-cluster agent cannot run `config`, one sentence per problem; [] if it can."""
    problems = []
    tls = config.dicom.tls
    if tls is None:
        problems.append(
            "dicom.tls: in-cluster connectors accept DICOM over mutual TLS only; set "
            "dicom.tls {cert, key, ca, require_client_cert: true}"
        )
    elif not tls.require_client_cert:
        problems.append(
            "dicom.tls.require_client_cert: in-cluster connectors use mutual TLS; set it to true"
        )
    if config.mode == "pull":
        problems.append(
            "mode: in-cluster connectors receive (push) only; use mode: push and have the "
            "PACS send to the connector, or run an edge agent for pull"
        )
    return problems
