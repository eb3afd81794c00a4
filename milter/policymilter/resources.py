"""The files a policy refers to, read when it is (re)loaded: the sender map and the signing keys;
and the state store it names (opened by each process at first use).

Read by the milter's user, at start as at every reload (privileges.py); checks get them from
their context, typed, and never read a file themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policymilter import sendermap, signing_keys
from policymilter.policy import PolicyError
from policymilter.policy.model import Policy, SigningKey
from policymilter.sendermap import SenderMap
from policymilter.state import Store, open_store

# domain -> [(key, private key, problem)]: the private key parsed once per policy load, ready to
# sign; a key that cannot be used has None and its problem, and the signing check applies
# signing.on_missing_key to it.
Keys = dict[str, list[tuple[SigningKey, signing_keys.PrivateKey | None, str]]]


@dataclass(frozen=True)
class Resources:
    """Files the policy refers to, read when the policy is (re)loaded."""

    senders: SenderMap = field(default_factory=SenderMap)
    keys: Keys = field(default_factory=dict)
    store: Store | None = None  # state.store (None: nothing uses it, see store_users)


def load_keys(policy: Policy) -> Keys:
    """Every signing key, read as this process's user, which must own it (see load_private_key)."""
    keys: Keys = {}
    for domain, entries in policy.signing.keys.items():
        for key in entries:
            try:
                private = signing_keys.load_private_key(key.key_file, key.algorithm)
            except signing_keys.KeyFileError as error:
                keys.setdefault(domain, []).append((key, None, str(error)))
            else:
                keys.setdefault(domain, []).append((key, private, ""))
    return keys


def load_resources(policy: Policy, previous: Resources | None = None) -> Resources:
    """`previous`: the resources of the policy this one replaces; its store (and connections)
    carries over when the policy names the same one with the same timeout."""
    senders, issues = sendermap.load(policy)
    if issues:
        raise PolicyError(issues)
    return Resources(senders, load_keys(policy), _store(policy, previous))


def store_users(policy: Policy) -> tuple[str, ...]:
    """What uses the state store under this policy: "ratelimit" when it is enabled (a listener the
    policy does not name runs it: STRICTEST lists it), "dmarc_reports" when the dmarc check records
    report rows."""
    users = []
    if policy.ratelimit.enabled:
        users.append("ratelimit")
    if policy.dmarc_reports.record and policy.dmarc.enabled:
        users.append("dmarc_reports")
    return tuple(users)


def store_consequence(policy: Policy) -> str:
    """What a store that cannot be used costs, for the warnings of check-policy and the daemon."""
    consequences = []
    if "ratelimit" in store_users(policy):
        consequences.append("every authenticated message gets ratelimit.on_store_error = "
                            f"{policy.ratelimit.on_store_error}")
    if "dmarc_reports" in store_users(policy):
        consequences.append("no DMARC report rows are recorded (dmarc_reports.record)")
    return " and ".join(consequences)


def _store(policy: Policy, previous: Resources | None) -> Store | None:
    settings = policy.state
    if not store_users(policy):
        return None
    old = previous.store if previous is not None else None
    if old is not None and old.url == settings.store and old.timeout == settings.timeout:
        return old
    return open_store(settings.store, settings.timeout)
