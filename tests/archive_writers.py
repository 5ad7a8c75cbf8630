"""Writers of the ECG archive formats, for test fixtures: each follows its format's published
layout and shares no code with the readers in cardionets_jax/data/archive_ecg.py.

Every writer takes integer ADC samples `adc` (n_leads, T), their lead names as the format spells
them, the rate in Hz and the gain in microvolts per ADC step, so a reader's output can be
compared with `adc * uv_per_step / 1000` mV.
"""

import base64
import binascii
import struct
import zlib

import numpy as np


def _xml(body):
  return '<?xml version="1.0" encoding="UTF-8"?>\n' + body


def write_muse(path, adc, leads, fs, uv_per_step, *, median=True):
  """GE MUSE XML (RestingECG): a Rhythm waveform of base64 little-endian int16 leads with
  their CRC32, after a Median waveform (which a reader must skip)."""
  def waveform(kind, data):
    items = "".join(f"""
    <LeadData>
      <LeadByteCountTotal>{2 * d.size}</LeadByteCountTotal>
      <LeadTimeOffset>0</LeadTimeOffset>
      <LeadSampleCountTotal>{d.size}</LeadSampleCountTotal>
      <LeadAmplitudeUnitsPerBit>{uv_per_step}</LeadAmplitudeUnitsPerBit>
      <LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>
      <LeadID>{name}</LeadID>
      <LeadOffsetFirstSample>0</LeadOffsetFirstSample>
      <LeadSampleSize>2</LeadSampleSize>
      <LeadDataCRC32>{zlib.crc32(d.astype('<i2').tobytes())}</LeadDataCRC32>
      <WaveFormData>{base64.b64encode(d.astype('<i2').tobytes()).decode()}</WaveFormData>
    </LeadData>""" for name, d in zip(leads, data))
    return f"""
  <Waveform>
    <WaveformType>{kind}</WaveformType>
    <WaveformStartTime>0</WaveformStartTime>
    <NumberofLeads>{len(leads)}</NumberofLeads>
    <SampleType>CONTINUOUS_SAMPLES</SampleType>
    <SampleBase>{fs:g}</SampleBase>
    <SampleExponent>0</SampleExponent>{items}
  </Waveform>"""
  body = waveform("Median", adc[:, : int(fs)] // 2) if median else ""
  with open(path, "w") as f:
    f.write(_xml(f"""<!DOCTYPE RestingECG SYSTEM "restecg.dtd">
<RestingECG>
  <MuseInfo><MuseVersion>9.0.9.18167</MuseVersion></MuseInfo>
  <PatientDemographics><PatientID>TEST0001</PatientID></PatientDemographics>{body}{waveform("Rhythm", adc)}
</RestingECG>
"""))


def write_cardiosoft(path, adc, leads, fs, uv_per_step):
  """GE CardioSoft XML (UK Biobank field 20205): the 10 s <StripData>, one comma-separated
  <WaveformData lead=...> per lead."""
  data = "".join(f'\n    <WaveformData lead="{name}">{",".join(map(str, d))}</WaveformData>'
                 for name, d in zip(leads, adc))
  with open(path, "w") as f:
    f.write(_xml(f"""<CardiologyXML>
  <ObservationType>RestECG</ObservationType>
  <FilterSetting><CubicSpline>Yes</CubicSpline><Filter50Hz>Yes</Filter50Hz>
    <LowPass units="Hz">150</LowPass><HighPass units="Hz">0.04</HighPass></FilterSetting>
  <StripData>
    <NumberOfLeads>{len(leads)}</NumberOfLeads>
    <SampleRate units="Hz">{fs:g}</SampleRate>
    <ChannelSampleCountTotal>{adc.shape[1]}</ChannelSampleCountTotal>
    <Resolution units="uVperLsb">{uv_per_step}</Resolution>{data}
  </StripData>
</CardiologyXML>
"""))


def write_hl7_aecg(path, adc, leads, fs, uv_per_step):
  """HL7 aECG (AnnotatedECG, urn:hl7-org:v3): one rhythm series, a TIME_ABSOLUTE sequence
  (GLIST_TS with the sample increment) and an SLIST_PQ sequence per lead (MDC lead codes)."""
  seqs = "".join(f"""
        <component><sequence>
          <code code="MDC_ECG_LEAD_{name.upper()}" codeSystem="2.16.840.1.113883.6.24"/>
          <value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/>
            <scale value="{uv_per_step}" unit="uV"/><digits>{" ".join(map(str, d))}</digits></value>
        </sequence></component>""" for name, d in zip(leads, adc))
  with open(path, "w") as f:
    f.write(_xml(f"""<AnnotatedECG xmlns="urn:hl7-org:v3"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <id root="2.16.840.1.113883.3.1"/>
  <code code="93000" codeSystem="2.16.840.1.113883.6.12"/>
  <component><series>
    <code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>
    <component><sequenceSet>
        <component><sequence>
          <code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>
          <value xsi:type="GLIST_TS"><head value="20020606123000.000"/>
            <increment value="{1.0 / fs:.6g}" unit="s"/></value>
        </sequence></component>{seqs}
    </sequenceSet></component>
  </series></component>
</AnnotatedECG>
"""))


def _lzw(data, bits=10):
  """LZW with fixed `bits`-bit codes packed most significant bit first, the dictionary growing
  to 2**bits - 2 entries and then frozen (the XLI variant)."""
  table, next_code, word, codes = {bytes([i]): i for i in range(256)}, 256, b"", []
  for byte in data:
    longer = word + bytes([byte])
    if longer in table:
      word = longer
      continue
    codes.append(table[word])
    if next_code <= (1 << bits) - 2:
      table[longer], next_code = next_code, next_code + 1
    word = bytes([byte])
  codes.append(table[word])
  value = int("".join(format(c, f"0{bits}b") for c in codes) + "0" * (-len(codes) * bits % 8), 2)
  return value.to_bytes(len(codes) * bits // 8 + bool(len(codes) * bits % 8), "big")


def _xli(adc, leads):
  """Philips XLI: per lead, second differences of the samples (offset 64, the first one in the
  chunk header), as 16-bit words stored high bytes then low bytes, LZW-compressed; leads III,
  aVR, aVL, aVF stored as their residuals from I and II."""
  x = adc.astype(np.int64)
  if tuple(leads[:6]) == ("I", "II", "III", "aVR", "aVL", "aVF"):
    i, ii, iii = x[0], x[1], x[2]
    x = x.copy()
    x[2], x[3] = ii - i - iii, -x[3] - (i + ii) // 2
    x[4], x[5] = (i - iii) // 2 - x[4], (ii + iii) // 2 - x[5]
  chunks = b""
  for s in x:
    raw = np.zeros_like(s)
    raw[:2] = s[:2]
    raw[2:-1] = 2 * s[2:-1] - s[1:-2] - s[3:] + 64
    words = raw.astype(np.int16).view(np.uint16)
    packed = _lzw(bytes((words >> 8).astype(np.uint8)) + bytes((words & 0xFF).astype(np.uint8)))
    chunks += struct.pack("<ihh", len(packed), 0, int(2 * s[1] - s[0] - s[2])) + packed
  return chunks


def write_sierra(path, adc, leads, fs, uv_per_step, *, encoding="Base64"):
  """Philips Sierra XML 1.04 (restingecgdata): leads XLI-compressed (encoding="XLI", what the
  carts write), or uncompressed as Base64 little-endian int16 lead after lead, or "Plain"
  whitespace-separated integers."""
  flat = adc.astype("<i2")
  if encoding == "XLI":
    text, encoding, compression = base64.b64encode(_xli(adc, leads)).decode(), "Base64", "XLI"
  else:
    compression = "None"
    text = (base64.b64encode(flat.tobytes()).decode() if encoding == "Base64"
            else " ".join(map(str, flat.ravel())))
  with open(path, "w") as f:
    f.write(_xml(f"""<restingecgdata xmlns="http://www3.medical.philips.com">
  <documentinfo><documenttype>SierraECG</documenttype><documentversion>1.04</documentversion>
  </documentinfo>
  <dataacquisition date="2010-01-01" time="12:00:00">
    <signalcharacteristics>
      <samplingrate>{fs:g}</samplingrate><resolution>{uv_per_step}</resolution>
      <acquisitiontype>STD-12</acquisitiontype><bitspersample>16</bitspersample>
      <signaloffset>0</signaloffset><signalsigned>true</signalsigned>
      <numberchannelsvalid>{len(leads)}</numberchannelsvalid>
      <numberchannelsallocated>{len(leads)}</numberchannelsallocated>
    </signalcharacteristics>
  </dataacquisition>
  <waveforms>
    <parsedwaveforms durationperchannel="{adc.shape[1] * 1000 / fs:g}" samplespersecond="{fs:g}"
        dataencoding="{encoding}" compressflag="{compression != 'None'}"
        compression="{compression}" numberofleads="{len(leads)}"
        leadlabels="{" ".join(leads)}">{text}</parsedwaveforms>
  </waveforms>
</restingecgdata>
"""))


# SCP-ECG lead codes (EN 1064, Section 3 table).
SCP_LEAD_CODES = {"I": 1, "II": 2, **{f"V{k}": k + 2 for k in range(1, 7)},
                  "III": 61, "aVR": 62, "aVL": 63, "aVF": 64}


def _scp_section(number, body, *, section0=False):
  """A section: CRC, id, length, version 20, protocol 20, reserved ("SCPECG" in Section 0)."""
  body = body + b"\0" * (len(body) % 2)               # sections are an even number of bytes
  head = struct.pack("<HIBB6s", number, 16 + len(body), 20, 20,
                     b"SCPECG" if section0 else b"\0" * 6)
  rest = head + body
  return struct.pack("<H", binascii.crc_hqx(rest, 0xFFFF)) + rest


def _scp_default_huffman(values):
  """EN 1064's default Huffman table: 0 -> "0"; +-m (m <= 8) -> m ones, "0", the sign bit;
  else "1111111110" + 8 bits or "1111111111" + 16 bits, two's complement. MSB first."""
  bits = []
  for v in values:
    v = int(v)
    if v == 0:
      bits.append("0")
    elif abs(v) <= 8:
      bits.append("1" * abs(v) + "0" + ("1" if v < 0 else "0"))
    elif -128 <= v < 128:
      bits.append("1111111110" + format(v & 0xFF, "08b"))
    else:
      bits.append("1111111111" + format(v & 0xFFFF, "016b"))
  text = "".join(bits)
  text += "0" * (-len(text) % 8)
  return int(text, 2).to_bytes(len(text) // 8, "big")


def write_scp(path, adc, leads, fs, uv_per_step, *, huffman=False):
  """SCP-ECG 2.0: Sections 0 (pointers), 1 (patient and device tags), 3 (lead definitions) and
  6 (rhythm data): int16 samples, or with `huffman` second differences coded by the default
  Huffman table (Section 2 naming it), as the carts store them."""
  n = adc.shape[1]
  tags = [(2, b"TEST0001\0"), (14, b"\0" * 36 + b"TEST\0"), (25, struct.pack("<HBB", 2010, 1, 1)),
          (26, bytes([12, 0, 0])), (255, b"")]
  sec1 = b"".join(struct.pack("<BH", t, len(v)) + v for t, v in tags)
  sec3 = struct.pack("<BB", len(leads), 0x04 | (len(leads) << 3)) + b"".join(
      struct.pack("<IIB", 1, n, SCP_LEAD_CODES[name]) for name in leads)
  if huffman:
    x = adc.astype(np.int64)
    second = np.concatenate([x[:, :2], x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2]], axis=1)
    data = [_scp_default_huffman(d) for d in second]
  else:
    data = [d.astype("<i2").tobytes() for d in adc]
  sec6 = (struct.pack("<HHBB", int(round(uv_per_step * 1000)), int(round(1e6 / fs)),
                      2 if huffman else 0, 0)
          + b"".join(struct.pack("<H", len(d)) for d in data) + b"".join(data))
  bodies = {1: sec1, 3: sec3, 6: sec6, **({2: struct.pack("<H", 19999)} if huffman else {})}
  sections, offset = {}, 6 + 16 + 12 * 10             # Section 0 holds 12 pointers of 10 bytes
  sizes = {k: len(_scp_section(k, b)) for k, b in bodies.items()}
  pointers = [(0, 16 + 120, 7)]
  for k in range(1, 12):
    if k in bodies:
      pointers.append((k, sizes[k], offset + 1))
      sections[k], offset = _scp_section(k, bodies[k]), offset + sizes[k]
    else:
      pointers.append((k, 0, 0))
  sec0 = _scp_section(0, b"".join(struct.pack("<HII", *p) for p in pointers), section0=True)
  record = sec0 + b"".join(sections[k] for k in sorted(sections))
  rest = struct.pack("<I", 6 + len(record)) + record
  with open(path, "wb") as f:
    f.write(struct.pack("<H", binascii.crc_hqx(rest, 0xFFFF)) + rest)


WRITERS = {"muse": write_muse, "cardiosoft": write_cardiosoft, "hl7_aecg": write_hl7_aecg,
           "sierra": write_sierra, "scp": write_scp}


def random_adc(rng, n_leads=12, seconds=10, fs=500, amplitude_steps=400):
  """Integer ADC samples: a smooth, ECG-scaled random signal per lead (not flat, not constant)."""
  t = np.arange(int(seconds * fs)) / fs
  waves = [amplitude_steps * np.sin(2 * np.pi * f * t + p) for f, p in rng.uniform(0.5, 8, (n_leads, 2))]
  return (np.asarray(waves) + rng.integers(-20, 20, (n_leads, t.size))).astype(np.int16)


def write_ukb_lax_zip(path, cines, *, shuffle=True, seed=0):
  """A UK Biobank field-20208 zip: one single-frame MR DICOM per frame of each cine in `cines`
  ({SeriesDescription: (F, H, W) uint16}), each series its own SeriesInstanceUID, frames with
  TriggerTime 20 ms apart (and InstanceNumber from 1), members in a shuffled order under
  scanner-style names, and the zip's "manifest.cvs" index."""
  import io
  import zipfile

  import pydicom
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid

  members, rng = [], np.random.default_rng(seed)
  for description, cine in cines.items():
    series = generate_uid()
    for f, frame in enumerate(np.asarray(cine, np.uint16)):
      uid = generate_uid()
      meta = FileMetaDataset()
      meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", uid
      meta.TransferSyntaxUID = ExplicitVRLittleEndian
      ds = Dataset()
      ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, "1.2.840.10008.5.1.4.1.1.4", uid
      ds.Modality, ds.PatientID, ds.SeriesInstanceUID = "MR", "1000001", series
      ds.SeriesDescription, ds.InstanceNumber, ds.TriggerTime = description, f + 1, f"{20.0 * f:g}"
      ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
      ds.Rows, ds.Columns = frame.shape
      ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
      ds.PixelData = frame.astype("<u2").tobytes()
      buffer = io.BytesIO()
      pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
      members.append((f"{uid}.dcm", buffer.getvalue()))
  order = rng.permutation(len(members)) if shuffle else np.arange(len(members))
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("manifest.cvs", "filename,patientid,seriesdescription\n" + "".join(
        f"{name},1000001,\n" for name, _ in members))
    for i in order:
      z.writestr(*members[i])
  return path
