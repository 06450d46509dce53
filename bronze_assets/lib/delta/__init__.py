"""Delta Lake side: the bronze MERGE, the IO manager, staging of extracted batches."""
