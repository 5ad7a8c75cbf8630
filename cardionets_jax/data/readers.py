"""Readers for raw 12-lead ECGs and cine CMRs, with precise, named failures: the one public entry.

The rest of the tree imports the readers from here; the code lives in four modules:
  * ecg_readers.py: `read_ecg` (WFDB, DICOM waveform, `.npy`, `.csv`, and the archive formats
    through archive_ecg.py), `EcgRecord`, `STANDARD_LEADS`, `canonical_lead`, and the
    sampling-rate and unit helpers;
  * archive_ecg.py: GE MUSE and CardioSoft XML, HL7 aECG, Philips Sierra XML, SCP-ECG;
  * cmr_readers.py: `read_cmr` (NIfTI, DICOM series / multi-frame, `.npy`, `.npz`);
  * record_errors.py: `RecordError` and its `REASONS`, shared by both.

Every failure raises `RecordError` with a machine-readable `reason` (one of `REASONS`) and a message
that names the file, and the lead or field where one is at fault, so a dataset build can record why
a row was rejected instead of dropping it silently. No pickle is ever loaded.
"""

from cardionets_jax.data.cmr_readers import read_cmr
from cardionets_jax.data.ecg_readers import (STANDARD_LEADS, EcgRecord, _lead_from_code,
                                             canonical_lead, read_ecg)
from cardionets_jax.data.record_errors import REASONS, RecordError

__all__ = ["REASONS", "STANDARD_LEADS", "EcgRecord", "RecordError", "_lead_from_code",
           "canonical_lead", "read_cmr", "read_ecg"]
