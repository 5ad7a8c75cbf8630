"""The archive-format ECG readers (data/archive_ecg.py) against writers of their published layouts
(tests/archive_writers.py): samples back within one ADC step, formats known from content, and
each kind of corruption rejected with its reason and the element at fault."""

import os
import re

import numpy as np
import pydicom
import pydicom.data
import pytest
import wfdb

from cardionets_jax.data import archive_ecg
from cardionets_jax.data.preprocess import preprocess_ecg
from cardionets_jax.data.readers import STANDARD_LEADS, RecordError, read_ecg
from tests import archive_writers

UV = 4.88  # MUSE's usual gain, microvolts per ADC step


@pytest.fixture(scope="module")
def adc():
  return archive_writers.random_adc(np.random.default_rng(0))


def _write(tmp_path, fmt, adc, leads=STANDARD_LEADS, fs=500, name=None, **kw):
  path = str(tmp_path / (name or f"ecg_{fmt}.xml"))
  archive_writers.WRITERS[fmt](path, adc, list(leads), fs, UV, **kw)
  return path


@pytest.mark.parametrize("fmt", archive_ecg.FORMATS)
def test_reads_back_the_written_samples_whatever_the_extension(tmp_path, adc, fmt):
  path = _write(tmp_path, fmt, adc, name="export.txt")   # the extension says nothing
  assert archive_ecg.sniff_format(path) == fmt
  record = read_ecg(path, fs=250)                       # the file's own rate wins
  assert record.fs == 500 and record.leads == list(STANDARD_LEADS)
  assert np.abs(record.signal - adc * UV / 1000).max() < UV / 1000


@pytest.mark.parametrize("encoding", ["XLI", "Plain"])
def test_sierra_xli_and_plain_encodings_read_the_same(tmp_path, adc, encoding):
  record = read_ecg(_write(tmp_path, "sierra", adc, encoding=encoding))
  assert record.leads == list(STANDARD_LEADS)
  assert np.abs(record.signal - adc * UV / 1000).max() < UV / 1000


def test_scp_huffman_coded_second_differences_read_the_same(tmp_path, adc):
  record = read_ecg(_write(tmp_path, "scp", adc, name="huffman.scp", huffman=True))
  assert np.abs(record.signal - adc * UV / 1000).max() < UV / 1000


def test_muse_eight_leads_get_their_limb_leads_derived(tmp_path, adc):
  eight = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
  record = read_ecg(_write(tmp_path, "muse", adc[:8], leads=eight))
  assert record.leads == list(eight)
  _, mask, info = preprocess_ecg(record)
  assert mask.all() and info["leads_derived"] == ["III", "aVR", "aVL", "aVF"]


def _corrupt(path, old, new, count=1):
  with open(path, "rb") as f:
    data = f.read()
  assert old in data, old
  with open(path, "wb") as f:
    f.write(data.replace(old, new, count))


def _rejects(path, reason, *words):
  with pytest.raises(RecordError) as e:
    read_ecg(path)
  assert e.value.reason == reason, str(e.value)
  for word in (os.path.basename(path),) + words:
    assert word in str(e.value), (word, str(e.value))


def test_muse_corrupted_samples_fail_their_crc(tmp_path, adc):
  path = _write(tmp_path, "muse", adc, median=False)
  data = open(path, "rb").read()
  start = data.index(b"<WaveFormData>") + len(b"<WaveFormData>") + 40
  flipped = b"B" if data[start:start + 1] != b"B" else b"C"
  with open(path, "wb") as f:
    f.write(data[:start] + flipped + data[start + 1:])
  _rejects(path, "unreadable", "lead 'I'", "LeadDataCRC32")


def test_muse_without_rhythm_names_the_waveforms_found(tmp_path, adc):
  path = _write(tmp_path, "muse", adc)
  _corrupt(path, b"<WaveformType>Rhythm<", b"<WaveformType>Other<")
  _rejects(path, "unreadable", "Rhythm", "'Median', 'Other'")


def test_muse_sample_count_disagreeing_with_its_data(tmp_path, adc):
  path = _write(tmp_path, "muse", adc, median=False)
  _corrupt(path, b"<LeadSampleCountTotal>5000<", b"<LeadSampleCountTotal>5001<")
  _rejects(path, "length_mismatch", "lead 'I'", "LeadSampleCountTotal")


def test_cardiosoft_truncated_lead_and_bad_value(tmp_path, adc):
  path = _write(tmp_path, "cardiosoft", adc)
  text = open(path).read()
  v3 = re.search(r'lead="V3">([^<]*)<', text).group(1)
  open(path, "w").write(text.replace(v3, v3.rsplit(",", 1)[0]))   # its last sample gone
  _rejects(path, "length_mismatch", "lead 'V3'", "ChannelSampleCountTotal")
  path = _write(tmp_path, "cardiosoft", adc, name="bad_value.xml")
  _corrupt(path, b'lead="aVL">', b'lead="aVL">x7,')
  _rejects(path, "unreadable", "lead 'aVL'", "integers")


def test_hl7_aecg_missing_increment_and_non_voltage_scale(tmp_path, adc):
  path = _write(tmp_path, "hl7_aecg", adc)
  text = open(path).read()
  open(path, "w").write(re.sub(r"<increment [^>]*/>", "", text))
  _rejects(path, "sampling_rate", "increment")
  path = _write(tmp_path, "hl7_aecg", adc, name="units.xml")
  _corrupt(path, f'<scale value="{UV}" unit="uV"/>'.encode(),
           f'<scale value="{UV}" unit="mmHg"/>'.encode())
  _rejects(path, "amplitude_units", "MDC_ECG_LEAD_I", "mmHg")


def test_sierra_truncated_waveform_data(tmp_path, adc):
  path = _write(tmp_path, "sierra", adc)
  text = open(path).read()
  data = re.search(r'leadlabels="[^"]*">([^<]*)<', text).group(1)
  open(path, "w").write(text.replace(data, data[: len(data) // 2 // 4 * 4]))
  _rejects(path, "unreadable", "parsedwaveforms", "expected")


def test_scp_corrupted_byte_fails_its_checksum(tmp_path, adc):
  path = _write(tmp_path, "scp", adc, name="ecg.scp")
  data = bytearray(open(path, "rb").read())
  data[-100] ^= 0xFF                                     # inside Section 6's samples
  open(path, "wb").write(bytes(data))
  _rejects(path, "unreadable", "checksum")


def test_xml_entities_are_refused_and_unknown_roots_unsupported(tmp_path, adc):
  path = _write(tmp_path, "muse", adc)
  _corrupt(path, b'<!DOCTYPE RestingECG SYSTEM "restecg.dtd">',
           b'<!DOCTYPE RestingECG [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>')
  _corrupt(path, b"<MuseVersion>9.0.9.18167", b"<MuseVersion>&b;")
  _rejects(path, "unreadable", "refused")
  other = tmp_path / "other.xml"
  other.write_text('<?xml version="1.0"?>\n<Invoice><Total>3</Total></Invoice>\n')
  _rejects(str(other), "unsupported_format", "MUSE")


def _mortara():
  """pydicom's Mortara 12-lead ECG: its rhythm group's raw int16 samples, lead names, rate."""
  path = pydicom.data.get_testdata_file("waveform_ecg.dcm")
  group = pydicom.dcmread(path).WaveformSequence[0]
  assert {float(c.ChannelSensitivity) for c in group.ChannelDefinitionSequence} == {1.25}
  raw = np.frombuffer(group.WaveformData, "<i2").reshape(group.NumberOfWaveformSamples, -1).T
  return path, raw, read_ecg(path).leads, float(group.SamplingFrequency)


def test_mortara_dicom_and_its_muse_aecg_wfdb_copies_store_the_same_ecg(tmp_path):
  dicom_path, raw, leads, fs = _mortara()
  copies = {}
  for fmt in ("muse", "hl7_aecg"):
    copies[fmt] = str(tmp_path / f"mortara_{fmt}.xml")
    archive_writers.WRITERS[fmt](copies[fmt], raw, leads, fs, 1.25)
  wfdb.wrsamp("mortara", fs=fs, units=["mV"] * 12, sig_name=leads, d_signal=raw.T.astype(int),
              fmt=["16"] * 12, adc_gain=[800.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
  copies["wfdb"] = str(tmp_path / "mortara.hea")
  stored, mask, _ = preprocess_ecg(read_ecg(dicom_path))
  assert mask.all()
  for fmt, path in copies.items():
    other, other_mask, _ = preprocess_ecg(read_ecg(path))
    np.testing.assert_array_equal(other_mask, mask)
    assert np.abs(other - stored).max() <= 1.25e-3, fmt   # one ADC step of the Mortara file
