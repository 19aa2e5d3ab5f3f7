"""No log level prints credentials: every LLM command of the command line, run with -v
(botocore's debug log prints each request's signed headers) against the local Converse
server with recognisable AWS credentials in the environment, prints none of them, nor a
signature, and writes none of them to any file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.synthetic import generate_raw

ROOT = Path(__file__).resolve().parents[2]
#: recognisable values: an access key id of the AKIA/ASIA form, a secret key, a token
ACCESS_KEY_ID = "ASIASIMIATESTKEY0001"
SECRET_ACCESS_KEY = "simiaSecret/Access+Key0123456789abcdefXYZ"
SESSION_TOKEN = "SimiaSessionToken//Value+0123456789abcdefghijklmnopqrstuvwxyz=="
FORBIDDEN = (ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN, "Signature=", "Credential=")


def _leaks(text: str) -> list[str]:
    return [value for value in FORBIDDEN if value in text]


def test_every_llm_command_with_v_prints_and_writes_no_credentials(converse_server, tmp_path,
                                                                     tau2_dir):
    converse_server.configure(judge_flag_rate=0.05)
    env = {**os.environ, "TAU2_DATA_DIR": str(tau2_dir), "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
           "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY, "AWS_SESSION_TOKEN": SESSION_TOKEN,
           "AWS_DEFAULT_REGION": "us-east-1"}
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps(generate_raw(8, seed=5, mode="strict")))
    llm = ["--endpoint-url", converse_server.url, "--concurrency", "4"]
    run, printed = tmp_path / "run", []

    def simia(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-m", "simia.cli", "-v", *args],
                             capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        printed.append((args[0], res.stdout + res.stderr))
        return res

    simia("generate-seeds", "-o", str(tmp_path / "seeds_out"), "--n-seeds", "3", *llm)
    simia("generate", "--seeds", str(seeds), "-o", str(tmp_path / "gen"), "--target", "6", *llm)
    simia("process", str(tmp_path / "gen" / "raw_conversations.json"), "-o",
          str(tmp_path / "proc"))
    simia("judge", str(tmp_path / "proc" / "processed.json"), "-o", str(tmp_path / "judge"),
          *llm)
    simia("collect", "--seeds", str(seeds), "-o", str(run), "--levels", "0,10", "--size", "10",
          "--shared-clean", "8", "--mode", "strict", "--collect-pilot", "5",
          "--collect-max-attempts", "400", *llm)
    simia("twins", "--conversations", str(run / "processed" / "processed.json"), "--scores",
          str(run / "judge" / "judge_scores.jsonl"), "-o", str(tmp_path / "twins"),
          "--needed", "1", *llm)

    for command, text in printed:
        assert _leaks(text) == [], command
        if command != "process":  # the debug log did show the signed requests, redacted
            assert "botocore.endpoint" in text and "X-Amz-Security-Token': b'[REDACTED]'" in text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20
    for path in written:
        assert _leaks(path.read_text(errors="replace")) == [], path


@pytest.mark.parametrize("text, kept", [
    ("headers={'X-Amz-Security-Token': b'tok/en+1==', 'Authorization': b'AWS4-HMAC-SHA256 "
     "Credential=AKIAABCDEFGHIJKLMNOP/20260101/us-east-1/bedrock/aws4_request, SignedHeaders="
     "host;x-amz-date;x-amz-security-token, Signature=0123456789abcdef0123456789abcdef'}",
     "headers={'X-Amz-Security-Token': b'[REDACTED]', 'Authorization': b'[REDACTED]'}"),
    ("x-amz-date:20260101T000000Z\nx-amz-security-token:tok/en+1==\n\nhost;x-amz-date",
     "x-amz-date:20260101T000000Z\nx-amz-security-token:[REDACTED]\n\nhost;x-amz-date"),
    ("Signature:\n0123456789abcdef0123456789abcdef", "Signature:\n[REDACTED]"),
    ("GET /b?X-Amz-Credential=ASIAABCDEFGHIJKLMNOP%2F2026&X-Amz-Signature=00ff&"
     "X-Amz-Security-Token=FwoG%2Fzz&part=1",
     "GET /b?X-Amz-Credential=[REDACTED]&X-Amz-Signature=[REDACTED]&"
     "X-Amz-Security-Token=[REDACTED]&part=1"),
    ("authorization: Bearer sk-live-123", "authorization: [REDACTED]"),
    ('{"aws_session_token": "t0k", "max_tokens": 100}',
     '{"aws_session_token": "[REDACTED]", "max_tokens": 100}'),
    ("key AKIAIOSFODNN7EXAMPLE from the environment", "key [REDACTED] from the environment"),
    ("Calculating signature using v4 auth.", "Calculating signature using v4 auth."),
    ("a test of max_tokens=512", "a test of max_tokens=512"),
])
def test_redact_text(text, kept):
    from simia.redaction import redact_text

    assert redact_text(text, secrets=()) == kept


def test_redaction_reaches_handlers_configured_later_and_the_environment_s_values(monkeypatch):
    """An Airflow task configures its own log handlers; a record logged through them after
    the task made its LLM client is redacted too (the record factory), and the session
    token's literal value wherever it appears."""
    from simia.redaction import install_log_redaction

    monkeypatch.setenv("AWS_SESSION_TOKEN", "literal-session-token-value-42")
    previous = logging.getLogRecordFactory()
    install_log_redaction()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("botocore.auth.simia-test")
    handler = Keep()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("CanonicalRequest:\nx-amz-security-token:%s", "abc/def")
        logger.warning("token in prose: %s", "literal-session-token-value-42")
        try:
            raise RuntimeError("Credential=AKIAABCDEFGHIJKLMNOP/x")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logging.setLogRecordFactory(previous)
    text = "\n".join(logging.Formatter().format(r) for r in records)
    assert "abc/def" not in text and "literal-session-token-value-42" not in text
    assert "AKIAABCDEFGHIJKLMNOP" not in text and "RuntimeError: Credential=[REDACTED]" in text


def test_the_airflow_llm_client_installs_the_redaction(monkeypatch):
    sys.path.insert(0, str(ROOT / "plugins"))
    from simia_airflow import llm as airflow_llm

    previous = logging.getLogRecordFactory()
    try:
        monkeypatch.setattr(airflow_llm, "llm_settings",
                            lambda params: type("S", (), {"backend": "openai"})())
        monkeypatch.setattr("simia.llm.client.make_client", lambda settings: "client")
        assert airflow_llm.llm_client({}) == "client"
        record = logging.getLogger("botocore.endpoint").makeRecord(
            "botocore.endpoint", logging.DEBUG, __file__, 1,
            "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=x, Signature=ab'}",
            None, None)
        assert "Credential" not in record.getMessage()
    finally:
        logging.setLogRecordFactory(previous)
