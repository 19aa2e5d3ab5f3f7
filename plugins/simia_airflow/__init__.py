"""Airflow glue for the simia package (hooks and helpers the DAGs use inside tasks)."""
