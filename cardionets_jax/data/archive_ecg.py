"""ECG archive formats: GE MUSE XML, GE CardioSoft XML (UK Biobank), HL7 aECG, Philips Sierra
XML and SCP-ECG, each recognised from the file's content, read into an `EcgRecord` in mV.

`sniff_format` names the format from the first bytes (the XML root element, or SCP-ECG's
Section 0 header), so a MUSE export named `.txt` or a UK Biobank `.xml` is read by the right
reader. XML is parsed with defusedxml (no entity expansion, no external resources).

MUSE, CardioSoft and HL7 aECG are read by our own code (each a short, documented schema).
Sierra XML (XLI-compressed leads) and SCP-ECG (Huffman-coded, reference-beat-subtracted leads)
are decoded by ECGDataKit's parsers, whose output we convert to mV and check like every other
record; a checksum warning from them is a rejection, not a note.

Failures raise `RecordError` with the reason and the element or field at fault.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import re
import warnings
import zlib

import numpy as np

from cardionets_jax.data.ecg_readers import (EcgRecord, _canonical_leads, _check_fs,
                                             _reconcile_fs, _unit_scale)
from cardionets_jax.data.record_errors import _fail

_XML_ROOTS = {"restingecg": "muse", "cardiologyxml": "cardiosoft", "annotatedecg": "hl7_aecg",
              "restingecgdata": "sierra"}
FORMATS = ("muse", "cardiosoft", "hl7_aecg", "sierra", "scp")


def sniff_format(path) -> str | None:
  """One of FORMATS from the file's first 4 kB, or None when it is none of them."""
  try:
    with open(path, "rb") as f:
      head = f.read(4096)
  except OSError:
    return None
  if _is_scp(head):
    return "scp"
  text = re.sub(r"<!--.*?-->", "", head.decode("latin-1"), flags=re.S)
  text = text.lstrip("\xef\xbb\xbf \r\n\t")  # a UTF-8 byte-order mark, read as latin-1
  # The root: the first element that is not a declaration, a comment or the DOCTYPE.
  m = re.search(r"<(?![?!])(?:[\w.-]+:)?([\w.-]+)", text) if text.startswith("<") else None
  return _XML_ROOTS.get(m.group(1).lower()) if m else None


def _is_scp(head):
  """SCP-ECG (EN 1064): a 6-byte preamble (CRC, record size), then Section 0, whose header says
  id 0 and a length of 16 + 10 bytes per pointer, and whose first pointer is itself at byte 7."""
  if len(head) < 32:
    return False
  u16, u32 = (lambda i: int.from_bytes(head[i:i + 2], "little"),
              lambda i: int.from_bytes(head[i:i + 4], "little"))
  return (u16(8) == 0 and u32(10) >= 26 and (u32(10) - 16) % 10 == 0
          and u16(22) == 0 and u32(28) == 7 and u32(2) >= 6 + u32(10))


def read_archive_ecg(path, fmt, fs=None, strict_fs=False) -> EcgRecord:
  """The record of `path` in format `fmt` (one of FORMATS), in mV with canonical lead names;
  the file's own rate wins over `fs` as in `read_ecg`."""
  signal, file_fs, names = _READERS[fmt](path)
  file_fs = _check_fs(path, file_fs, f"the {fmt} file")
  return EcgRecord(signal=np.ascontiguousarray(signal), leads=_canonical_leads(names, path),
                   fs=_reconcile_fs(path, file_fs, fs, strict_fs), path=path)


# ------------------------------------------------------------------------------------------------
# XML helpers
# ------------------------------------------------------------------------------------------------

def _parse_xml(path):
  import defusedxml.ElementTree as SafeET  # pylint: disable=import-outside-toplevel
  from defusedxml import DefusedXmlException  # pylint: disable=import-outside-toplevel

  try:
    return SafeET.parse(path).getroot()
  except DefusedXmlException as e:
    _fail("unreadable", path, f"XML refused (entities or external references): {e}")
  except Exception as e:  # pylint: disable=broad-except  (ParseError, OSError)
    _fail("unreadable", path, f"cannot parse XML: {type(e).__name__}: {e}")


def _find(node, path):
  """`node.find` with any namespace: "a/b" matches {ns}a/{ns}b."""
  return node.find("/".join(f"{{*}}{p}" if p not in (".", "..") else p for p in path.split("/")))


def _findall(node, path):
  return node.findall("/".join(f"{{*}}{p}" for p in path.split("/")))


def _text(node, path, where, file_path, required=True):
  child = _find(node, path)
  value = None if child is None or child.text is None else child.text.strip()
  if required and not value:
    _fail("unreadable", file_path, f"{where}: no <{path}>")
  return value


def _number(node, path, where, file_path, kind=float, default=None):
  """The number in <path>; `default` when the element is absent (None: it is required)."""
  value = _text(node, path, where, file_path, required=default is None)
  if value is None:
    return default
  try:
    return kind(value)
  except ValueError:
    _fail("unreadable", file_path, f"{where}: <{path}> is {value!r}, not a number")


def _volts_scale(unit, where, path, field):
  """mV per unit for unit spellings of the archive formats ("MICROVOLTS", "uVperLsb", "uV")."""
  spelled = {"microvolts": "uV", "millivolts": "mV", "volts": "V", "nanovolts": "nV"}
  u = (unit or "").strip()
  u = re.sub(r"(?i)\s*(per\s*lsb|/\s*lsb|/\s*bit)$", "", u)
  scale = _unit_scale(spelled.get(u.lower(), u))
  if scale is None:
    _fail("amplitude_units", path, f"{where}: {field} is in {unit!r}, not a voltage unit")
  return scale


def _one_length(lengths, path, what):
  if len(set(lengths.values())) > 1:
    _fail("length_mismatch", path, f"{what} differ in length: "
          + ", ".join(f"{k} {v}" for k, v in lengths.items()))


# ------------------------------------------------------------------------------------------------
# GE MUSE XML: <RestingECG><Waveform><WaveformType>Rhythm ... <LeadData>... base64 int16
# ------------------------------------------------------------------------------------------------

def _read_muse(path):
  root = _parse_xml(path)
  waves = _findall(root, "Waveform")
  types = [_text(w, "WaveformType", "Waveform", path, required=False) for w in waves]
  if "Rhythm" not in types:
    _fail("unreadable", path, f"no <Waveform> of <WaveformType> Rhythm (found {types})")
  wave = waves[types.index("Rhythm")]
  where = "Rhythm waveform"
  fs = _number(wave, "SampleBase", where, path) * 10.0 ** _number(
      wave, "SampleExponent", where, path, int, default=0)
  names, leads = [], []
  for item in _findall(wave, "LeadData"):
    name = _text(item, "LeadID", f"{where}, <LeadData>", path)
    names.append(name)
    leads.append(_muse_lead(item, f"{where}, lead {name!r}", path))
  if not leads:
    _fail("unreadable", path, f"{where} has no <LeadData>")
  _one_length(dict(zip(names, map(len, leads))), path, "MUSE leads")
  return np.stack(leads), fs, names


def _muse_lead(item, where, path):
  size = _number(item, "LeadSampleSize", where, path, int, default=2)
  if size != 2:
    _fail("unreadable", path, f"{where}: <LeadSampleSize> {size}, expected 2 (int16)")
  try:
    raw = base64.b64decode(_text(item, "WaveFormData", where, path), validate=False)
  except binascii.Error as e:
    _fail("unreadable", path, f"{where}: <WaveFormData> is not base64: {e}")
  count = _number(item, "LeadSampleCountTotal", where, path, int)
  if len(raw) != 2 * count:
    _fail("length_mismatch", path, f"{where}: <LeadSampleCountTotal> {count} needs {2 * count} "
          f"bytes but <WaveFormData> holds {len(raw)}")
  crc = _text(item, "LeadDataCRC32", where, path, required=False)
  if crc and int(crc) != zlib.crc32(raw):
    _fail("unreadable", path, f"{where}: <LeadDataCRC32> {crc} does not match its "
          f"<WaveFormData> ({zlib.crc32(raw)}): the samples are corrupted")
  per_bit = _number(item, "LeadAmplitudeUnitsPerBit", where, path)
  scale = _volts_scale(_text(item, "LeadAmplitudeUnits", where, path), where, path,
                       "<LeadAmplitudeUnits>")
  return np.frombuffer(raw, "<i2").astype(np.float64) * per_bit * scale


# ------------------------------------------------------------------------------------------------
# GE CardioSoft XML (UK Biobank field 20205): <CardiologyXML><StripData>, comma-separated ints
# ------------------------------------------------------------------------------------------------

def _read_cardiosoft(path):
  root = _parse_xml(path)
  strip = _find(root, "StripData")
  strip = strip if strip is not None else _find(root, "Strip/StripData")
  if strip is None:
    _fail("unreadable", path, "no <StripData> (the 10 s 12-lead strip)")
  where = "<StripData>"
  rate = _find(strip, "SampleRate")
  fs = _number(strip, "SampleRate", where, path)
  if rate is not None and rate.get("units", "Hz").lower() not in ("hz", ""):
    _fail("sampling_rate", path, f"{where}: <SampleRate> in {rate.get('units')!r}, not Hz")
  resolution = _number(strip, "Resolution", where, path)
  scale = _volts_scale(_find(strip, "Resolution").get("units", "uVperLsb"), where, path,
                       "<Resolution units>")
  count = _number(strip, "ChannelSampleCountTotal", where, path, int, default=-1)
  names, leads = [], []
  for item in _findall(strip, "WaveformData"):
    name = item.get("lead")
    if not name:
      _fail("unreadable", path, f"{where}: a <WaveformData> without its lead attribute")
    values = _int_list(item.text, f"{where}, lead {name!r}", path, ",")
    if count >= 0 and len(values) != count:
      _fail("length_mismatch", path, f"{where}, lead {name!r}: <ChannelSampleCountTotal> "
            f"{count} but {len(values)} samples")
    names.append(name)
    leads.append(values * resolution * scale)
  if not leads:
    _fail("unreadable", path, f"{where} has no <WaveformData>")
  _one_length(dict(zip(names, map(len, leads))), path, "CardioSoft leads")
  return np.stack(leads), fs, names


def _int_list(text, where, path, sep):
  cells = [c for c in re.split(sep if sep != " " else r"\s+", (text or "").strip()) if c.strip()]
  try:
    return np.asarray([int(c) for c in cells], np.float64)
  except ValueError as e:
    _fail("unreadable", path, f"{where}: sample data is not a list of integers ({e})")


# ------------------------------------------------------------------------------------------------
# HL7 aECG: <AnnotatedECG><component><series><component><sequenceSet><component><sequence>
# ------------------------------------------------------------------------------------------------

_AECG_TIME = ("TIME_ABSOLUTE", "TIME_RELATIVE")
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def _read_hl7_aecg(path):
  root = _parse_xml(path)
  sets = _findall(root, "component/series/component/sequenceSet")
  if not sets:
    _fail("unreadable", path, "no <series>/<sequenceSet> (the rhythm waveforms)")
  fs, names, leads = None, [], []
  for seq in _findall(sets[0], "component/sequence"):
    code = _find(seq, "code")
    name = code.get("code", "") if code is not None else ""
    value = _find(seq, "value")
    if value is None:
      _fail("unreadable", path, f"sequence {name!r}: no <value>")
    if name in _AECG_TIME:
      fs = _aecg_rate(value, name, path)
    else:
      names.append(name)
      leads.append(_aecg_lead(value, f"sequence {name!r}", path))
  if fs is None:
    _fail("sampling_rate", path, "no TIME_ABSOLUTE / TIME_RELATIVE sequence with an <increment>")
  if not leads:
    _fail("unreadable", path, "the sequenceSet holds no lead sequences")
  _one_length(dict(zip(names, map(len, leads))), path, "aECG sequences")
  return np.stack(leads), fs, names


def _aecg_rate(value, name, path):
  inc = _find(value, "increment")
  if inc is None:
    _fail("sampling_rate", path, f"sequence {name!r}: no <increment>")
  unit = inc.get("unit", "s")
  try:
    step = float(inc.get("value")) * _SECONDS[unit]
  except (TypeError, ValueError, KeyError):
    _fail("sampling_rate", path, f"sequence {name!r}: <increment value={inc.get('value')!r} "
          f"unit={unit!r}> is not a time step")
  if step <= 0:
    _fail("sampling_rate", path, f"sequence {name!r}: <increment> {step} s is not positive")
  return 1.0 / step


def _aecg_lead(value, where, path):
  def quantity(tag):
    node = _find(value, tag)
    if node is None:
      _fail("unreadable", path, f"{where}: no <{tag}>")
    try:
      number = float(node.get("value"))
    except (TypeError, ValueError):
      _fail("unreadable", path, f"{where}: <{tag} value={node.get('value')!r}> is not a number")
    return number, _volts_scale(node.get("unit"), where, path, f"<{tag} unit>")

  (origin, origin_mv), (scale, scale_mv) = quantity("origin"), quantity("scale")
  digits = _int_list(_text(value, "digits", where, path), where, path, " ")
  return origin * origin_mv + digits * scale * scale_mv


# ------------------------------------------------------------------------------------------------
# Philips Sierra XML and SCP-ECG, decoded by ECGDataKit
# ------------------------------------------------------------------------------------------------

def _read_with_ecgdatakit(path, parser_name):
  from ecgdatakit import exceptions  # pylint: disable=import-outside-toplevel

  module, cls = parser_name.rsplit(".", 1)
  parser = getattr(importlib.import_module(f"ecgdatakit.parsing.parsers.{module}"), cls)()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      record = parser.parse(path)
    except (exceptions.ECGDataKitError, ValueError, KeyError, IndexError) as e:
      _fail("unreadable", path, f"{type(e).__name__}: {e}")
  bad = [str(w.message) for w in caught if issubclass(w.category, exceptions.ChecksumWarning)]
  if bad:
    _fail("unreadable", path, f"checksum mismatch: {bad[0]}")
  if not record.leads:
    _fail("unreadable", path, "no leads")
  names, leads, rates = [], [], set()
  for lead in record.leads:
    where = f"lead {lead.label!r}"
    unit = lead.resolution_unit if lead.is_raw else lead.units
    scale = _volts_scale(unit, where, path, "its resolution unit")
    values = np.asarray(lead.samples, np.float64)
    if lead.is_raw:
      values = values * lead.resolution + lead.offset
    names.append(lead.label)
    leads.append(values * scale)
    rates.add(float(lead.sampling_rate))
  if len(rates) != 1:
    _fail("sampling_rate", path, f"leads at different rates {sorted(rates)} Hz")
  _one_length(dict(zip(names, map(len, leads))), path, "leads")
  return np.stack(leads), rates.pop(), names


_READERS = {
    "muse": _read_muse,
    "cardiosoft": _read_cardiosoft,
    "hl7_aecg": _read_hl7_aecg,
    "sierra": lambda p: _read_with_ecgdatakit(p, "sierra_xml.SierraXMLParser"),
    "scp": lambda p: _read_with_ecgdatakit(p, "scp_ecg.SCPECGParser"),
}

__all__ = ["FORMATS", "read_archive_ecg", "sniff_format"]
