"""Autobahn|Testsuite fuzzingserver, bound to 127.0.0.1 only.

Runs under the Python 2.7 environment that ``tests/autobahn/run`` builds
(autobahntestsuite is Python-2-only); kept Python-3-parsable so linters and
pytest collection of the tree never choke on it.

Usage: python2.7 fuzzingserver.py SPEC.json

Plain ``wstest -m fuzzingserver`` listens on every interface. Its listener is
``autobahntestsuite.fuzzing.listenWS`` (imported from autobahn); wrap it so the
``interface`` is always 127.0.0.1, then hand over to wstest's own command line
(``-u 0``: no embedded web server on :8080).
"""

from __future__ import print_function

import sys

LOCALHOST = "127.0.0.1"


def die_with_parent():
    """Linux: SIGTERM this server when the ``run`` script dies, even by SIGKILL (no orphans)."""
    try:
        import ctypes
        import os
        import signal

        parent = os.getppid()
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    except Exception:  # not Linux / no libc: the run script's trap still stops us
        pass


def main(argv):
    if len(argv) != 2:
        print("usage: fuzzingserver.py SPEC.json", file=sys.stderr)
        return 2
    die_with_parent()
    import autobahntestsuite  # noqa: F401  (package first: wstest imports "fuzzing" relatively)
    import autobahntestsuite.fuzzing as fuzzing

    listen = fuzzing.listenWS

    def listen_localhost(factory, contextFactory=None, backlog=50, interface=LOCALHOST):
        return listen(factory, contextFactory, backlog, LOCALHOST)

    fuzzing.listenWS = listen_localhost

    import autobahntestsuite.wstest as wstest

    sys.argv = ["wstest", "-m", "fuzzingserver", "-s", argv[1], "-u", "0"]
    wstest.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
