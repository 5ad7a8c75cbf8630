"""Manifest CSVs, read the one way the dataset build and screening share.

A manifest is what a user exports from a spreadsheet or a database, so it is read defensively:
UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"), UTF-16 with a mark, and latin-1
(with a warning) when the bytes are not UTF-8; blank lines skipped; every row numbered by the
file line it starts on (quoted newlines included). Problems with the file as a whole (missing,
a directory, no header, duplicate or missing columns) raise `ManifestError`; a row whose field
count differs from the header's (an unquoted `1,234`) is returned as a malformed `Row` so that the
caller reports it by its line and goes on.
"""

import codecs
import csv
import dataclasses
import io
import math
import os
from typing import Optional


class ManifestError(ValueError):
  """The manifest as a whole is unusable (missing, unreadable, no rows, bad header...)."""


@dataclasses.dataclass
class Row:
  line: int                          # file line the row starts on (the header's is usually 1)
  values: dict                       # column -> stripped cell (as far as the cells go)
  problem: Optional[str] = None      # why it is malformed: then `values` only names the row


@dataclasses.dataclass
class Manifest:
  path: str
  columns: list
  rows: list                         # of Row, in file order
  encoding: str
  warnings: list


_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def _decode(path):
  """(text, encoding, warnings) of the file at `path`."""
  if not os.path.exists(path):
    raise ManifestError(f"Manifest {path} does not exist")
  if os.path.isdir(path):
    raise ManifestError(f"Manifest {path} is a directory, not a CSV file")
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ManifestError(f"Manifest {path} cannot be read: {e}") from e
  for bom, encoding in _BOMS:
    if data.startswith(bom):
      return data.decode(encoding), encoding, []
  if b"\x00" in data:
    raise ManifestError(f"Manifest {path} holds NUL bytes: a binary file, not a CSV")
  try:
    return data.decode("utf-8"), "utf-8", []
  except UnicodeDecodeError as e:
    return data.decode("latin-1"), "latin-1", [
        f"Manifest {path} is not UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r}); read "
        "as latin-1: check accented names and units"]


def read(path, required=()):
  """Reads the manifest at `path`; `required` columns must be in its header."""
  text, encoding, warnings = _decode(path)
  reader = csv.reader(io.StringIO(text, newline=""))
  header, rows, line = None, [], 1
  try:
    for cells in reader:
      start, line = line, reader.line_num + 1
      if not any(c.strip() for c in cells):
        continue                                 # a blank line
      if header is None:
        header = [c.strip() for c in cells]
        continue
      values = {h: c.strip() for h, c in zip(header, cells) if h}
      if len(cells) != len(header):
        rows.append(Row(start, values, f"line {start} has {len(cells)} fields but the header "
                        f"has {len(header)} (an unquoted comma or a missing field?)"))
        continue
      rows.append(Row(start, values))
  except csv.Error as e:
    raise ManifestError(f"Manifest {path}, line {reader.line_num}: not a readable CSV: {e}") from e
  if header is None:
    raise ManifestError(f"Manifest {path} is empty (no header line)")
  _check_header(path, header, required)
  if not rows:
    raise ManifestError(f"Manifest {path} has no rows")
  return Manifest(path, [h for h in header if h], rows, encoding, warnings)


def rate_cell(text, column="ecg_fs"):
  """A sampling-rate cell -> Hz, or None when empty; ValueError unless a positive finite number."""
  text = (text or "").strip()
  if not text:
    return None
  try:
    fs = float(text)
  except ValueError:
    raise ValueError(f"column {column!r} holds {text!r}, not a number") from None
  if not (math.isfinite(fs) and fs > 0):
    raise ValueError(f"column {column!r} holds {text!r}, not a positive rate")
  return fs


def header(path):
  """The stripped column names of the manifest's first non-blank line."""
  text, _, _ = _decode(path)
  try:
    for cells in csv.reader(io.StringIO(text, newline="")):
      if any(c.strip() for c in cells):
        return [c.strip() for c in cells]
  except csv.Error as e:
    raise ManifestError(f"Manifest {path}: not a readable CSV: {e}") from e
  return []


def _check_header(path, header, required):
  seen = {}
  for i, name in enumerate(header):
    if name:
      seen.setdefault(name, []).append(i + 1)
  duplicates = {n: cols for n, cols in seen.items() if len(cols) > 1}
  if duplicates:
    raise ManifestError(f"Manifest {path} has duplicate column names: " + ", ".join(
        f"{n!r} (columns {', '.join(map(str, cols))})" for n, cols in duplicates.items()))
  missing = [c for c in required if c not in seen]
  if missing:
    raise ManifestError(f"Manifest {path} lacks the column(s) {missing}; it has "
                        f"{[h for h in header if h]}")
