"""The experiment's answer: statistics over tau2 results, the report (Markdown, HTML,
JSON, plots) and the index of run folders the UI lists."""
