"""The PostgreSQL source: connections, the embedded server and contract-driven DDL."""
