"""Small jobs done one way across the suite, with the standard library alone (the floor under everything):
writing a file atomically (io.py), checking and parsing values (checks.py), percentiles (stats.py)."""
