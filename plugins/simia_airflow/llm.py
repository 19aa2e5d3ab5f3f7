"""The LLM client inside Airflow: Bedrock through the amazon provider's hook.

``BedrockRuntimeHook`` reads credentials, region and ``endpoint_url`` from the Airflow
connection (``aws_conn_id``); we hand it the same botocore config (retry mode,
timeouts, connection pool) that plain boto3 gets outside Airflow. Nothing here logs or
returns credentials, and a task that makes a client redacts credentials, signatures and
tokens from every log record it writes from then on (botocore's debug log prints each
request's signed headers): :func:`simia.redaction.install_log_redaction`.
"""

from __future__ import annotations

from typing import Any


def llm_settings(params: dict[str, Any]):
    """:class:`simia.llm.client.LLMSettings` from the DAG's Params."""
    from simia.llm.client import LLMSettings
    from simia.run_config import build

    return build(LLMSettings, params)


def llm_connection_problems(params: dict[str, Any]) -> list[str]:
    """What keeps this run's Bedrock connection from working, checked before any work:
    it exists and has a region (its ``region_name`` extra, else the workers' AWS
    environment or config). Empty when the run calls no LLM or uses an OpenAI-compatible
    server (whose URL ``check_run_params`` checks)."""
    from simia.run_config import calls_the_llm

    if not calls_the_llm(params) or params.get("llm_backend") != "bedrock":
        return []
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn_id = params["aws_conn_id"]
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return [f"aws_conn_id: there is no Airflow connection {conn_id!r}; create it (Admin "
                "-> Connections, type Amazon Web Services, credentials, and "
                '{"region_name": "us-east-1"} in its extras), name another one, or set '
                "llm_backend = openai with openai_base_url"]
    if (conn.extra_dejson or {}).get("region_name"):
        return []
    import boto3

    if boto3.session.Session().region_name:  # AWS_REGION / AWS_DEFAULT_REGION / config
        return []
    return [f"aws_conn_id: connection {conn_id!r} names no region; add "
            '{"region_name": "us-east-1"} (or your Bedrock region) to its extras, or set '
            "AWS_DEFAULT_REGION on the workers"]


def llm_client(params: dict[str, Any]):
    """An :class:`simia.llm.client.LLMClient` for this task."""
    from simia.llm.client import botocore_config, make_client
    from simia.redaction import install_log_redaction

    install_log_redaction()
    settings = llm_settings(params)
    if settings.backend != "bedrock":
        return make_client(settings)
    from airflow.providers.amazon.aws.hooks.bedrock import BedrockRuntimeHook

    hook = BedrockRuntimeHook(aws_conn_id=params["aws_conn_id"],
                              config=botocore_config(settings))
    return make_client(settings, bedrock_client=hook.conn)
