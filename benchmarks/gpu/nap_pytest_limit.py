"""pytest plugin of ``benchmarks/gpu/run.sh`` (``-p nap_pytest_limit``): the pytest phase's time
limit ends the session the way Ctrl-C does, so the results so far are reported and the JUnit
XML is written.

* ``NAP_PYTEST_DEADLINE`` (Unix time): no test starts after it; the session stops after the
  test that is running ("Interrupted: ..." with what ran).
* SIGTERM (``timeout``'s signal, the backstop) raises KeyboardInterrupt; SIGINT is restored to
  Python's handler even where a non-interactive parent left it ignored.
* ``NAP_PYTEST_COLLECTED``: a file that receives the number of tests selected, so a stopped
  run can say how many did not run.
"""

from __future__ import annotations

import os
import signal
import time


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}: benchmarks/gpu/run.sh's time limit")


def pytest_configure(config):
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_finish(session):
    path = os.environ.get("NAP_PYTEST_COLLECTED")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f"{len(session.items)}\n")


def pytest_runtest_logfinish(nodeid, location):
    deadline = os.environ.get("NAP_PYTEST_DEADLINE")
    if deadline and time.time() > float(deadline):
        _SESSION[0].shouldstop = "benchmarks/gpu/run.sh: the pytest phase's time limit was reached"


_SESSION = [None]


def pytest_sessionstart(session):
    _SESSION[0] = session
