"""Enrichment: metadata columns, per-record quality score (vectorised, no row loops)."""
