"""The box's object storage: ``moto``'s S3 server on the head's address, with one bucket, ``distmeta``.

Every node's environment points ``AWS_ENDPOINT_URL`` at it with the test credentials below,
so ``run.dir=s3://distmeta/...`` works on any node as it would against a real bucket.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from clusterbox import net

PORT = 9000
BUCKET = "distmeta"
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
_MAKE_BUCKET = (
    "import boto3, time\n"
    "for _ in range(300):\n"
    "    try:\n"
    f"        boto3.client('s3').create_bucket(Bucket={BUCKET!r}); break\n"
    "    except Exception:\n"
    "        time.sleep(0.1)\n"
    "else:\n"
    "    raise SystemExit('S3 server did not answer')\n")


def start(popen: Callable[..., subprocess.Popen], run: Callable[..., subprocess.CompletedProcess],
          address: str) -> subprocess.Popen:
    """Start the server on the head (``popen``/``run`` run a command there) and make the bucket.

    Args:
        popen: starts a command on the head.
        run: runs a command on the head to completion.
        address: the head's address, where the server listens.

    Returns:
        The server's process (SIGSTOP / SIGCONT it to take storage away and give it back).
    """
    proc = popen("head", [sys.executable, "-m", "moto.server", "-H", address, "-p", str(PORT)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    made = run("head", [sys.executable, "-c", _MAKE_BUCKET], timeout=120)
    if made.returncode != 0:
        raise net.NetError(f"S3 server on the head did not start: {made.stderr[-2000:]}")
    return proc
