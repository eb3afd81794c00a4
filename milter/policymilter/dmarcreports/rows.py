"""What the dmarc check records of one message for the aggregate reports we send (RFC 9990 §2.1).

A Row is everything an aggregate report's <record> says of a message except its count: the
store keeps one counter per distinct row, per report domain and period (`Store.dmarc_record`),
so a busy day costs one row per distinct (source, result) combination, not one per message.
`key()` is the row's canonical text (the store's key); `Row.from_key` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

# RFC 9990 policy_evaluated/disposition: "pass" is "no action, passing DMARC with an enforcing policy".
ActionDisposition = Literal["none", "pass", "quarantine", "reject"]
# RFC 9990 PolicyOverrideType. RFC 7489's "forwarded" and "sampled_out" are gone (RFC 9989 has no
# pct): a message sampled out under RFC 7489 discovery is "other", the comment saying so.
OverrideType = Literal["local_policy", "mailing_list", "other", "policy_test_mode", "trusted_forwarder"]


@dataclass(frozen=True)
class Published:
    """The DMARC record that applied (policy_published), as we found it."""

    domain: str  # where the record was found (the report's domain)
    p: str
    sp: str | None = None
    np: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    testing: str = "n"  # t=y (RFC 9989)
    discovery_method: Literal["psl", "treewalk"] = "psl"
    rua: tuple[str, ...] = ()  # the record's rua URIs, with any !size suffix


@dataclass(frozen=True)
class DkimAuth:
    domain: str
    selector: str
    result: str  # RFC 8601 dkim result: none pass fail policy neutral temperror permerror


@dataclass(frozen=True)
class SpfAuth:
    domain: str
    # RFC 9990: "mfrom", the only valid value (for the null sender SPF checks postmaster@HELO as
    # the MAIL FROM identity, RFC 7208 §2.4).
    scope: Literal["mfrom"]
    result: str  # none neutral pass fail softfail temperror permerror


@dataclass(frozen=True)
class Override:
    type: OverrideType
    comment: str = ""


@dataclass(frozen=True)
class Row:
    source_ip: str
    header_from: str
    envelope_from: str  # RFC5321.MailFrom domain, or the HELO domain for a null sender
    envelope_to: str  # the recipient domain ("" when the message had recipients in several domains)
    published: Published
    disposition: ActionDisposition  # what we did (after overrides)
    dkim_aligned: bool  # policy_evaluated/dkim: an aligned DKIM pass
    spf_aligned: bool  # policy_evaluated/spf: an aligned SPF pass
    reasons: tuple[Override, ...] = ()
    dkim: tuple[DkimAuth, ...] = ()
    spf: tuple[SpfAuth, ...] = ()

    def key(self) -> str:
        """The canonical text of the row: equal rows, equal keys."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_key(cls, key: str) -> Row:
        """The row of `key()` (ValueError/KeyError/TypeError for text that is not one)."""
        data: dict[str, Any] = json.loads(key)
        published = data.pop("published")
        return cls(published=Published(**{**published, "rua": tuple(published["rua"])}),
                   reasons=tuple(Override(**item) for item in data.pop("reasons")),
                   dkim=tuple(DkimAuth(**item) for item in data.pop("dkim")),
                   spf=tuple(SpfAuth(**item) for item in data.pop("spf")),
                   **data)
