"""An S3-compatible server for tests: ``moto``'s server (the ``dev`` extra), started on 127.0.0.1.

``moto[server]`` is a pure-Python S3 implementation from PyPI: it installs with pip, needs no
network once installed, no account and no Docker, and starts in about a second - unlike MinIO
(a Go binary outside PyPI) or LocalStack (Docker).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

MISSING = importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None
SKIP_REASON = "needs moto[server] for the S3 test server: pip install -e '.[dev]' (make test installs it)"
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Start ``moto.server`` on a free 127.0.0.1 port; yields its endpoint URL; stops it after."""
    if MISSING:
        pytest.skip(SKIP_REASON)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto.server did not start on 127.0.0.1:{port} (exit {proc.poll()})")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_bucket(endpoint: str, name: str | None = None) -> str:
    """Create a bucket on the test server; returns its name."""
    import boto3

    name = name or f"dm-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, **{"region_name": "us-east-1"}).create_bucket(Bucket=name)
    return name


@contextlib.contextmanager
def s3_env(endpoint: str) -> Iterator[None]:
    """The standard AWS variables pointing at the test server, for this process and its children."""
    old = {k: os.environ.get(k) for k in [*ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update({**ENV, "AWS_ENDPOINT_URL": endpoint})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def plant_holder(run, holder: dict) -> None:
    """Write a lease claim and heartbeat for ``holder`` (epoch 1, its ``token``) into the run store ``run``."""
    import json

    for kind in ("beat", "json"):
        run.write_bytes(f".distmeta-lease/00000001-{holder['token']}.{kind}", json.dumps(holder).encode())
