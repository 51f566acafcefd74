"""PostgreSQL: ordered migrations and small repositories in plain SQL (psycopg 3)."""
