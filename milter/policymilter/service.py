"""Wiring: the policy in force, reloads, and the count of open sessions and transactions."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from policymilter import metrics
from policymilter.admission import Admission
from policymilter.checks import ALWAYS, REGISTRY, requirement_issues
from policymilter.conversation import Conversation
from policymilter.facts import Session
from policymilter.logs import LOGGER, SessionLog, WarnOnce, event
from policymilter.policy import LoadedPolicy, PolicyError, load_policy
from policymilter.policy.model import SigningKey
from policymilter.resources import store_consequence
from policymilter.snapshot import Snapshot, snapshot_for

# The registry and snapshots are re-exported: tests and tools build services from them.
__all__ = ["ALWAYS", "REGISTRY", "Service", "Snapshot", "load_checked", "load_snapshot", "snapshot_for"]


def load_checked(path: str | Path, overrides: Sequence[str] = ()) -> LoadedPolicy:
    """The policy, validated with the rules the checks bring (what each requires)."""
    return load_policy(path, overrides, rules=(requirement_issues,))


def load_snapshot(path: str | Path, overrides: Sequence[str] = (), generation: int = 1,
                  previous: Snapshot | None = None) -> Snapshot:
    loaded = load_checked(path, overrides)
    return snapshot_for(loaded.policy, loaded.files, generation, previous=previous)


def unusable_keys(snapshot: Snapshot) -> list[tuple[str, SigningKey, str]]:
    """(domain, key, why) for every signing key the snapshot could not load."""
    keys = snapshot.resources.keys if snapshot.resources else {}
    return [(domain, key, problem) for domain, entries in keys.items() for key, _, problem in entries if problem]


class Service:
    """What every connection shares: the current policy snapshot and the counters."""

    def __init__(self, path: str | Path, overrides: Sequence[str] = (),
                 snapshot: Snapshot | None = None, loaded: LoadedPolicy | None = None) -> None:
        """`loaded`: the policy already validated (by `run`, as root, before binding); only its
        resources are read here, by the user every reload will read them as."""
        self.path = Path(path)
        self.overrides = tuple(overrides)
        if snapshot is None:
            snapshot = (snapshot_for(loaded.policy, loaded.files) if loaded is not None
                        else load_snapshot(self.path, self.overrides))
        self.snapshot = snapshot
        self.warn_once = WarnOnce()
        self.log = logging.getLogger(LOGGER)
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self.sessions = 0
        self.transactions = 0
        self.messages = 0  # transactions ended in this process
        self.admission = Admission(snapshot.policy.site.max_concurrent_messages)  # this process's turns
        # Set on a graceful stop: new transactions get 451 4.3.2, open ones finish.
        self.draining = threading.Event()
        # In a worker process (daemon.py): its number, which prefixes connection ids so they
        # stay unique across workers, and what to call after each transaction (recycling).
        self.worker: int | None = None
        self.on_transaction_end: Callable[[int], None] | None = None
        self._report_unusable_keys()
        self._report_store()
        metrics.policy_loaded(self.snapshot)

    def _report_unusable_keys(self) -> None:
        # Logged when the policy is put in force, not only when a message from the domain
        # arrives: the admin who just started or reloaded sees what to fix at once.
        on_missing = self.snapshot.policy.signing.on_missing_key
        for domain, key, problem in unusable_keys(self.snapshot):
            event(self.log, logging.WARNING, "key_unusable",
                  f"signing key for {domain} (selector {key.selector}) cannot be used: {problem}; mail from "
                  f"{domain} gets signing.on_missing_key = {on_missing}",
                  domain=domain, selector=key.selector, key_file=key.key_file)

    def _report_store(self) -> None:
        """Said at start and at each reload, not first when mail arrives: with on_store_error =
        accept the limits would otherwise be off unnoticed."""
        store = self.snapshot.resources.store
        problem = store.problem() if store is not None else None
        if store is not None and problem:
            action = self.snapshot.policy.ratelimit.on_store_error
            event(self.log, logging.WARNING, "store_unusable",
                  f"the state store (state.store) {store.url} cannot be used: {problem}; until it can, "
                  f"{store_consequence(self.snapshot.policy)}", store=store.url, action=action)

    def reload(self, announce: bool = True) -> bool:
        """Load the policy again; on any error keep the old one and log every problem.

        `announce` False (a worker following its parent's reload): success is logged at debug
        level only, so an operator reads one `reloaded` line per reload, not one per worker."""
        try:
            # The DNS cache survives the reload when the servers and cache settings stay the same.
            snapshot = load_snapshot(self.path, self.overrides, self.snapshot.generation + 1, previous=self.snapshot)
        except PolicyError as error:
            for issue in error.issues:
                event(self.log, logging.ERROR, "reload_error", str(issue))
            event(self.log, logging.ERROR, "reload_failed",
                  f"policy {self.path} has {len(error.issues)} error(s): keeping generation "
                  f"{self.snapshot.generation} in force", errors=len(error.issues))
            if announce:
                metrics.reloaded(False)
            return False
        except Exception:  # a bug in loading must never take the control thread down
            event(self.log, logging.ERROR, "reload_failed", f"reloading {self.path} failed unexpectedly: keeping "
                  f"generation {self.snapshot.generation} in force", exc_info=True)
            if announce:
                metrics.reloaded(False)
            return False
        # One reference swap: a connection that already started keeps its own snapshot.
        self.snapshot = snapshot
        self.admission.limit = snapshot.policy.site.max_concurrent_messages
        event(self.log, logging.INFO if announce else logging.DEBUG, "reloaded", f"policy {self.path} loaded",
              generation=snapshot.generation, files=",".join(snapshot.files))
        if announce:
            self._report_unusable_keys()
            self._report_store()
            metrics.reloaded(True)
            metrics.policy_loaded(snapshot)
        return True

    def open_conversation(self, new_session: Callable[[str], Session]) -> Conversation:
        """Start a session's Conversation; `new_session` builds its Session from a new connection id."""
        number = next(self._ids)
        session = new_session(f"{self.worker}.{number}" if self.worker is not None else str(number))
        with self._lock:
            self.sessions += 1
        metrics.session_opened()
        return Conversation(self.snapshot, session, self.warn_once, SessionLog(session.conn_id),
                            admission=self.admission)

    def session_closed(self) -> None:
        with self._lock:
            self.sessions -= 1
            self._lock.notify_all()
        metrics.session_closed()

    def transaction_started(self) -> None:
        with self._lock:
            self.transactions += 1
        metrics.transaction_started()

    def transaction_ended(self) -> None:
        with self._lock:
            self.transactions -= 1
            self.messages += 1
            messages = self.messages
            self._lock.notify_all()
        metrics.transaction_ended()
        if self.on_transaction_end is not None:
            self.on_transaction_end(messages)

    def drain(self, timeout: float) -> bool:
        """Wait until no transaction is in flight; True if drained within `timeout` seconds.

        Between transactions a session can be cut safely: Postfix answers its next MAIL with
        milter_default_action (tempfail), so the client retries and nothing is lost.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.transactions > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True
