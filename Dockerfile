# The Airflow image of the stack in docker-compose.yaml (build it on the GPU host:
# `docker compose build`; the base image needs a registry, so it is not built in CI,
# where tests/docker/test_compose.py checks this file statically).
#
# apache/airflow 3.3.2 (Python 3.11) + this project's pinned requirements + the simia
# package, DAGs and plugins. Runs as the image's non-root `airflow` user; compose may
# pick any uid with `user: "${AIRFLOW_UID}:0"` (the image's files are group 0). Access to
# the host's Docker socket comes from compose (`group_add: ${DOCKER_GID}`), not from here:
# the docker group's gid differs between hosts.
FROM apache/airflow:3.3.2-python3.11

# every version pinned by the project's constraints (apache-airflow==3.3.2 is in
# requirements.txt, so pip cannot move Airflow itself). No `pip check` of the whole
# environment: the base image carries providers this project does not use; the import
# below checks what it does use (psycopg2 for Postgres comes with the base image).
COPY --chown=airflow:0 requirements.txt constraints.txt pyproject.toml /opt/simia/
COPY --chown=airflow:0 include /opt/simia/include
RUN pip install --no-cache-dir -r /opt/simia/requirements.txt -c /opt/simia/constraints.txt \
 && pip install --no-cache-dir --no-deps -c /opt/simia/constraints.txt /opt/simia \
 && python -c "import simia.cli, airflow.providers.amazon, airflow.providers.celery, airflow.providers.docker, psycopg2"

COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins

# airflow-init writes the generated secrets and the passwords file here (a named volume
# takes this directory's owner and mode when it is created)
USER root
RUN install -d -m 0770 -o airflow -g 0 /opt/airflow/secrets
USER airflow
