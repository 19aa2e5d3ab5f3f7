"""LLM access shared by the generation, seed and judge stages (no Airflow imports)."""
