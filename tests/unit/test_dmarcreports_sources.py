"""sources.py and archives.py: where reports are found, and every limit, each named when reached
(bombs included: inflating stops at the limit, whatever the archive declares)."""

from __future__ import annotations

import gzip
import io
import resource
import time
import tracemalloc
import zipfile
import zlib
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policymilter.dmarcreports.archives import ArchiveError, LimitExceeded, Limits, gunzip
from policymilter.dmarcreports.parse import ReportError, parse_report
from policymilter.dmarcreports.sources import Document, Finder, Found
from tests.dmarcreportkit import Row, Spec, forwarded, gz, mbox, report_mail, report_xml, zipped

SPEC = Spec("r.example", "r-1", "example.org", "none", (Row("192.0.2.1", 1, "pass", "pass"),))
XML = report_xml(SPEC)
MIB = 1 << 20


def find(path: Path, limits: Limits | None = None) -> list[tuple[str, str]]:
    """(origin relative to path's directory, "document" or the skip reason)."""
    found: list[Found] = list(Finder(limits or Limits()).find([str(path)]))
    prefix = f"{path.parent}/"
    return [(item.origin.removeprefix(prefix), "document" if isinstance(item, Document) else item.reason)
            for item in found]


def zeros_gzip(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"<" + b" " * (MIB - 1)
    return b"".join([*(compressor.compress(chunk) for _ in range(size // MIB)), compressor.flush()])


def zip_bomb(size: int, lie: bool) -> bytes:
    """One member that inflates to `size` bytes; `lie`: its central directory entry says 100."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("r.xml", "w") as member:
        for _ in range(size // MIB):
            member.write(b" " * MIB)
    data = bytearray(buffer.getvalue())
    if not lie:
        return bytes(data)
    # Lie in the central directory's uncompressed size (offset 24 of its entry), as bombs do.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (100).to_bytes(4, "little")
    return bytes(data)


def mail(attachment: bytes, filename: str, content_type: str) -> bytes:
    return report_mail(SPEC, attachment, filename, content_type).as_bytes()


def nested(depth: int) -> EmailMessage:
    message = report_mail(SPEC, gz(XML), "r.xml.gz", "application/gzip")
    for _ in range(depth):
        message = forwarded(message)
    return message


# (file name, content, limits, expected finds)
CASES = [
    ("r.xml", XML, Limits(), [("r.xml", "document")]),
    ("r.xml.gz", gz(XML), Limits(), [("r.xml.gz", "document")]),
    ("named-anything", gz(XML), Limits(), [("named-anything", "document")]),  # by magic bytes, not name
    ("two.gz", gz(XML) + gz(b""), Limits(), [("two.gz", "document")]),  # RFC 1952: members follow each other
    ("r.zip", zipped({"a.xml": XML, "b.xml": XML}), Limits(),
     [("r.zip: member a.xml", "document"), ("r.zip: member b.xml", "document")]),
    ("gz-in-zip.zip", zipped({"a.xml.gz": gz(XML)}), Limits(), [("gz-in-zip.zip: member a.xml.gz", "document")]),
    ("notes.zip", zipped({"a.xml": XML, "readme.txt": b"hello"}), Limits(),
     [("notes.zip: member a.xml", "document"), ("notes.zip: member readme.txt", "not XML")]),
    ("utf16.xml", "<?xml version='1.0' encoding='utf-16'?><feedback/>".encode("utf-16"), Limits(),
     [("utf16.xml", "document")]),
    ("m.eml", mail(gz(XML), "r.xml.gz", "application/gzip"), Limits(), [("m.eml: r.xml.gz", "document")]),
    ("z.eml", mail(zipped({"r.xml": XML}), "r.zip", "application/zip"), Limits(),
     [("z.eml: r.zip: member r.xml", "document")]),
    ("x.eml", mail(XML, "r.xml", "text/xml"), Limits(), [("x.eml: r.xml", "document")]),
    ("o.eml", mail(gz(XML), "report", "application/octet-stream"), Limits(), [("o.eml: report", "document")]),
    ("fwd.eml", nested(1).as_bytes(), Limits(), [("fwd.eml: r.xml.gz", "document")]),
    ("deep.eml", nested(3).as_bytes(), Limits(max_depth=2), [("deep.eml", "messages nested deeper than 2 (limit "
                                                                        "max-depth)")]),
    ("bad.eml", mail(b"%PDF-1.4", "r.pdf", "application/pdf"), Limits(),
     [("bad.eml", "no aggregate report in this message (parts: text/plain, application/pdf)")]),
    ("odd.eml", mail(b"hello", "r.xml.gz", "application/gzip"), Limits(),
     [("odd.eml: r.xml.gz", "attachment (application/gzip) is neither XML, gzip nor zip")]),
    ("junk.bin", b"\x00\x01\x02", Limits(), [("junk.bin", "not a report: neither XML, gzip, zip, an mbox nor a "
                                                          "message")]),
    ("cut.gz", gz(XML)[:-12], Limits(), [("cut.gz", "gzip stream cut short (truncated)")]),
    ("corrupt.gz", gz(XML)[:12] + b"\xff" * 40, Limits(),
     [("corrupt.gz", "corrupt gzip data: Error -3 while decompressing data: invalid code lengths set")]),
    ("trailing.gz", gz(XML) + b"junk", Limits(), [("trailing.gz", "4 bytes of trailing data after the gzip stream")]),
    ("gz-not-xml.gz", gz(b"hello"), Limits(), [("gz-not-xml.gz", "the gzip data is not XML")]),
    ("bad.zip", b"PK\x03\x04" + b"\x00" * 40, Limits(),
     [("bad.zip", "not a readable zip archive: File is not a zip file")]),
    ("many.zip", zipped({f"{n}.xml": XML for n in range(4)}), Limits(max_members=3),
     [("many.zip", "4 files in the zip archive (limit max-members: 3)")]),
    ("nest.gz", gz(gz(gz(XML))), Limits(max_depth=1), [("nest.gz", "archives nested deeper than 1 (limit max-depth)")]),
    ("big.xml", XML + b" " * MIB, Limits(max_input=MIB), [("big.xml", "larger than 1 MiB (limit max-input)")]),
    ("big.eml", mail(gz(XML) + b"\x00" * MIB, "r.xml.gz", "application/gzip"), Limits(max_input=MIB),
     [("big.eml", "larger than 1 MiB (limit max-input)")]),
    ("xml.xml", XML + b" " * MIB, Limits(max_xml=MIB), [("xml.xml", "XML larger than 1 MiB (limit max-xml)")]),
]


@pytest.mark.parametrize(("name", "content", "limits", "expected"), CASES, ids=[case[0] for case in CASES])
def test_finds(tmp_path: Path, name: str, content: bytes, limits: Limits, expected: list[tuple[str, str]]) -> None:
    (tmp_path / name).write_bytes(content)
    assert find(tmp_path / name, limits) == expected


def test_an_mbox_is_split_and_each_message_bounded(tmp_path: Path) -> None:
    first = EmailMessage()
    first["From"], first["Subject"] = "noreply@r.example", "Report Domain: example.org"
    first.set_content("From the reporter: an aggregate report.\n")  # a body line mbox() escapes as >From
    first.add_attachment(gz(XML), maintype="application", subtype="gzip", filename="a.xml.gz")
    messages = [first,
                report_mail(SPEC, gz(XML) + b"\x00" * (2 * MIB), "big.xml.gz", "application/gzip"),
                report_mail(SPEC, zipped({"c.xml": XML}), "c.zip", "application/zip")]
    (tmp_path / "box").write_bytes(mbox(messages))
    assert find(tmp_path / "box", Limits(max_input=MIB)) == [
        ("box: message 1: a.xml.gz", "document"),
        ("box: message 2", "message larger than 1 MiB (limit max-input)"),
        ("box: message 3: c.zip: member c.xml", "document"),
    ]


def test_a_maildir_reads_cur_and_new_and_a_directory_its_files(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    (box / "cur" / "1:2,S").write_bytes(mail(gz(XML), "a.xml.gz", "application/gzip"))
    (box / "new" / "2").write_bytes(mail(XML, "b.xml", "application/xml"))
    (box / "tmp" / "3").write_bytes(b"being delivered")
    assert find(box) == [("Maildir/cur/1:2,S: a.xml.gz", "document"), ("Maildir/new/2: b.xml", "document")]
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "b.xml").write_bytes(XML)
    (saved / "a.zip").write_bytes(zipped({"a.xml": XML}))
    assert find(saved) == [("saved/a.zip: member a.xml", "document"), ("saved/b.xml", "document")]


# Bombs: inflating stops at the limit, so memory stays near the limit, never the declared or real size.
def test_a_gzip_bomb_is_a_named_skip(tmp_path: Path) -> None:
    (tmp_path / "bomb.xml.gz").write_bytes(zeros_gzip(200 * MIB))  # 200 MiB in about 200 KiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert find(tmp_path / "bomb.xml.gz") == [("bomb.xml.gz", "decompresses to more than 50 MiB (limit max-xml)")]
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 120 * 1024


@pytest.mark.parametrize(("lie", "reason"), [
    (False, "decompresses to more than 8 MiB (limit max-xml)"),
    # zipfile stops at the declared size, and the CRC then fails: read 100 bytes, not 64 MiB.
    (True, "corrupt zip member: Bad CRC-32 for file 'r.xml'"),
])
def test_a_zip_bomb_is_a_named_skip(tmp_path: Path, lie: bool, reason: str) -> None:
    (tmp_path / "bomb.zip").write_bytes(zip_bomb(64 * MIB, lie))
    assert find(tmp_path / "bomb.zip", Limits(max_xml=8 * MIB)) == [("bomb.zip: member r.xml", reason)]


@pytest.mark.parametrize(("data", "error"), [
    (gzip.compress(b"x" * 1000), LimitExceeded),
    (b"\x1f\x8b", ArchiveError),
])
def test_gunzip_counts_what_it_inflates(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        gunzip(data, 999)
    if error is LimitExceeded:
        assert gunzip(data, 1000) == b"x" * 1000



def zipped_with(method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("a.xml", XML)
        archive.writestr("b/c.xml", XML)
    return buffer.getvalue()


# Every compression method zipfile reads: each fails in its own ways (the attack review's fuzzing found
# LZMAError, NotImplementedError and IndexError escaping).
SAMPLES = [gz(XML), zipped({"a.xml": XML, "b.xml.gz": gz(XML)}), mail(gz(XML), "r.xml.gz", "application/gzip"),
           zipped_with(zipfile.ZIP_STORED), zipped_with(zipfile.ZIP_BZIP2), zipped_with(zipfile.ZIP_LZMA),
           nested(2).as_bytes(), mbox([report_mail(SPEC, zipped({"r.xml": XML}), "r.zip", "application/zip")] * 2)]


@settings(derandomize=True, max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(range(len(SAMPLES))), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 30),
                                                                  st.binary(max_size=8)), min_size=1, max_size=3))
def test_mutated_inputs_never_crash(tmp_path: Path, sample: int, edits: list[tuple[float, int, bytes]]) -> None:
    """Any bytes in any container: documents and skips, and each document a Report or a ReportError."""
    data = SAMPLES[sample]
    for where, length, insert in edits:
        at = int(where * len(data))
        data = data[:at] + insert + data[at + length:]
    (tmp_path / "input").write_bytes(data)
    for found in Finder(Limits(max_xml=MIB)).find([str(tmp_path / "input")]):
        if isinstance(found, Document):
            try:
                parse_report(found.data, 100)
            except ReportError as error:
                assert str(error)
        else:
            assert found.reason


# -- the attack review (notes/attack-read.md): each finding as a class, each row generated here --------------------

def lzma_zip(corrupt: str) -> bytes:
    """A zip whose one member is LZMA (method 14): its data or its properties broken."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_LZMA) as archive:
        archive.writestr("r.xml", XML)
    data = bytearray(buffer.getvalue())
    start = data.index(b"PK\x03\x04") + 30 + len("r.xml")
    if corrupt == "data":
        for at in range(start + 9, start + 30):
            data[at] ^= 0x55
    else:  # the first byte of the LZMA properties (lc/lp/pb), after the 4-byte header
        data[start + 4] = 0xFF
    return bytes(data)


def zip_central(offset: int, value: int, name: str = "r.xml") -> bytes:
    """A stored zip with one 16-bit field of its central directory entry changed."""
    data = bytearray(zipped({name: XML}))
    central = data.index(b"PK\x01\x02")
    data[central + offset:central + offset + 2] = value.to_bytes(2, "little")
    return bytes(data)


def nameless_zip() -> bytes:
    data = bytearray(zipped({"a": XML}))
    central = data.index(b"PK\x01\x02")
    data[central + 28:central + 32] = (0).to_bytes(2, "little") + (1).to_bytes(2, "little")  # name -> extra field
    return bytes(data)


def nest(outer: int, inner: int, leaf: bytes) -> bytes:
    return zipped({f"z{n}.zip": zipped({f"m{m}.gz": leaf for m in range(inner)}) for n in range(outer)})


def big_xml(size: int) -> bytes:
    return XML.replace(b"</feedback>", b" " * size + b"</feedback>")


# (finding, file name, content, limits, expected finds, seconds at most)
ATTACKS = [
    # 1: many empty gzip members were quadratic (each member copied the rest): members are counted.
    ("1 gzip members", "many.gz", gz(XML) + gz(b"") * 200_000, Limits(),
     [("many.gz", "more than 100 gzip members (limit max-members)")], 2.0),
    ("1 members below the limit", "some.gz", gz(XML) + gz(b"") * 99, Limits(), [("some.gz", "document")], 1.0),
    # 3: limits multiplied across nesting: one budget per input, every layer draws from it.
    ("3 nested bytes", "nest.zip", nest(10, 10, gz(gz(big_xml(2 * MIB)))), Limits(max_total=5 * MIB),
     [("nest.zip: member z0.zip: member m0.gz", "document"), ("nest.zip: member z0.zip: member m1.gz", "document"),
      ("nest.zip", "decompresses to more than 5 MiB in all, every archive layer counted (limit max-total); "
                   "2 document(s) read before")], 2.0),
    ("3 nested documents", "docs.zip", nest(10, 10, gz(XML)), Limits(max_documents=3),
     [*[(f"docs.zip: member z0.zip: member m{n}.gz", "document") for n in range(3)],
      ("docs.zip", "more than 3 report documents (limit max-documents); the rest not read")], 1.0),
    ("3 the budget is per input", "box", mbox([report_mail(SPEC, zipped({"a.xml": XML, "b.xml": XML}), "r.zip",
                                                           "application/zip")] * 2), Limits(max_documents=2),
     [("box: message 1: r.zip: member a.xml", "document"), ("box: message 1: r.zip: member b.xml", "document"),
      ("box: message 2: r.zip: member a.xml", "document"), ("box: message 2: r.zip: member b.xml", "document")], 1.0),
    # 4: the email package's parameter parser is quadratic: an overlong header's parameters are not read.
    ("4 filename", "param.eml", mail(gz(XML), '"' + ";" * 300_000 + '"', "application/gzip"), Limits(),
     [("param.eml: MIME part 3 (application/gzip)",
       "a content-disposition header longer than 4096 characters (its parameters are not read)")], 1.0),
    ("4 boundary", "boundary.eml", b"From: a@b.example\nMIME-Version: 1.0\n"
     b"Content-Type: multipart/mixed; boundary=B; x=\"" + b";" * 300_000
     + b"\"\n\n--B\nContent-Type: text/plain\n\nhi\n--B--\n", Limits(),
     [("boundary.eml", "not a readable message: a content-type header longer than 4096 characters (its "
                       "parameters are not read)")], 1.0),
    # 5: what zipfile raises besides BadZipFile: each a named skip, never a traceback.
    ("5 LZMA data", "lzma.zip", lzma_zip("data"), Limits(),
     [("lzma.zip: member r.xml", "corrupt zip member: Corrupt input data")], 1.0),
    ("5 LZMA properties", "lzma2.zip", lzma_zip("properties"), Limits(),
     [("lzma2.zip: member r.xml", "corrupt zip member: Invalid or unsupported options")], 1.0),
    ("5 version needed", "version.zip", zip_central(6, 99), Limits(),
     [("version.zip", "not a readable zip archive: zip file version 9.9")], 1.0),
    ("5 no name", "noname.zip", nameless_zip(), Limits(), [("noname.zip: member (no name)", "a zip member without a "
                                                                                            "name")], 1.0),
    ("5 in a message", "noname.eml", mail(nameless_zip(), "r.zip", "application/zip"), Limits(),
     [("noname.eml: r.zip: member (no name)", "a zip member without a name")], 1.0),
    # 9: text from the input reaches the terminal only made printable.
    ("9 content type", "ctype.eml", mail(b"\x1f\x8bjunk", "", "application/x-\x1b[2Jpwned"), Limits(),
     [("ctype.eml: application/x-?[2jpwned", "corrupt gzip data: Error -3 while decompressing data: unknown "
                                             "compression method")], 1.0),
]


@pytest.mark.parametrize(("finding", "name", "content", "limits", "expected", "seconds"), ATTACKS,
                         ids=[case[0] for case in ATTACKS])
def test_attacks_are_named_skips_in_bounded_time(tmp_path: Path, finding: str, name: str, content: bytes,
                                                 limits: Limits, expected: list[tuple[str, str]],
                                                 seconds: float) -> None:
    (tmp_path / name).write_bytes(content)
    started = time.monotonic()
    assert find(tmp_path / name, limits) == expected
    assert time.monotonic() - started < seconds


def test_documents_are_streamed_one_at_a_time(tmp_path: Path) -> None:
    """2: a mail kept every document it held until its end; now memory follows one document."""
    size = 4 * MIB
    members = {f"r{n}.xml": big_xml(size) for n in range(10)}  # 40 MiB of XML in a small zip
    (tmp_path / "m.eml").write_bytes(mail(zipped(members), "r.zip", "application/zip"))
    tracemalloc.start()
    try:
        documents = 0
        for found in Finder(Limits()).find([str(tmp_path / "m.eml")]):
            assert isinstance(found, Document)
            documents += 1
            del found
            if documents == 1:  # reading the file reserves max-input once (untouched pages): from here on
                tracemalloc.reset_peak()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert documents == 10
    assert peak < 4 * size  # the member being read, its copy and the message: not ten documents
