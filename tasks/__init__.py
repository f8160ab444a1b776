"""Prefect tasks: each wraps one library call and adds only retries, timeouts, tags and names."""
