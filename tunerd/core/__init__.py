"""tunerd's settings and database engine."""
