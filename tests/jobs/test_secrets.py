"""The endpoint teacher's API key never leaves the request that carries it: a key is planted, the endpoint (or a
proxy in front of it) echoes it back in its error answer, as some do with the request's headers, and the key is
searched for in the error, the status the pipeline reports, its console and log output, and every file it wrote."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubedistill_jobs import endpoint_teacher as et

from kubedistill.redaction import MASK, redact

from .test_endpoint_teacher import _endpoint_manifest, _lm_data, files_holding
from .test_reporting import _entrypoint

KEY = "sk-planted-4f9c2e7b1d0a"
KEY_ENV = "KUBEDISTILL_TEACHER_API_KEY"  # where the operator puts teacher.endpoint.apiKeySecretRef


class EchoingEndpoint:
    """Answers every POST with 401 and the request's Authorization header in the body, like a careless server."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                header = self.headers.get("Authorization", "")
                owner.seen.append(header)
                body = json.dumps({"error": {"message": f"Incorrect API key provided: {header}",
                                             "type": "invalid_request_error"}}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def echoing():
    endpoint = EchoingEndpoint()
    yield endpoint
    endpoint.close()


def test_redact_masks_every_occurrence_and_leaves_short_values_alone():
    assert redact(f"key {KEY}, again Bearer {KEY}.", KEY) == f"key {MASK}, again Bearer {MASK}."
    assert redact("a b c", "b", None, "") == "a b c"  # too short to be a key: masking it would garble text


def test_an_endpoint_echoing_the_key_gets_it_masked_in_the_error(echoing):
    client = et.EndpointClient(et.EndpointConfig(url=echoing.url, model="m", top_k=4, api_key=KEY, retries=0))
    with pytest.raises(et.EndpointError) as raised:
        client.complete("hello", 2, 4)
    assert echoing.seen == [f"Bearer {KEY}"]  # the key did go out, as it must
    message = str(raised.value)
    assert KEY not in message and MASK in message
    assert message.startswith(f"teacher.endpoint.url: {echoing.url}/completions answered HTTP 401")
    assert raised.value.permanent


def test_a_failed_run_leaves_the_key_nowhere(echoing, monkeypatch, tmp_path, tiny_models, capsys, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    manifest = _endpoint_manifest(echoing.url, tmp_path, tiny_models["llama"], _lm_data(tmp_path))
    code, bodies = _entrypoint(monkeypatch, tmp_path, manifest)
    assert code == 1 and echoing.seen and all(h == f"Bearer {KEY}" for h in echoing.seen)
    (failure,) = [b["failure"] for b in bodies if b.get("failure")]
    assert failure["permanent"] is True and "HTTP 401" in failure["message"] and MASK in failure["message"]
    printed = capsys.readouterr()
    assert KEY not in json.dumps(bodies)
    assert KEY not in printed.out + printed.err
    assert KEY not in caplog.text
    out = tmp_path / "out"
    assert (out / "pipeline.log").is_file() and "HTTP 401" in (out / "pipeline.log").read_text()
    assert files_holding(tmp_path, KEY) == []
