"""Credentials without the kubernetes client: kubeconfig tokens, exec plugins (tokens that expire and rotate),
clear errors when there are none, and the operator's API client logging in again after a 401."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kopf
import pytest
import yaml
from kubedistill_operator.kubeapi import CONFIG_MAPS, KubeApi
from kubedistill_operator.login import login


def kubeconfig(tmp_path: Path, server: str, user: dict) -> Path:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "dev", "cluster": {"server": server}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "me", "namespace": "ml"}}],
        "users": [{"name": "me", "user": user}]}))
    return path


def exec_plugin(tmp_path: Path, expiry: str = "2999-01-01T00:00:00Z") -> tuple[dict, Path]:
    """An exec plugin that prints the token in `token.txt` and counts its runs in `runs.txt`."""
    token, runs = tmp_path / "token.txt", tmp_path / "runs.txt"
    token.write_text("first")
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, os, pathlib, sys\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['kind'] == 'ExecCredential' and os.environ['PLUGIN_REGION'] == 'eu'\n"
        f"runs = pathlib.Path({str(runs)!r}); runs.write_text(str(int(runs.read_text() or 0) + 1))\n"
        f"print(json.dumps({{'apiVersion': info['apiVersion'], 'kind': 'ExecCredential', 'status': {{\n"
        f"    'token': pathlib.Path({str(token)!r}).read_text(), 'expirationTimestamp': {expiry!r}}}}}))\n")
    runs.write_text("0")
    plugin = {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable, "args": [str(script)],
              "env": [{"name": "PLUGIN_REGION", "value": "eu"}]}
    return plugin, token


def test_a_kubeconfig_token_and_namespace_and_no_environment_left_changed(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    info = login(str(kubeconfig(tmp_path, "https://10.0.0.1:6443", {"token": "abc"})))
    assert (info.server, info.token, info.default_namespace) == ("https://10.0.0.1:6443", "abc", "ml")
    assert "KUBECONFIG" not in os.environ


def test_an_exec_plugin_gives_the_token_and_its_expiry(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    plugin, _ = exec_plugin(tmp_path)
    info = login(str(kubeconfig(tmp_path, "https://10.0.0.1:6443", {"exec": plugin})))
    assert info.token == "first" and info.expiration is not None and info.expiration.year == 2999
    assert info.as_http_headers() == {"Authorization": "Bearer first"}


@pytest.mark.parametrize("user, message", [
    ({"exec": {"command": "/nonexistent/aws-iam-authenticator"}}, "did not run"),
    ({"exec": {"command": sys.executable, "args": ["-c", "import sys; sys.exit('denied')"]}}, "exited 1: denied"),
    ({"exec": {"command": sys.executable, "args": ["-c", "print('{}')"]}}, "no ExecCredential"),
])
def test_an_exec_plugin_that_fails_is_named(tmp_path, monkeypatch, user, message):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kopf.LoginError, match=message):
        login(str(kubeconfig(tmp_path, "https://10.0.0.1:6443", user)))


def test_no_credentials_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kopf.LoginError, match="cannot be read: FileNotFoundError"):
        login(str(tmp_path / "missing.yaml"))
    done = subprocess.run([sys.executable, "-m", "kubedistill.cli", "operator", "--kubeconfig",
                           str(tmp_path / "missing.yaml"), "--liveness-port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no cluster credentials" in done.stderr and "--kubeconfig" in done.stderr


class TokenServer(BaseHTTPRequestHandler):
    """An API server that accepts one token at a time (`server.valid`) and records the tokens it was shown."""

    def do_GET(self) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        self.server.seen.append(token)  # type: ignore[attr-defined]
        ok = token == self.server.valid  # type: ignore[attr-defined]
        body = json.dumps({"kind": "ConfigMap", "metadata": {"name": "x"}} if ok else
                          {"kind": "Status", "message": "Unauthorized"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_api_client_logs_in_again_after_a_401_with_the_rotated_token(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenServer)
    server.valid, server.seen = "first", []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        plugin, token = exec_plugin(tmp_path)
        api = KubeApi.from_environment(str(kubeconfig(tmp_path, f"http://127.0.0.1:{server.server_port}",
                                                      {"exec": plugin})))
        assert api.get(CONFIG_MAPS, "ml", "x")["metadata"]["name"] == "x"
        token.write_text("second")
        server.valid = "second"  # type: ignore[attr-defined]
        assert api.get(CONFIG_MAPS, "ml", "x")["metadata"]["name"] == "x"  # 401 once, then the new token
        assert server.seen == ["first", "first", "second"]  # type: ignore[attr-defined]
        assert (tmp_path / "runs.txt").read_text() == "2"
        server.valid = "third"  # type: ignore[attr-defined]  # a token the plugin does not give: the 401 stands
        with pytest.raises(Exception, match="HTTP 401: Unauthorized"):
            api.get(CONFIG_MAPS, "ml", "x")
    finally:
        server.shutdown()
        server.server_close()


def test_an_expired_token_is_renewed_before_the_call(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenServer)
    server.valid, server.seen = "first", []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        plugin, _ = exec_plugin(tmp_path, expiry="2020-01-01T00:00:00Z")
        api = KubeApi.from_environment(str(kubeconfig(tmp_path, f"http://127.0.0.1:{server.server_port}",
                                                      {"exec": plugin})))
        api.get(CONFIG_MAPS, "ml", "x")
        api.get(CONFIG_MAPS, "ml", "x")
        assert server.seen == ["first", "first"]  # type: ignore[attr-defined]  # no 401 was needed
        assert (tmp_path / "runs.txt").read_text() == "3"  # logged in at start and before each call
    finally:
        server.shutdown()
        server.server_close()
