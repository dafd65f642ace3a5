"""PostgreSQL (with pgvector): standalone or streaming replication with a fenced start and switchover."""
