"""Data: readers, preprocessing, the synthetic cohort, datasets and pipelines."""
