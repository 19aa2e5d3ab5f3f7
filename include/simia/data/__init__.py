"""The data half: raw conversations -> validated, converted conversations -> sycophancy
labels -> SFT datasets at controlled sycophancy levels (no LLM calls, no containers)."""
