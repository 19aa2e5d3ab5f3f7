"""simia: the world-model sycophancy experiment as plain, Airflow-free Python.

Every stage of the experiment (processing raw LLM-simulated conversations,
scoring sycophancy, building SFT datasets, ...) lives here as typed functions
that the ``simia`` command line and the Airflow DAGs both call. Nothing in
this package imports Airflow.
"""

__version__ = "0.1.0"
