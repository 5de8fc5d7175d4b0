"""A real S3 API on loopback for tests: moto's server (`moto[server]`), on a free port of
127.0.0.1, with one versioned bucket; stopped when the context ends.

`env` holds the standard AWS_* variables that point obstore (and so the control plane's
`--blob-url`) at it; moto accepts any credentials.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running S3 server and the bucket made for the test."""

    endpoint: str
    bucket: str
    env: dict[str, str]

    def url(self, prefix: str) -> str:
        """The `--blob-url` of `prefix` in the bucket."""
        return f"s3://{self.bucket}/{prefix}"

    def client(self) -> Any:
        """A boto3 S3 client of the server, to look behind the control plane's back."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def versions(self, key: str) -> int:
        """How many versions of `key` the bucket holds (a rewrite adds one)."""
        answer = self.client().list_object_versions(Bucket=self.bucket, Prefix=key)
        return sum(1 for version in answer.get("Versions", []) if version["Key"] == key)

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix`, sorted."""
        answer = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in answer.get("Contents", []))


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start moto's S3 server on 127.0.0.1 (port 0), make a versioned bucket, stop it after."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "test-access-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret-key",
        }
        s3 = S3Server(endpoint, f"blobs-{secrets.token_hex(4)}", env)
        client = s3.client()
        client.create_bucket(Bucket=s3.bucket)
        client.put_bucket_versioning(
            Bucket=s3.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        yield s3
    finally:
        server.stop()
