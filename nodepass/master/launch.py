"""``python -m nodepass.master.launch PARENT_PID [--url-argument] PROGRAM [ARG...]``: start an
instance.

The master spawns every instance through this launcher (master spec §9.1, §17 a21).  It
puts itself in a new process group, asks Linux to send it SIGKILL when the master dies
(``PR_SET_PDEATHSIG``), checks that the master is still its parent (the master may have died
between the fork and the ``prctl``), then replaces itself with ``PROGRAM`` through
``os.execv``: no shell and no ``PATH`` lookup.  The process group and the death signal
survive the ``execv``, and so does the environment, which carries the instance URL.

With ``--url-argument`` the URL moves from the environment to the program's last argument,
the command line the Go master gives its children (for a core program that only reads its
argument, such as the Go ``nodepass`` binary; the key is then visible in the process list,
as it is under the Go master).

Only the standard library is imported, to keep the extra start-up short.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

#: From ``<linux/prctl.h>``.
PR_SET_PDEATHSIG = 1

#: Exit status when the launcher cannot run the program (as a shell does).
EXIT_CANNOT_RUN = 127


def _deathSignal(signum: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


URL_VARIABLE = "NP_INSTANCE_URL"
URL_ARGUMENT = "--url-argument"


def main(argv: Sequence[str]) -> int:
    urlArgument = len(argv) > 1 and argv[1] == URL_ARGUMENT
    if urlArgument:
        argv = [argv[0], *argv[2:]]
    if len(argv) < 2 or not argv[0].isdigit():
        sys.stderr.write(
            "usage: python -m nodepass.master.launch PARENT_PID [--url-argument] PROGRAM [ARG...]\n"
        )
        return 2
    parent = int(argv[0])
    program = list(argv[1:])
    if urlArgument:
        url = os.environ.pop(URL_VARIABLE, "")
        if not url:
            sys.stderr.write(f"Error: {URL_VARIABLE} is not set\n")
            return 2
        program.append(url)
    try:
        os.setpgid(0, 0)
        _deathSignal(signal.SIGKILL)
    except OSError as error:
        sys.stderr.write(f"Error: cannot prepare the instance process: {error}\n")
        return EXIT_CANNOT_RUN
    if os.getppid() != parent:
        # The master is already gone: the death signal would never come.
        return EXIT_CANNOT_RUN
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(program[0], program)
    except OSError as error:
        sys.stderr.write(f"Error: cannot run {program[0]}: {error}\n")
    return EXIT_CANNOT_RUN


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
