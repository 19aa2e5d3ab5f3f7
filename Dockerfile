# The Airflow image for a GPU host: apache/airflow 3.3.2 + this project's pinned
# requirements + the simia package, DAGs and plugins.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root requirements.txt constraints.txt pyproject.toml /opt/simia/
COPY --chown=airflow:root include /opt/simia/include
RUN pip install --no-cache-dir -r /opt/simia/requirements.txt -c /opt/simia/constraints.txt \
 && pip install --no-cache-dir --no-deps /opt/simia

COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins

ENV SIMIA_DATA_ROOT=/opt/simia/data \
    TAU2_DATA_DIR=/opt/simia/tau2-data
