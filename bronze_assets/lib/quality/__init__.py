"""Data quality: Great Expectations suites derived from the contracts, and their results."""
