"""NCCI procedure-to-procedure (PTP) edits, read from files in the layout of the CMS
quarterly practitioner PTP edit files.

CMS publishes the edits each quarter as zip archives holding tab-delimited text (and
spreadsheet) files. After some title lines, each data row has these columns:

====  =================================================================
1     Column 1 code
2     Column 2 code
3     ``*`` when the edit existed before 1996 (else empty)
4     Effective date (``YYYYMMDD``)
5     Deletion date (``YYYYMMDD``, or ``*`` = no deletion)
6     Modifier indicator: 0 = not allowed, 1 = allowed, 9 = not applicable
7     PTP edit rationale (free text)
====  =================================================================

:func:`parse_ptp` reads that layout from tab-delimited or comma-separated text (a CSV
export of the spreadsheet works too) and skips every line whose first field is not a
five-character procedure code, so title and header lines of any wording are ignored.
Dates may also be written ``YYYY-MM-DD`` or ``MM/DD/YYYY``.

The table shipped under ``terminology/ncci/`` is an illustrative subset for development
and tests; a clinic drops the current quarter's CMS files (``.txt``, ``.csv``, ``.tsv``
or the ``.zip`` as downloaded) into that folder, or points ``FHIR_NCCI_DIR`` at another
one. An edit is in force on a date of service from its effective date up to, not
including, its deletion date.
"""

from __future__ import annotations

import csv
import io
import os
import re
import threading
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from fhir_server.terminology.registry import default_directory

ENV_DIRECTORY = "FHIR_NCCI_DIR"
SUFFIXES = (".txt", ".csv", ".tsv", ".zip")
_CODE = re.compile(r"^[0-9A-Z]{4}[0-9A-Z]$")

MODIFIER_NOT_ALLOWED = 0
MODIFIER_ALLOWED = 1
MODIFIER_NOT_APPLICABLE = 9


@dataclass(frozen=True, slots=True)
class PtpEdit:
    """One row of a PTP edit file."""

    column1: str
    column2: str
    effective: date
    deletion: date | None
    modifier_indicator: int
    rationale: str = ""
    prior_1996: bool = False
    source: str = ""

    def in_force(self, on: date) -> bool:
        return self.effective <= on and (self.deletion is None or on < self.deletion)

    @property
    def modifier_allowed(self) -> bool:
        """A modifier (59, XE, XS, XP, XU, ...) on the column-2 code may bypass the
        edit when the services were distinct."""
        return self.modifier_indicator == MODIFIER_ALLOWED


class PtpFormatError(ValueError):
    """A data row of a PTP file that cannot be read."""


def _date(text: str, where: str) -> date:
    text = text.strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d", "%m/%d/%Y"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise PtpFormatError(f"{where}: '{text}' is not a date (YYYYMMDD)")


def _rows(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else next(csv.reader([line]))
        yield n, [f.strip().strip('"').strip() for f in fields]


def parse_ptp(lines: Iterable[str], source: str = "") -> list[PtpEdit]:
    """The edits of a PTP file (its lines); title and header lines are skipped."""
    edits: list[PtpEdit] = []
    for n, fields in _rows(lines):
        if not fields or not _CODE.match(fields[0].upper()):
            continue  # a title or header line
        where = f"{source or 'PTP file'}:{n}"
        if len(fields) < 6:
            raise PtpFormatError(f"{where}: expected at least 6 columns, found {len(fields)}")
        column1, column2 = fields[0].upper(), fields[1].upper()
        if not _CODE.match(column2):
            raise PtpFormatError(f"{where}: '{fields[1]}' is not a procedure code")
        deletion_text = fields[4]
        deletion = None if deletion_text in ("", "*") else _date(deletion_text, where)
        indicator = fields[5]
        if indicator not in ("0", "1", "9"):
            raise PtpFormatError(f"{where}: modifier indicator '{indicator}' is not 0, 1 or 9")
        edits.append(
            PtpEdit(
                column1=column1,
                column2=column2,
                effective=_date(fields[3], where),
                deletion=deletion,
                modifier_indicator=int(indicator),
                rationale=fields[6] if len(fields) > 6 else "",
                prior_1996=fields[2] == "*",
                source=source,
            )
        )
    return edits


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # older CMS files are not UTF-8


def read_ptp_file(path: Path) -> list[PtpEdit]:
    """The edits of one file: text (tab or comma separated) or a CMS zip archive of
    text files."""
    if path.suffix.lower() == ".zip":
        edits: list[PtpEdit] = []
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                if Path(name).suffix.lower() in (".txt", ".csv", ".tsv"):
                    text = _decode(archive.read(name))
                    edits += parse_ptp(io.StringIO(text), f"{path.name}/{name}")
        return edits
    return parse_ptp(io.StringIO(_decode(path.read_bytes())), path.name)


class PtpTable:
    """PTP edits indexed by code pair."""

    def __init__(self, edits: Iterable[PtpEdit] = ()) -> None:
        self._edits: list[PtpEdit] = list(edits)
        self._pairs: dict[tuple[str, str], list[PtpEdit]] = {}
        for e in self._edits:
            self._pairs.setdefault((e.column1, e.column2), []).append(e)

    def __len__(self) -> int:
        return len(self._edits)

    def __iter__(self) -> Iterator[PtpEdit]:
        return iter(self._edits)

    def edit(self, column1: str, column2: str, on: date) -> PtpEdit | None:
        """The edit in force on ``on`` with these codes in these columns."""
        for e in self._pairs.get((column1.upper(), column2.upper()), ()):
            if e.in_force(on):
                return e
        return None

    def find(self, code_a: str, code_b: str, on: date) -> PtpEdit | None:
        """The edit in force between two codes, in either column order."""
        return self.edit(code_a, code_b, on) or self.edit(code_b, code_a, on)

    def edits_among(self, codes: Sequence[str], on: date) -> list[PtpEdit]:
        """Every edit in force on ``on`` between codes billed together (one patient, one
        provider, one date of service)."""
        unique = list(dict.fromkeys(c.upper() for c in codes))
        out: list[PtpEdit] = []
        for a in unique:
            for b in unique:
                if a != b:
                    e = self.edit(a, b, on)
                    if e is not None:
                        out.append(e)
        return out


def default_ncci_directory() -> Path:
    env = os.environ.get(ENV_DIRECTORY)
    return Path(env) if env else default_directory() / "ncci"


def load_ptp_directory(directory: Path) -> PtpTable:
    """All PTP files (``.txt``, ``.csv``, ``.tsv``, ``.zip``) of a folder, as one
    table."""
    edits: list[PtpEdit] = []
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.suffix.lower() in SUFFIXES and path.is_file():
                edits += read_ptp_file(path)
    return PtpTable(edits)


_table: PtpTable | None = None
_lock = threading.Lock()


def default_table() -> PtpTable:
    """The PTP table of the NCCI folder, read once."""
    global _table
    if _table is None:
        with _lock:
            if _table is None:
                _table = load_ptp_directory(default_ncci_directory())
    return _table


def reset_default_table() -> None:
    global _table
    with _lock:
        _table = None
