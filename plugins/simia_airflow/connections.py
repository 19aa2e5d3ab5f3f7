"""Secrets from Airflow connections, read at run time (never templated, logged or
returned to XCom). Imported when the DAG is parsed: no heavy imports at module level."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass


def connection_secret(conn_id: str | None, extra_key: str, *,
                      log: Callable[..., None], missing: str) -> str | None:
    """The connection's password, else its ``extra_key`` extra; None (after logging
    ``missing``) when the connection does not exist or no id is given."""
    if not conn_id:
        return None
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log("no connection %r: %s", conn_id, missing)
        return None
    return conn.password or (conn.extra_dejson or {}).get(extra_key) or None


@dataclass(frozen=True)
class ConnectionSecret:
    """Where one secret comes from: a connection's password, else its ``extra_key`` extra.

    Attributes:
        conn_id: The connection (None or "" = no secret).
        extra_key: The extra to read when the connection has no password.
        missing: What a missing connection means (logged when it is looked up).
    """

    conn_id: str | None
    extra_key: str
    missing: str

    def read(self, log: Callable[..., None]) -> str | None:
        """The secret, or None (see :func:`connection_secret`)."""
        return connection_secret(self.conn_id, self.extra_key, log=log, missing=self.missing)


class SecretEnvironment(Mapping[str, str]):
    """Container environment variables whose values are connection secrets, looked up when
    the task runs: the operators pass one as ``DockerOperator``'s ``private_environment``
    (neither templated, rendered, logged nor serialized), so a secret never exists at
    DAG-parse time and never becomes an attribute anyone renders.

    The mapping holds the variables whose connection has a secret; it looks them up on
    first use (or at :meth:`load`, to log a missing connection in the task log at a
    chosen moment). Its truth value says whether any variable is *declared*, without a
    lookup: ``DockerOperator.__init__`` keeps ``private_environment or {}``.
    """

    def __init__(self, secrets: Mapping[str, ConnectionSecret] | None = None) -> None:
        self.secrets = dict(secrets or {})
        self._values: dict[str, str] | None = None

    def load(self, log: Callable[..., None]) -> None:
        """Look every declared secret up (once); a missing one is logged and left out."""
        if self._values is None:
            self._values = {name: value for name, secret in self.secrets.items()
                            if (value := secret.read(log))}

    @property
    def loaded(self) -> bool:
        """Whether the connections were read (never at DAG-parse time)."""
        return self._values is not None

    def _loaded(self) -> dict[str, str]:
        if self._values is None:
            self.load(logging.getLogger(__name__).info)
        return self._values or {}

    def __getitem__(self, name: str) -> str:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def __eq__(self, other: object) -> bool:
        # by declaration: comparing operators must not read connections
        return isinstance(other, SecretEnvironment) and other.secrets == self.secrets

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SecretEnvironment({', '.join(sorted(self.secrets))})"  # names, never values
