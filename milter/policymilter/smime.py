"""S/MIME (RFC 8551): what a mail client shows of an application/pkcs7-mime part without a key.

An opaque signed message (smime-type=signed-data) carries its content inside the CMS structure
(RFC 5652 §5.2 encapContentInfo): Thunderbird and Outlook show it, attachments included, whether
or not the signature verifies. A ".p7m" file is the same structure around a file (CAdES, the
signed invoices and documents of Italian PEC mail), which signature tools save without the
suffix. Encrypted or compressed content cannot be inspected here.

asn1crypto reads the structure (BER as well as DER: indefinite lengths and chunked strings, as
Outlook writes them); the `cryptography` package has no CMS content reader.
"""

from __future__ import annotations

from asn1crypto import cms

# What hostile input makes asn1crypto raise: ValueError for malformed encodings (lengths past
# the data, bad tags), TypeError and OverflowError for absurd values.
SMIME_UNREADABLE = (ValueError, TypeError, OverflowError)
SMIME_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")  # RFC 8551 §3.2.1
_ENCRYPTED = ("enveloped_data", "authenticated_enveloped_data", "encrypted_data")


class Uninspectable(Exception):
    """Content we cannot read; the message says why."""


def is_smime(content_type: str, names: tuple[str, ...]) -> bool:
    return content_type in SMIME_TYPES or any(name.strip().lower().endswith(".p7m") for name in names)


def encapsulated(data: bytes) -> bytes | None:
    """The content an S/MIME structure carries for any reader (None: a detached signature, or a
    certificates-only message); Uninspectable when only a key holder could read it."""
    try:
        info = cms.ContentInfo.load(data)
        kind = info["content_type"].native
        if kind == "signed_data":
            content = info["content"]["encap_content_info"]
            if content["content_type"].native != "data":
                raise Uninspectable("S/MIME signed non-data content")
            inner = content["content"].native
            return None if inner is None else bytes(inner)
    except SMIME_UNREADABLE as error:
        raise Uninspectable(f"S/MIME that cannot be read ({type(error).__name__})") from error
    if kind in _ENCRYPTED:
        raise Uninspectable("encrypted S/MIME (not inspected)")
    if kind == "compressed_data":
        raise Uninspectable("compressed S/MIME (not inspected)")
    raise Uninspectable("S/MIME of an unknown content type")


def unsigned_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """What a signature tool saves "invoice.pdf.p7m" as; other names stay."""
    stripped = [name.strip()[:-4] if name.strip().lower().endswith(".p7m") else name for name in names]
    return tuple(dict.fromkeys(name for name in stripped if name))
