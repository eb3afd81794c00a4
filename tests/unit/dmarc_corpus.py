"""The report set the dmarc-reports read tests share: three site domains, five reporters, every way a
report arrives, and the broken and hostile files a rua mailbox gets."""

from __future__ import annotations

from pathlib import Path

from tests.dmarcreportkit import (
    BEGIN,
    DAY,
    XXE,
    Row,
    Spec,
    billion_laughs,
    forwarded,
    gz,
    maildir,
    mbox,
    report_mail,
    report_xml,
    zipped,
)

# example.org, p=none: one large source fails both (NOT READY).
GOOGLE = Spec("google.com", "g-1", "example.org", "none", (
    Row("192.0.2.10", 600, "pass", "pass"),
    Row("198.51.100.7", 150, "pass", "fail", reason="mailing_list"),
    Row("203.0.113.5", 40, "fail", "fail"),
))
BIS = Spec("mail.example", "m-1", "example.org", "none", format="rfc9990", begin=BEGIN + DAY, end=BEGIN + 2 * DAY - 1,
           rows=(Row("192.0.2.10", 300, "pass", "pass"),
                 Row("2001:db8::25", 60, "fail", "pass"),
                 Row("203.0.113.99", 5, "fail", "fail")))
# example.net, p=quarantine: every big source aligned (READY for p=reject).
OLD = Spec("yahoo.example", "y-1", "example.net", "quarantine", format="draft", rows=(
    Row("192.0.2.10", 200, "pass", "pass"),
    Row("203.0.113.50", 3, "fail", "fail", disposition="quarantine"),
))
# example.com, p=none, from four reports in mail: READY for p=quarantine.
MAIL1 = Spec("outlook.example", "o-1", "example.com", "none", rows=(Row("192.0.2.10", 80, "pass", "pass"),))
MAIL2 = Spec("outlook.example", "o-2", "example.com", "none", begin=BEGIN + DAY, end=BEGIN + 2 * DAY - 1,
             rows=(Row("192.0.2.10", 70, "pass", "pass"), Row("203.0.113.7", 2, "fail", "fail")))
MAIL3 = Spec("gmx.example", "x-1", "example.com", "none", format="rfc9990",
             rows=(Row("192.0.2.11", 30, "pass", "fail", signatures=(("example.com", "s1", "pass"),
                                                                     ("lists.example", "l1", "pass"))),))
MAIL4 = Spec("web.example", "w-1", "example.com", "none", rows=(Row("192.0.2.11", 10, "pass", "pass"),))
BAD_COUNT = Spec("bad.example", "b-1", "example.org", "none", rows=(Row("192.0.2.10", 1, "pass", "pass"),),
                 overrides={"<count>1</count>": "<count>abc</count>"})
NO_ID = Spec("bad.example", "b-2", "example.org", "none", rows=(Row("192.0.2.10", 1, "pass", "pass"),),
             overrides={"<report_id>b-2</report_id>": ""})


def build(root: Path) -> list[Path]:
    """Write the corpus under root; the paths to give `read`, in order."""
    files = {
        "google.xml.gz": gz(report_xml(GOOGLE)),
        "mail-example.zip": zipped({"mail.example!example.org!1764633600!1764719999.xml": report_xml(BIS)}),
        "yahoo.xml": report_xml(OLD),
        "outlook.eml": report_mail(MAIL1, gz(report_xml(MAIL1)), "o-1.xml.gz", "application/gzip").as_bytes(),
        "rua.mbox": mbox([
            report_mail(MAIL2, zipped({"o-2.xml": report_xml(MAIL2)}), "o-2.zip", "application/zip"),
            report_mail(GOOGLE, gz(report_xml(GOOGLE)), "g-1.xml.gz", "application/gzip"),  # the saved one again
        ]),
        "bad-count.xml": report_xml(BAD_COUNT),
        "no-id.xml.gz": gz(report_xml(NO_ID)),
        "cut.xml.gz": gz(report_xml(GOOGLE))[:200],
        "xxe.xml": XXE,
        "lol.xml": billion_laughs(),
    }
    paths = []
    for name, data in files.items():
        (root / name).write_bytes(data)
        paths.append(root / name)
    box = maildir(root / "Maildir",
                  cur=[report_mail(MAIL3, report_xml(MAIL3), "x-1.xml", "text/xml")],
                  new=[forwarded(report_mail(MAIL4, gz(report_xml(MAIL4)), "w-1.xml.gz", "application/gzip"))])
    paths.append(box)
    return paths
