"""Batch commands over a whole history: backfill, the parity check, and initial states."""
