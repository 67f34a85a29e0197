"""The NCCI PTP loader: the CMS file layout (tab-delimited text, CSV export, zip) and
the shipped illustrative table."""

from __future__ import annotations

import zipfile
from datetime import date
from pathlib import Path

import pytest

from fhir_server import terminology as tx
from fhir_server.terminology import ncci

# Shaped like a CMS practitioner PTP text file: title lines, a header, data rows.
CMS_LIKE = (
    "Some title line about the quarter\r\n"
    "Column 1/Column 2 Edits\r\n"
    "Column 1\tColumn 2\t*=in existence prior to 1996\tEffective Date\t"
    "Deletion Date *=no data\tModifier 0=not allowed 1=allowed 9=not applicable\t"
    "PTP Edit Rationale\r\n"
    "\r\n"
    "97530\t97116\t\t20200101\t*\t1\tMisuse of column two code with column one code\r\n"
    "97161\t97530\t\t20200101\t20200101\t1\tWithdrawn\r\n"
    "97110\t97750\t*\t19960101\t20210401\t0\tMutually exclusive procedures\r\n"
    "97010\t97012\t\t20220101\t*\t9\tNot applicable\r\n"
)


def test_parse_cms_text_layout() -> None:
    edits = ncci.parse_ptp(CMS_LIKE.splitlines(keepends=True), "sample.txt")
    assert len(edits) == 4
    first = edits[0]
    assert (first.column1, first.column2) == ("97530", "97116")
    assert first.effective == date(2020, 1, 1) and first.deletion is None
    assert first.modifier_allowed and not first.prior_1996
    assert first.rationale.startswith("Misuse")
    old = edits[2]
    assert old.prior_1996 and old.modifier_indicator == ncci.MODIFIER_NOT_ALLOWED
    assert old.deletion == date(2021, 4, 1)


def test_in_force_dates() -> None:
    table = ncci.PtpTable(ncci.parse_ptp(CMS_LIKE.splitlines()))
    assert table.edit("97530", "97116", date(2026, 5, 1)) is not None
    assert table.edit("97530", "97116", date(2019, 12, 31)) is None
    assert table.edit("97116", "97530", date(2026, 5, 1)) is None  # column order matters
    assert table.find("97116", "97530", date(2026, 5, 1)) is not None  # find: either order
    # effective == deletion: never in force
    assert table.find("97161", "97530", date(2020, 1, 1)) is None
    # in force up to, not including, the deletion date
    assert table.edit("97110", "97750", date(2021, 3, 31)) is not None
    assert table.edit("97110", "97750", date(2021, 4, 1)) is None


def test_csv_export_and_other_date_formats() -> None:
    text = (
        '"Column 1","Column 2","*=in existence prior to 1996","Effective Date",'
        '"Deletion Date *=no data","Modifier","PTP Edit Rationale"\n'
        '"97140","97530","","2020-01-01","*","1","Standards of practice, with a comma"\n'
        "97012,97140,,01/01/2020,,1,\n"
    )
    edits = ncci.parse_ptp(text.splitlines())
    assert [(e.column1, e.column2, e.effective) for e in edits] == [
        ("97140", "97530", date(2020, 1, 1)),
        ("97012", "97140", date(2020, 1, 1)),
    ]
    assert edits[0].rationale == "Standards of practice, with a comma"
    assert edits[1].deletion is None


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("97110\t97140\t\t2020XX01\t*\t1\tx", "not a date"),
        ("97110\t97140\t\t20200101\t*\t7\tx", "modifier indicator"),
        ("97110\tfoo\t\t20200101\t*\t1\tx", "not a procedure code"),
        ("97110\t97140\t\t20200101", "at least 6 columns"),
    ],
)
def test_bad_rows_are_reported_with_their_line(row: str, message: str) -> None:
    with pytest.raises(ncci.PtpFormatError, match=message) as err:
        ncci.parse_ptp(["header", row], "f.txt")
    assert "f.txt:2" in str(err.value)


def test_zip_and_directory_loading(tmp_path: Path) -> None:
    archive = tmp_path / "ccipra-v321r0-f1.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ccipra-v321r0-f1.TXT", CMS_LIKE.encode("latin-1"))
        z.writestr("readme.pdf", b"%PDF")
    (tmp_path / "extra.txt").write_text("97150\t97110\t\t20200101\t*\t1\tgroup\n")
    (tmp_path / "notes.md").write_text("ignored")
    table = ncci.load_ptp_directory(tmp_path)
    assert len(table) == 5
    assert {e.source for e in table} == {"ccipra-v321r0-f1.zip/ccipra-v321r0-f1.TXT", "extra.txt"}


def test_edits_among_codes_of_a_day() -> None:
    table = ncci.PtpTable(ncci.parse_ptp(CMS_LIKE.splitlines()))
    found = table.edits_among(["97116", "97530", "97110", "97530"], date(2026, 3, 2))
    assert [(e.column1, e.column2) for e in found] == [("97530", "97116")]


def test_the_shipped_table_is_illustrative_and_has_the_known_pairs() -> None:
    folder = ncci.default_ncci_directory()
    files = sorted(folder.glob("*.txt"))
    assert files and all("ILLUSTRATIVE" in f.read_text().splitlines()[0] for f in files)
    table = tx.ptp_edits()
    day = date(2026, 3, 2)
    for column1, column2 in [
        ("97140", "97530"),
        ("97012", "97140"),
        ("97161", "97140"),
        ("97162", "97140"),
        ("97163", "97140"),
        ("97110", "97164"),
        ("97530", "97168"),
        ("97113", "97110"),
        ("97530", "97116"),
        ("97150", "97535"),
        ("97150", "97110"),
    ]:
        edit = table.edit(column1, column2, day)
        assert edit is not None, (column1, column2)
        assert edit.modifier_allowed
    assert table.find("97161", "97530", day) is None  # withdrawn edits are not in force
    for edit in table:
        assert tx.is_timed(edit.column1) is not None and tx.is_timed(edit.column2) is not None
