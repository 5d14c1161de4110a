"""Test helper for tests/test_multihost.py: logs the files this Python process writes.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; the test puts this directory there
only for the training processes it starts. With ``VPGC_WRITE_AUDIT=DIR`` set, an audit hook
(PEP 578) appends to ``DIR/writes-<JAX_PROCESS_ID>.txt`` the absolute path of every file opened for
writing and every rename target, so the test can tell which process of a job wrote what.
"""

import os
import sys


def _install(directory: str) -> None:
    rank = os.environ.get("JAX_PROCESS_ID", "0")
    log = open(os.path.join(directory, f"writes-{rank}.txt"), "a", buffering=1)  # noqa: SIM115
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                writes = any(c in mode for c in "wax+")
            else:
                writes = bool(flags & write_flags)
        elif event == "os.rename":
            path, writes = args[1], True
        else:
            return
        if writes and isinstance(path, (str, bytes, os.PathLike)):
            log.write(os.path.abspath(os.fsdecode(path)) + "\n")

    sys.addaudithook(hook)


if os.environ.get("VPGC_WRITE_AUDIT"):
    _install(os.environ["VPGC_WRITE_AUDIT"])
