"""What a site publishes in DNS for its domains (`dns-records`): SPF, DKIM and DMARC records in
zone-file form, after a short explanation of a safe rollout, from the policy's [publish] table
and the signing keys' public halves.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from policymilter.policy.model import Policy, Publish, SigningKey
from policymilter.signing_keys import KeyFileError, load_private_key, public_record, valid_selector

TTL = 3600
TXT_CHUNK = 255  # RFC 1035 §3.3: one character-string is at most 255 octets
# RFC 7208 §4.6.4: at most 10 mechanisms that cause DNS lookups (a: is one).
SPF_LOOKUP_LIMIT = 10


def _escape(chunk: bytes) -> str:
    """RFC 1035 §5.1 quoting inside a character-string."""
    out = []
    for byte in chunk:
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


def txt_strings(value: str) -> list[bytes]:
    """Split a TXT value into ≤255-octet strings, at spaces where possible.

    SPF (RFC 7208 §3.3), DKIM (RFC 6376 §3.6.2.2) and DMARC join the strings with nothing between them,
    so each space stays at the end of its string.
    """
    strings: list[bytes] = []
    current = b""
    for word in re.findall(rb"[^ ]+ *| +", value.encode()):
        if len(current) + len(word) <= TXT_CHUNK:
            current += word
            continue
        if current:
            strings.append(current)
        while len(word) > TXT_CHUNK:
            strings.append(word[:TXT_CHUNK])
            word = word[TXT_CHUNK:]
        current = word
    if current or not strings:
        strings.append(current)
    return strings


def txt_line(owner: str, value: str, ttl: int = TTL) -> str:
    """One TXT record in zone-file form; several strings go in ( ) on the same line."""
    chunks = txt_strings(value)
    strings = " ".join(f'"{_escape(chunk)}"' for chunk in chunks)
    rdata = strings if len(chunks) == 1 else f"( {strings} )"
    return f"{owner.rstrip('.')}. {ttl} IN TXT {rdata}"


def dkim_owner(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def spf_value(publish: Publish) -> str:
    terms = ["v=spf1"]
    for sender in publish.spf_senders:
        try:
            network = ipaddress.ip_network(sender, strict=False)
        except ValueError:
            terms.append(f"a:{sender.lower().rstrip('.')}")
            continue
        prefix = "ip4" if network.version == 4 else "ip6"
        full = network.prefixlen == network.max_prefixlen
        terms.append(f"{prefix}:{network.network_address if full else network}")
    terms.append(publish.spf_all)
    return " ".join(terms)


def dmarc_value(publish: Publish) -> str:
    tags = ["v=DMARC1", f"p={publish.dmarc_policy}"]
    if publish.dmarc_subdomain_policy is not None:
        tags.append(f"sp={publish.dmarc_subdomain_policy}")
    if publish.dmarc_rua:
        tags.append(f"rua={','.join(publish.dmarc_rua)}")
    tags += ["adkim=r", "aspf=r"]  # RFC 7489 §3.1: relaxed alignment lets subdomains sign and send
    return "; ".join(tags)


def _rua_domains(publish: Publish) -> list[str]:
    return list(dict.fromkeys(uri.rpartition("@")[2].lower().rstrip(".") for uri in publish.dmarc_rua))


@dataclass(frozen=True)
class ZoneText:
    text: str
    problems: tuple[str, ...]  # one per key that could not be read (each also a `;` line in text)


def _rollout(policy: Policy, source: str) -> list[str]:
    publish = policy.publish
    lines = [
        f"; DNS records for {', '.join(policy.site.domains)}, from the policy {source}",
        "; (policy-milter dns-records). Strings inside ( ) are joined without anything between them.",
        "; A domain has exactly one SPF record: merge these senders into an existing v=spf1 record.",
        ";",
        "; A safe rollout:",
        ";  1. Publish the SPF and DKIM records; send test mail and check that receivers see",
        ";     spf=pass and dkim=pass in the Authentication-Results header.",
        ';  2. Publish DMARC with publish.dmarc_policy = "none" and a publish.dmarc_rua address,',
        ";     and read the aggregate reports for a few weeks.",
        ";  3. Make sure every legitimate source passes: mail sent through authenticated submission",
        ";     is signed here; web applications, newsletters and outside providers need listing in",
        ";     publish.spf_senders or their own DKIM key; forwarders and mailing lists break SPF,",
        ";     so only a DKIM signature carries that mail.",
        ';  4. Then dmarc_policy = "quarantine" (adding pct=N to the record applies it to N% of',
        ";     failing mail at first).",
        ';  5. Then dmarc_policy = "reject".',
    ]
    if publish.dmarc_policy in ("quarantine", "reject"):
        if not publish.dmarc_rua:
            lines += [";",
                      f'; WARNING: dmarc_policy = "{publish.dmarc_policy}" but publish.dmarc_rua is empty: no',
                      ";   aggregate reports, so mail refused for failing DMARC (a sender you forgot) goes unseen."]
        keyless = [domain for domain in policy.site.domains if not _keys_of(policy, domain)]
        if keyless:
            lines += [";",
                      f'; WARNING: dmarc_policy = "{publish.dmarc_policy}" but signing.keys has no key for '
                      f"{', '.join(keyless)}:",
                      ";   such mail passes DMARC only through SPF, which every forward breaks."]
    return lines


def _keys_of(policy: Policy, domain: str) -> tuple[SigningKey, ...]:
    return tuple(key for name, keys in policy.signing.keys.items()
                 if name.lower().rstrip(".") == domain for key in keys)


def _dkim_lines(domain: str, keys: Sequence[SigningKey], key_owner: int | None) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    problems: list[str] = []
    for key in keys:
        owner = dkim_owner(key.selector, domain)
        try:
            selector = valid_selector(key.selector, domain)
        except ValueError as error:
            problem = f"{domain}: signing.keys selector {key.selector!r} is not usable: {error}"
        else:
            owner = dkim_owner(selector, domain)
            try:
                private = load_private_key(key.key_file, key.algorithm, owner=key_owner)
                lines.append(txt_line(owner, public_record(private)))
                continue
            except KeyFileError as error:
                problem = f"{owner}: no record: {error}"
        lines.append(f"; {problem}")
        problems.append(problem)
    return lines, problems


def _report_authorisations(domain: str, domains: Sequence[str], rua_domains: Sequence[str],
                           org_of: Callable[[str], str]) -> list[str]:
    """RFC 7489 §7.1: a report address outside a domain's Organizational Domain must be authorised by the
    report address's domain: printed here when that domain is ours, else a comment."""
    lines = []
    for rua_domain in rua_domains:
        if org_of(rua_domain) != org_of(domain) and rua_domain not in domains:
            lines.append(f'; reports go to {rua_domain}, which must publish {domain}._report._dmarc.{rua_domain}. '
                         'TXT "v=DMARC1" (RFC 7489 §7.1), or receivers send none')
    if domain in rua_domains:
        lines += [txt_line(f"{other}._report._dmarc.{domain}", "v=DMARC1") for other in domains
                  if org_of(other) != org_of(domain)]
    return lines


def zone_text(policy: Policy, source: str, key_owner: int | None = None) -> ZoneText:
    """SPF, DKIM and DMARC records for every one of site.domains, after a rollout comment block.

    A key gets a record only if the milter would sign with it: `key_owner` is the uid the milter
    runs as (see load_private_key); the file itself may be read by anyone who can, e.g. root.
    """
    from policymilter.domains import organizational_domain  # loads the PSL: only when needed

    publish = policy.publish
    lines = _rollout(policy, source)
    problems: list[str] = []
    domains = list(policy.site.domains)
    for domain in domains:
        lines += ["", f"; {domain}"]
        if not publish.spf_senders:
            lines.append("; no senders listed in publish.spf_senders: this record says nobody may send "
                         f"mail as {domain}")
        lookups = sum(1 for term in spf_value(publish).split() if term.startswith("a:"))
        if lookups > SPF_LOOKUP_LIMIT:
            lines.append(f"; WARNING: {lookups} host names: SPF allows {SPF_LOOKUP_LIMIT} DNS lookups "
                         "(RFC 7208 §4.6.4); list addresses instead")
        lines.append(txt_line(domain, spf_value(publish)))
        dkim, missing = _dkim_lines(domain, _keys_of(policy, domain), key_owner)
        lines += dkim
        problems += missing
        lines.append(txt_line(f"_dmarc.{domain}", dmarc_value(publish)))
        lines += _report_authorisations(domain, domains, _rua_domains(publish), organizational_domain)
    extra = [name for name in policy.signing.keys if name.lower().rstrip(".") not in domains]
    for name in extra:
        domain = name.lower().rstrip(".")
        lines += ["", f"; {domain}: has signing.keys but is not in site.domains (only its DKIM records)"]
        dkim, missing = _dkim_lines(domain, policy.signing.keys[name], key_owner)
        lines += dkim
        problems += missing
    return ZoneText("\n".join(lines) + "\n", tuple(problems))


