"""The daemon says so when it runs as root or listens where other hosts can reach it."""

from __future__ import annotations

import logging
import os

import pytest

from policymilter.daemon import _warn_exposed
from policymilter.logs import LOGGER


@pytest.mark.parametrize(("spec", "exposed"), [
    ("inet:8891@0.0.0.0", True), ("inet:8891", True), ("inet6:8891@[::]", True), ("inet:8891@192.0.2.1", True),
    ("inet:8891@127.0.0.1", False), ("inet:8891@localhost", False), ("inet6:8891@[::1]", False),
    ("unix:/run/policy-milter/milter.sock", False),
])
def test_a_socket_other_hosts_can_reach_is_warned_about(logwatch, spec, exposed):
    logwatch.expect("socket_exposed", "running_as_root")
    _warn_exposed(spec, logging.getLogger(LOGGER))
    assert bool(logwatch.events("socket_exposed")) is exposed
    assert bool(logwatch.events("running_as_root")) is (os.getuid() == 0)
