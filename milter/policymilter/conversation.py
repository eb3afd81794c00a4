"""One SMTP session as the policy sees it, fed by the milter adapter or by `explain`.

The adapter translates callbacks and macros into calls here, and Verdicts back into milter
replies; this class holds Session, Envelope and Message, runs the pipeline and writes the
summary line. Nothing here knows pymilter.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace
from typing import Any

from policymilter import authresults, listeners, metrics
from policymilter.admission import Admission
from policymilter.facts import MACRO_SOURCES, Callback, Envelope, Session, strip_brackets
from policymilter.listeners import ListenerMatch
from policymilter.logs import SUMMARY_KEYS, SUMMARY_TAIL, SessionLog, WarnOnce, event
from policymilter.message import Message
from policymilter.outcome import Action, CheckResult, Disposition, ErrorAction, SmtpReply, Verdict, decide
from policymilter.pipeline import CheckContext, Stage, error_verdict
from policymilter.policy.model import CHECK_NAMES
from policymilter.snapshot import Snapshot

# RFC 3463 4.3.2: system not accepting network messages (we are stopping; the sender retries).
SHUTTING_DOWN = Verdict(Disposition.TEMPFAIL, SmtpReply("451", "4.3.2", "Mail filter restarting: please try again "
                                                                       "in a minute"),
                        decided_by="milter", reason="shutting down")
# RFC 3463 4.3.2 as well: this worker has all the messages it can check at once (admission.py).
BUSY = SmtpReply("451", "4.3.2", "Too busy to check this message now: please try again later")


# How Postfix names the stage a macro list belongs to (main.cf milter_<stage>_macros).
STAGE_WORDS = {Callback.CONNECT: "connect", Callback.HELLO: "helo", Callback.ENVFROM: "mail",
               Callback.EOM: "end of data"}


class Conversation:
    """Policy state of one SMTP session (one per connection, one thread at a time)."""

    def __init__(self, snapshot: Snapshot, session: Session, warn_once: WarnOnce | None = None,
                 log: SessionLog | None = None, listener: ListenerMatch | None = None,
                 admission: Admission | None = None) -> None:
        # The connection keeps the policy it started with, even across a reload.
        self.snapshot = snapshot
        self.session = session
        self.log = log or SessionLog(session.conn_id)
        self.warn_once = warn_once or WarnOnce()
        self.admission = admission or Admission(snapshot.policy.site.max_concurrent_messages)
        self.listener: ListenerMatch = listener or listeners.resolve(snapshot.policy, session)
        self.envelope: Envelope | None = None
        self.message: Message | None = None
        self.results: list[CheckResult] = []
        self.refused_rcpt: Verdict | None = None  # the first recipient refused in this transaction
        self.logged = False  # this transaction's summary line is written
        self.started = 0.0
        self.failure: Verdict | None = None  # an error in a no-reply callback, answered later
        self.session_failure: Verdict | None = None

    # --- session events -----------------------------------------------------------------

    def connected(self) -> None:
        self._warn_missing(Callback.CONNECT)
        if not self.listener.known:
            self.warn_once(
                self.log, ("listener", str(self.session.daemon_name), str(self.session.daemon_port)),
                "unknown_listener",
                f"no listener matches daemon_name={self.session.daemon_name} port={self.session.daemon_port}: "
                "this session gets the strictest profile; add a [listeners.NAME] table to the policy, or set "
                "`-o milter_macro_daemon_name=NAME` on this service in master.cf",
                daemon_name=self.session.daemon_name, port=self.session.daemon_port,
            )
        elif self.session.daemon_name and self.session.daemon_name == self.session.mta_name:
            # Postfix sends {daemon_name} = $myhostname unless master.cf overrides it.
            self.warn_once(
                self.log, ("daemon_name_default", self.listener.name), "daemon_name_is_hostname",
                f"{{daemon_name}} is the host name {self.session.daemon_name!r}, so listener {self.listener.name} "
                "was matched by port only: set `-o milter_macro_daemon_name=NAME` on each smtpd service "
                "in master.cf",
                listener=self.listener.name,
            )

    def update(self, session: Session) -> None:
        self.session = session

    def _warn_missing(self, callback: Callback) -> None:
        depends = {"{daemon_name}"}
        if any(listener.ports for listener in self.snapshot.policy.listeners.values()):
            depends.add("{daemon_port}")
        if callback is Callback.ENVFROM:
            depends = {"{mail_addr}"}
        for macro in sorted(self.session.missing_macros & depends):
            source, parameter = MACRO_SOURCES[macro]
            extra = ""
            if macro == "{mail_addr}":
                extra = (" (the MTA sent none of the MAIL-stage macros the milter asked for, so "
                         "{auth_authen} and {auth_type} may be missing and authenticated clients look "
                         "anonymous)")
            self.warn_once(
                self.log, ("macro", self.listener.name, macro), "macro_missing",
                f"the MTA did not send macro {macro} at {STAGE_WORDS[source]} on listener {self.listener.name}{extra}: "
                f"add it to {parameter} in Postfix's main.cf",
                macro=macro, listener=self.listener.name, parameter=parameter,
            )

    # --- transaction events ---------------------------------------------------------------

    def mail(self, session: Session, mail_from: str, params: tuple[str, ...] = (),
             draining: bool = False) -> Verdict:
        self.session = session
        self.begin(mail_from, params)
        self._warn_missing(Callback.ENVFROM)
        if draining:
            return self._finish(SHUTTING_DOWN, Stage.MAIL)
        if self.session_failure:
            return self._finish(self.session_failure, Stage.MAIL)
        verdict = self._run(Stage.MAIL)
        return self._finish(decide(self.results), Stage.MAIL) if verdict.stops else verdict

    def begin(self, mail_from: str, params: tuple[str, ...] = ()) -> None:
        """A new transaction: forget the last one's envelope, message and results."""
        self.reset()
        self.started = time.perf_counter()
        self.envelope = Envelope(strip_brackets(mail_from), tuple(params), txn_id=uuid.uuid4().hex)

    def rcpt(self, rcpt: str, queue_id: str | None = None) -> Verdict:
        """One recipient: the RCPT checks (the rate limits) see the envelope with it; a recipient
        they refuse is refused alone, and is not part of the transaction."""
        if self.envelope is None or self.failure or self.session_failure:
            return Verdict()
        before = self.envelope
        self.envelope = before.with_rcpt(strip_brackets(rcpt)).with_queue_id(queue_id)
        verdict = self._run(Stage.RCPT, keep=False)
        if verdict.stops:
            # Refused alone: neither the recipient nor its refusal is part of the transaction.
            self.envelope = before.with_queue_id(queue_id)
            self.refused_rcpt = self.refused_rcpt or verdict
        else:
            self.results.extend(verdict.results)
        return verdict

    def data(self, queue_id: str | None) -> None:
        if self.envelope is not None:
            self.envelope = self.envelope.with_queue_id(queue_id)
        self.message = self._new_message()

    def header(self, name: str, value: bytes) -> None:
        if self.message is None:
            self.message = self._new_message()
        self.message.add_header(name, value)

    def body(self, chunk: bytes) -> None:
        if self.message is None:
            self.message = self._new_message()
        self.message.write_body(chunk)

    def _new_message(self) -> Message:
        limit = self.snapshot.policy.site.max_message_size
        return Message(cap=limit or None)

    def end_of_message(self, queue_id: str | None) -> Verdict:
        if self.envelope is None:
            self.envelope = Envelope()
        self.envelope = self.envelope.with_queue_id(queue_id)
        if self.message is None:
            self.message = Message()
        if self.failure or self.session_failure:
            verdict = self.failure or self.session_failure
            assert verdict is not None
            return self._finish(verdict, Stage.EOM)
        site = self.snapshot.policy.site
        with self.admission.turn(site.queue_timeout) as admitted:
            if not admitted:
                return self._finish(Verdict(
                    Disposition.TEMPFAIL, BUSY, decided_by="milter",
                    reason=f"busy: {self.admission.limit} messages in progress in this worker for "
                           f"{site.queue_timeout:g} s (site.max_concurrent_messages)"), Stage.EOM)
            self._run(Stage.EOM)
            return self._finish(decide(self.results), Stage.EOM, headers=True)

    def abort(self) -> None:
        self.reset()

    def reset(self) -> None:
        """The transaction is over (ended, aborted, cut, or a new MAIL FROM)."""
        if self.envelope is not None:
            if not self.logged and self.refused_rcpt is not None and not self.envelope.rcpts:
                # Every recipient was refused: no end of message comes; this is its summary line.
                self.results.extend(self.refused_rcpt.results)
                self.log_summary(self.refused_rcpt, Stage.RCPT)
            self.snapshot.pipeline.finish(self.context(), self.log)
        if self.message is not None:
            self.message.close()
        self.envelope = None
        self.message = None
        self.results = []
        self.refused_rcpt = None
        self.logged = False
        self.failure = None

    def close(self) -> None:
        self.reset()

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None

    # --- failures ---------------------------------------------------------------------------

    def crashed(self, where: Callback, error: BaseException, *, replies: bool, mail_from: str | None = None
                ) -> Verdict:
        """An unexpected exception in a callback (`where`), outside the checks: log it once, and
        the listener's error action. A callback that cannot reply keeps it for the next that can;
        MAIL FROM and end of message log their summary line (an accept at MAIL FROM lets the
        transaction go on, and its end of message logs it)."""
        if mail_from is not None and self.envelope is None:
            self.begin(mail_from)
        verdict = self._crash_verdict(where, error, deferred=not replies)
        stage = {Callback.ENVFROM: Stage.MAIL, Callback.EOM: Stage.EOM}.get(where)
        refused_at_mail = stage is Stage.MAIL and verdict.disposition is not Disposition.ACCEPT
        if replies and stage is not None and (stage is Stage.EOM or refused_at_mail):
            return self._finish(verdict, stage)
        return verdict

    def _crash_verdict(self, where: Callback, error: BaseException, *, deferred: bool) -> Verdict:
        if deferred and self.failure is not None:
            return self.failure  # this transaction already failed and was logged
        event(self.log, logging.ERROR, "callback_crashed", f"{where} raised {error!r}", exc_info=True,
              callback=where, listener=self.listener.name)
        action = self.listener.settings.on_error
        disposition, reply = error_verdict(action)
        verdict = Verdict(disposition, reply, decided_by="milter", reason=f"{where}: {type(error).__name__}")
        if action is ErrorAction.ACCEPT:
            return self._accepted_unchecked(verdict) if where is Callback.EOM else verdict
        if where in (Callback.CONNECT, Callback.HELLO):
            self.session_failure = verdict
        elif deferred:
            self.failure = verdict
        return verdict

    def _accepted_unchecked(self, verdict: Verdict) -> Verdict:
        """The site accepts what it could not check (on_error = accept), but results forged with
        our authserv-id must still go: readers would take them for ours. If even that fails,
        the message cannot be let through: tempfail."""
        try:
            removals = authresults.forged(self.message, self.snapshot.policy.site.authserv_id) if self.message else ()
        except Exception as error:  # whatever broke the checks may break this too
            event(self.log, logging.ERROR, "callback_crashed", f"removing forged results raised {error!r}",
                  exc_info=True, callback=Callback.EOM, listener=self.listener.name)
            disposition, reply = error_verdict(ErrorAction.TEMPFAIL)
            return Verdict(disposition, reply, decided_by="milter", reason=f"{verdict.reason}; forged results")
        return replace(verdict, actions=removals)

    # --- internals --------------------------------------------------------------------------

    def context(self) -> CheckContext:
        return CheckContext(self.snapshot.policy, self.listener, self.session, self.envelope or Envelope(),
                            self.message, self.snapshot.resolver, None, tuple(self.results),
                            self.snapshot.resources)

    def _run(self, stage: Stage, keep: bool = True) -> Verdict:
        verdict = self.snapshot.pipeline.run(stage, self.context(), self.log)
        if keep:
            self.results.extend(verdict.results)
        for result in verdict.results:
            for notice in result.notices:
                event(self.log, notice.level, notice.name, notice.message, **dict(notice.fields))
        return verdict

    def _finish(self, final: Verdict, stage: Stage, headers: bool = False) -> Verdict:
        """The transaction's final verdict (the checks' combined, or the milter's own when it
        could not run them): our Authentication-Results added when asked, the summary logged."""
        if headers and not final.stops:
            final = replace(final, actions=(*self._authentication_results(), *final.actions))
        self.log_summary(final, stage)
        return final

    def _authentication_results(self) -> tuple[Action, ...]:
        """Remove A-R headers forged with our authserv-id; add ours when anything was checked."""
        if self.message is None:
            return ()
        return authresults.actions(self.message, self.session, self.results, self.snapshot.policy.site.authserv_id)

    def summary_fields(self, verdict: Verdict, stage: Stage) -> dict[str, Any]:
        session, envelope = self.session, self.envelope or Envelope()
        fields: dict[str, Any] = {
            "queue_id": envelope.queue_id,
            "stage": stage,
            "listener": self.listener.name,
            "client": session.client_ip,
            "client_name": session.client_name,
            "helo": session.helo,
            "tls": session.tls_summary,
            "auth": session.auth_login,
            "mech": session.auth_mech,
            "from": f"<{envelope.mail_from}>",
            "rcpts": len(envelope.rcpts),
            "size": self.message.size if self.message else None,
        }
        assert tuple(fields) == SUMMARY_KEYS
        by_check = {result.check: result for result in self.results}
        listed = self.listener.settings.traffic(self.session.authenticated).checks
        pipeline = self.snapshot.pipeline
        for check in dict.fromkeys(c.name for c in (*pipeline.always, *pipeline.checks)):
            result = by_check.get(check)
            if result is not None:
                fields[check] = result.log_value
            elif check in CHECK_NAMES and check not in listed:
                fields[check] = "skipped:listener"  # this door does not run it for this traffic
            else:
                fields[check] = None
        would = [f"{r.check}:{r.would.verdict_name}" for r in self.results if r.would is not None]
        fields.update({
            "verdict": verdict.name,
            "reply": str(verdict.reply) if verdict.reply and verdict.disposition is not Disposition.ACCEPT
            else None,
            "decided_by": verdict.decided_by,
            "reason": verdict.reason,
            "mode": ("report:" + ",".join(would)) if would else "enforce",
            "ms": round((time.perf_counter() - self.started) * 1000, 1) if self.started else None,
            "check_ms": round(sum(r.elapsed_ms for r in self.results), 1),
        })
        assert tuple(fields)[-len(SUMMARY_TAIL):] == SUMMARY_TAIL
        return fields

    def log_summary(self, verdict: Verdict, stage: Stage) -> None:
        self.logged = True
        event(self.log, logging.INFO, "summary", **self.summary_fields(verdict, stage))
        metrics.message_done(self.listener.name, self.session.authenticated, verdict, self.results)
