"""The LLM client inside Airflow: Bedrock through the amazon provider's hook.

``BedrockRuntimeHook`` reads credentials, region and ``endpoint_url`` from the Airflow
connection (``aws_conn_id``); we hand it the same botocore config (retry mode,
timeouts, connection pool) that plain boto3 gets outside Airflow. Nothing here logs or
returns credentials.
"""

from __future__ import annotations

from typing import Any


def llm_settings(params: dict[str, Any]):
    """:class:`simia.llm.client.LLMSettings` from the DAG's Params."""
    from simia.llm.client import LLMSettings
    from simia.run_config import build

    return build(LLMSettings, params)


def llm_client(params: dict[str, Any]):
    """An :class:`simia.llm.client.LLMClient` for this task."""
    from simia.llm.client import botocore_config, make_client

    settings = llm_settings(params)
    if settings.backend != "bedrock":
        return make_client(settings)
    from airflow.providers.amazon.aws.hooks.bedrock import BedrockRuntimeHook

    hook = BedrockRuntimeHook(aws_conn_id=params["aws_conn_id"],
                              config=botocore_config(settings))
    return make_client(settings, bedrock_client=hook.conn)
