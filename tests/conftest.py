"""Shared fixtures: policies built from the shipped default, and the log watcher."""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from policymilter import resources, state
from policymilter.logs import LOGGER
from policymilter.policy import load_policy
from policymilter.policy.model import Policy

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = REPO / "policies"
# Overrides that turn off every check needing a network service (DNS, clamd, spamd), for
# tests of other things; those checks have their own tests against the real services.
OFFLINE = ("spf.enabled=false", "dkim.enabled=false", "arc.enabled=false", "dmarc.enabled=false",
           "antivirus.enabled=false", "spam.enabled=false")


class LogWatch(logging.Handler):
    """Collects the milter's log records; unexpected warnings fail the test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.expected: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "event", None) == name]

    def fields(self, name: str) -> list[dict]:
        return [dict(getattr(r, "fields", {})) for r in self.events(name)]

    def expect(self, *events: str) -> None:
        """Declare warning/error events this test provokes on purpose."""
        self.expected.update(events)

    def unexpected(self) -> list[logging.LogRecord]:
        return [r for r in self.records
                if r.levelno >= logging.WARNING and getattr(r, "event", None) not in self.expected]


SHIPPED_STORE = "sqlite:/var/lib/policy-milter/"


@pytest.fixture(autouse=True, scope="session")
def private_state_stores() -> Iterator[None]:
    """Tests that run the shipped policy in this process (pipelines, the adapter) get a fresh
    SQLite store per loaded policy in a temporary directory, never the host's
    /var/lib/policy-milter: counts must not carry from one test (or run) to the next. Milters
    the integration tests start get theirs from MailStack.start_milter."""
    directory = tempfile.TemporaryDirectory(prefix="policy-milter-state-")
    os.chmod(directory.name, 0o1777)  # check-policy --user policy-milter judges it as that user
    numbers = itertools.count(1)
    shipped = resources.open_store

    def private(url: str, timeout: float = 2.0) -> state.Store:
        if url.startswith(SHIPPED_STORE):
            url = f"sqlite:{directory.name}/state-{next(numbers)}.db"
        return shipped(url, timeout)

    resources.open_store = private  # type: ignore[assignment]
    try:
        yield
    finally:
        resources.open_store = shipped  # type: ignore[assignment]
        directory.cleanup()


@pytest.fixture(autouse=True)
def logwatch() -> Iterator[LogWatch]:
    logger = logging.getLogger(LOGGER)
    handler = LogWatch()
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        # a CLI test may have installed the milter's own stderr handler: drop it with the test
        for owned in [h for h in logger.handlers if getattr(h, "policymilter_owned", False)]:
            logger.removeHandler(owned)
    bad = handler.unexpected()
    if bad:
        lines = "\n".join(f"{r.levelname} {getattr(r, 'event', '')}: {r.getMessage()}" for r in bad)
        pytest.fail(f"unexpected warnings or errors were logged:\n{lines}")


@pytest.fixture(scope="session")
def default_policy() -> Policy:
    return load_policy(DEFAULT_POLICY).policy
