"""A ``distmeta`` process for the fault tests to crash or inspect (run as a script, not collected).

    python cli_child.py MODE [ARG] -- DISTMETA_ARGS...

MODE:
  ``run``            ``distmeta DISTMETA_ARGS`` as the console script would run it.
  ``crash-in-checkpoint STEP``  SIGKILL this process halfway through writing ``optimizer.pt`` of the
                     checkpoint of step STEP (a crash mid-write: half a file on disk, no clean-up).
  ``cases``          DISTMETA_ARGS is one JSON list of argument lists; run ``distmeta`` on each and print
                     one ``RESULT`` JSON line: per case, the exit status, stderr, how many times
                     it called ``ray.init`` and whether Ray is initialised (an actor needs
                     Ray: never initialised = no actor started).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*
from tests.child_process import prepare_environment  # noqa: E402

prepare_environment()  # before Ray or distmeta is imported


def crash_in_checkpoint(step: int) -> None:
    from distmeta.drills.faults import kill_self
    from distmeta.persistence import checkpoint
    from distmeta.persistence.checkpoint import save

    real = save._write_file
    target = checkpoint.TMP_PREFIX + checkpoint.step_dirname(step)

    def write(path, data: bytes) -> None:
        if path.parent.name.startswith(target) and path.name == checkpoint.OPTIMIZER_FILE:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            kill_self()
        real(path, data)

    save._write_file = write


def main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    cut = rest.index("--")
    extra, args = rest[:cut], rest[cut + 1:]
    from distmeta.cli import main as cli

    if mode == "run":
        return cli(args)
    if mode == "crash-in-checkpoint":
        crash_in_checkpoint(int(extra[0]))
        return cli(args)
    if mode == "cases":
        import ray

        inits = []
        real_init = ray.init
        ray.init = lambda *a, **k: (inits.append(1), real_init(*a, **k))[1]  # count every start of / attach to Ray
        out = []
        for case in json.loads(args[0]):
            err, before = io.StringIO(), len(inits)
            with contextlib.redirect_stderr(err):
                try:
                    rc = cli(case)
                except SystemExit as e:  # argparse
                    rc = e.code
            out.append({"rc": rc, "stderr": err.getvalue(), "ray_inits": len(inits) - before, "ray_initialized": ray.is_initialized()})
        print("RESULT " + json.dumps(out), flush=True)
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
