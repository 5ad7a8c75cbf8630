"""Screening: ECG files in, phenotypes, disease risks, a synthetic cine and a report out."""
