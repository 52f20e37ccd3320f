"""Item 3: the private Ray distmeta starts is token-authenticated, loopback-only, and refuses a client without the token."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

OWNER = """
import json, os, stat, sys
from distmeta.config import Config
from distmeta.distributed.session import connect
s = connect(Config().ray)
import ray
tok = os.environ["RAY_AUTH_TOKEN_PATH"]
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "dir": s.auth_dir, "token": tok,
                  "dir_mode": stat.S_IMODE(os.stat(s.auth_dir).st_mode), "tok_mode": stat.S_IMODE(os.stat(tok).st_mode),
                  "home_token": os.path.exists(os.path.expanduser("~/.ray/auth_token")),
                  "works": ray.get(ray.remote(lambda: 1).remote())}), flush=True)
sys.stdin.read()
s.close()
"""
STRANGER = """
import sys, ray
try:
    ray.init(address=sys.argv[1], logging_level="error")
    print("CONNECTED", ray.get(ray.remote(lambda: 2).remote()))
except Exception as e:
    print("REFUSED", type(e).__name__)
"""


@pytest.mark.ray
def test_a_local_user_without_the_token_is_refused(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # As `make train` used to run: RAY_AUTH_MODE=disabled in the environment.
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HOME=str(home), PYTHONPATH=str(ROOT))
    owner = subprocess.Popen([sys.executable, "-c", OWNER], env=env, cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(owner.stdout.readline())
        assert info["works"] == 1 and info["gcs"].startswith("127.0.0.1:")
        assert info["dir_mode"] == 0o700 and info["tok_mode"] == 0o600 and Path(info["token"]).parent == Path(info["dir"])
        assert not info["home_token"], "no ~/.ray/auth_token left behind"
        # Clients on this machine of a loopback-only Ray run in Ray's one-machine mode too (else they look for a
        # raylet on the machine's address): refused or admitted by the token alone.
        stranger_env = {**env, "RAY_gcs_server_port_wait_time_s": "2", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        for extra in ({}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
            said = subprocess.run([sys.executable, "-c", STRANGER, info["gcs"]], env={**stranger_env, **extra},
                                  capture_output=True, text=True, timeout=120).stdout
            assert "REFUSED" in said and "CONNECTED" not in said, (extra, said)
        friend = subprocess.run([sys.executable, "-c", STRANGER, info["gcs"]], capture_output=True, text=True,
                                env={**stranger_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": info["token"]},
                                timeout=120).stdout
        assert "CONNECTED 2" in friend, friend
    finally:
        owner.communicate(input="", timeout=120)
    assert not Path(info["dir"]).exists(), "the token directory is removed on close"


LISTENERS = """
import json, os, subprocess
from distmeta.config import Config
from distmeta.distributed.session import connect

def descendants(pid):
    try:
        kids = [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return set()
    return set(kids).union(*(descendants(k) for k in kids))

s = connect(Config().ray)
import ray
ray.get(ray.remote(lambda: 1).remote())
mine = descendants(os.getpid())
ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
addrs = sorted({line.split()[3].rsplit(":", 1)[0] for line in ss if any(f"pid={p}," in line for p in mine)})
s.close()
from ray._private import ray_constants
print(json.dumps({"addrs": addrs, "env_after": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
                  "cluster_mode_after": ray_constants.ENABLE_RAY_CLUSTER}), flush=True)
"""


@pytest.mark.ray
def test_every_process_of_the_private_ray_listens_on_loopback_only(tmp_path):
    """Without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER in the environment (it must not be set globally: it stops
    `ray start --address` on Linux), the private Ray still binds nothing but 127.0.0.1, and the setting is
    gone again once it closes."""
    if not __import__("shutil").which("ss"):
        pytest.skip("needs ss (iproute2) to list listening sockets")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", LISTENERS], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["addrs"] and all(a in ("127.0.0.1", "[::ffff:127.0.0.1]") for a in info["addrs"]), info
    assert info["env_after"] is None and info["cluster_mode_after"] is True, info
