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

    fields: dict[str, Any] = {"backend": params["llm_backend"],
                              "concurrency": params["llm_concurrency"],
                              "timeout_s": params["llm_timeout_s"]}
    if params.get("model_id"):
        fields["model_id"] = params["model_id"]
    if params.get("openai_base_url"):
        fields["base_url"] = params["openai_base_url"]
    return LLMSettings(**fields)


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
