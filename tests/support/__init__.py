"""Test and benchmark support, kept out of the ``simia`` package: synthetic conversations
(:mod:`support.synthetic`), a tiny local Qwen2 model (:mod:`support.tiny_model`), and the
checks that run in the LLaMA-Factory venv (:mod:`support.lf_verify`,
:mod:`support.format_check`).

Importable as ``support`` with ``tests/`` on the path: pytest puts it there (the test
folders are not packages), the benchmarks add it themselves, and a subprocess gets it
through ``PYTHONPATH`` (``lf_support.lf_env``)."""
