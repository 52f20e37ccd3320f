"""Fixtures for the runtime tests: an S3 server (moto, the ``dev`` extra) and a fresh bucket on it."""
from __future__ import annotations

import pytest

from tests.persistence.s3server import make_bucket, s3_env, s3_server


@pytest.fixture(scope="module")
def endpoint():
    """The URL of an S3-compatible server on 127.0.0.1, with the AWS environment pointing at it."""
    with s3_server() as url, s3_env(url):
        yield url


@pytest.fixture
def bucket(endpoint, tmp_path, monkeypatch) -> str:
    """A new bucket, with a private distmeta cache and a short lease settle for this test."""
    monkeypatch.setenv("DISTMETA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DISTMETA_LEASE_SETTLE", "0.1")
    return make_bucket(endpoint)
