"""A small client of Airflow's REST API for tests that start Airflow as processes."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class APIError(OSError):
    """An HTTP error answer, with the method, path, status and the start of the body (an
    ``OSError``, like a refused connection: callers waiting for Airflow catch both)."""


class AirflowAPI:
    """Calls to ``url``'s REST API as ``user`` (the token is fetched on the first call)."""

    def __init__(self, url: str, password: str, user: str = "admin") -> None:
        self.url, self.user, self.password = url, user, password
        self._token: str | None = None

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        if self._token is None:
            self._token = self._call("POST", "/auth/token",
                                     {"username": self.user, "password": self.password},
                                     auth=False)["access_token"]
        return self._call(method, path, body)

    def _call(self, method: str, path: str, body: dict | None, auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                text = resp.read()
        except urllib.error.HTTPError as exc:
            raise APIError(f"{method} {path}: {exc.code} {exc.read()[:2000]!r}") from exc
        return json.loads(text) if text else {}
