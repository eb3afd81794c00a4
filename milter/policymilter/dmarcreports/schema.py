"""The aggregate report schema (dmarc-2.0.xsd, RFC 9990 Appendix A): every report we make is
checked against it before it is archived or mailed, and a report that fails is never sent.

The schema is parsed once, from the package's own file: no network, no external entities.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib import resources
from typing import cast

from lxml import etree

NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"
SCHEMA_FILE = "dmarc-2.0.xsd"
SHOWN_ERRORS = 5  # schema errors named in one ReportInvalid


class ReportInvalid(ValueError):
    """A report that does not validate; the message names each problem (line: what)."""


@functools.cache
def schema() -> etree.XMLSchema:
    text = resources.files("policymilter.dmarcreports").joinpath(SCHEMA_FILE).read_bytes()
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.XMLSchema(etree.fromstring(text, parser))


def validate(document: bytes) -> None:
    """Raise ReportInvalid unless `document` (a serialized report) is valid against the schema."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        tree = etree.fromstring(document, parser)
    except etree.XMLSyntaxError as error:
        raise ReportInvalid(f"not well-formed XML: {error}") from None
    info = tree.getroottree().docinfo
    if info.internalDTD is not None or info.externalDTD is not None:
        raise ReportInvalid("has a DOCTYPE: a report carries none (and its entities are never expanded)")
    checker = schema()
    try:
        if checker.validate(tree):
            return
    except etree.XMLSchemaValidateError as error:
        raise ReportInvalid(f"cannot be validated: {error}") from None
    entries = cast(Iterable[etree._LogEntry], checker.error_log)  # lxml-stubs do not say it iterates
    problems = [f"line {entry.line}: {entry.message}" for entry in entries]
    more = len(problems) - SHOWN_ERRORS
    shown = "; ".join(problems[:SHOWN_ERRORS]) + (f"; and {more} more" if more > 0 else "")
    raise ReportInvalid(f"not valid against {SCHEMA_FILE}: {shown}")
