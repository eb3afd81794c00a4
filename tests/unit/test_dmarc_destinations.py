"""dmarc-reports send, destinations without DNS: rua URIs, their !size suffix, the suppression list.
The external-destination check against a real DNS server is in tests/integration/test_dmarc_send.py."""

from __future__ import annotations

import pytest

from policymilter.dmarcreports.destinations import (
    MAX_DESTINATIONS,
    Destination,
    Status,
    decide,
    parse_size,
    parse_uri,
    suppressed_domain,
)
from policymilter.dns import Resolver


@pytest.mark.parametrize("text, size", [
    ("0", 0), ("100", 100), ("1k", 1024), ("10K", 10240), ("10m", 10 * 2**20), ("2g", 2 * 2**30),
    ("1t", 2**40), (" 5m ", 5 * 2**20),
])
def test_size_suffix_units_are_powers_of_two(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "m", "10x", "10mb", "-1", "1.5m", "10 m"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("uri, address, limit", [
    ("mailto:agg@sender.test", "agg@sender.test", None),
    ("MAILTO:agg@Sender.TEST", "agg@sender.test", None),
    ("mailto:agg@sender.test!10m", "agg@sender.test", 10 * 2**20),
    ("mailto:agg@sender.test!500", "agg@sender.test", 500),
    ("mailto:a%21b@sender.test", "a!b@sender.test", None),  # RFC 6068: a "!" in the address is %-encoded
    ("mailto:agg@sender.test?subject=hi", "agg@sender.test", None),
    (" mailto:agg@sender.test!1k ", "agg@sender.test", 1024),
    ("mailto:agg@bücher.test", "agg@xn--bcher-kva.test", None),
])
def test_mailto_uris(uri, address, limit):
    assert parse_uri(uri) == Destination(uri, address, limit)


@pytest.mark.parametrize("uri, problem", [
    ("https://collector.test/dmarc", "not a mailto: URI"),
    ("agg@sender.test", "not a mailto: URI"),
    ("mailto:", "is not a mail address"),
    ("mailto:no-at-sign", "is not a mail address"),
    ("mailto:a b@sender.test", "is not a mail address"),
    ("mailto:a@b@sender.test", "is not a mail address"),
    ("mailto:agg@-bad-.test", "is not a mail address"),
    ("mailto:%0aBcc:x@evil.test@sender.test", "is not a mail address"),
    ("mailto:a%0d%0ab@sender.test", "is not a mail address"),
])
def test_unusable_uris_are_named(uri, problem):
    destination = parse_uri(uri)
    assert destination.address == ""
    assert problem in destination.problem


SUPPRESS = ("quiet.test", "Noisy@Collector.test")


@pytest.mark.parametrize("domain, entry", [
    ("quiet.test", "quiet.test"), ("mail.quiet.test", "quiet.test"), ("notquiet.test", None),
    ("collector.test", None),
])
def test_a_suppressed_domain_and_its_subdomains_get_no_report(domain, entry):
    assert suppressed_domain(domain, SUPPRESS) == entry


def test_decisions_without_dns_same_organisation_duplicates_suppression_and_the_cap():
    resolver = Resolver(["127.0.0.1:9"], timeout=0.1, lifetime=0.1)  # asked nothing: every rua is in-house
    uris = ["mailto:a@sender.test", "mailto:A@sender.test!1k", "ftp://sender.test/x", "mailto:noisy@collector.test",
            *(f"mailto:r{n}@reports.sender.test" for n in range(MAX_DESTINATIONS + 1))]
    found = [(d.destination.address or d.destination.uri, d.status, d.reason)
             for d in decide("sender.test", uris, SUPPRESS, resolver)]
    assert found[:3] == [
        ("a@sender.test", Status.SEND, ""),
        ("ftp://sender.test/x", Status.SKIP, "not a mailto: URI (the only kind we send reports to)"),
        ("noisy@collector.test", Status.SKIP, "suppressed (dmarc_reports.suppress 'Noisy@Collector.test')"),
    ]
    assert [status for _, status, _ in found[3:]] == [Status.SEND] * (MAX_DESTINATIONS - 2) + [Status.SKIP] * 3
    assert found[-1][2] == f"more than {MAX_DESTINATIONS} destinations"
