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


def jwt(exp: int) -> str:
    import base64

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'iss': 'https://idp', 'exp': exp})}.c2ln"


@pytest.mark.parametrize(("provider", "expires"), [
    ({"name": "gcp", "config": {"access-token": "ya29.x", "expiry": "2999-01-01T00:00:00Z"}}, 2999),
    ({"name": "azure", "config": {"access-token": "eyA.x", "expires-on": "32503680000"}}, 3000),
    ({"name": "oidc", "config": {"id-token": jwt(32503680000), "idp-issuer-url": "u"}}, 3000),
    ({"name": "oidc", "config": {"id-token": "opaque", "idp-issuer-url": "u"}}, None),
])
def test_an_auth_providers_stored_token_is_used_until_it_expires(tmp_path, monkeypatch, provider, expires):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    info = login(str(kubeconfig(tmp_path, "https://10.0.0.1:6443", {"auth-provider": provider})))
    assert info.token == (provider["config"].get("access-token") or provider["config"]["id-token"])
    assert (info.expiration.year if info.expiration else None) == expires  # kopf logs in again before then


@pytest.mark.parametrize("config", [{"access-token": "ya29.x", "expiry": "2020-01-01T00:00:00Z"},
                                    {"access-token": "ya29.x", "expiry": "2020-01-01T00:00:00"},  # no zone: UTC
                                    {"id-token": jwt(1577836800)}])
def test_an_expired_auth_provider_token_is_refused_at_login(tmp_path, monkeypatch, config):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = kubeconfig(tmp_path, "https://10.0.0.1:6443", {"auth-provider": {"name": "oidc", "config": config}})
    with pytest.raises(kopf.LoginError, match=r"token expired at 2020-01-01T00:00:00\+00:00; refresh it"):
        login(str(path))


def test_no_credentials_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", "")
    with pytest.raises(kopf.LoginError, match=r"no cluster credentials.*give --kubeconfig"):
        login()
    done = subprocess.run([sys.executable, "-m", "kubedistill.cli", "operator", "--kubeconfig",
                           str(tmp_path / "missing.yaml"), "--liveness-port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"cannot use kubeconfig {tmp_path / 'missing.yaml'}: FileNotFoundError" in done.stderr
    assert "Traceback" not in done.stderr


GOOD = {"current-context": "dev", "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "me"}}],
        "users": [{"name": "me", "user": {"token": "t"}}]}


@pytest.mark.parametrize("content, message", [
    ("just some plain text", "is not a kubeconfig"),
    ("- a\n- b\n", "is not a kubeconfig"),
    (b"\xff\xfe\x00binary", "UnicodeDecodeError"),
    ("clusters: [", "YAMLError|ParserError"),
    (yaml.safe_dump({**GOOD, "users": "me"}), "`users` must be a list"),
    (yaml.safe_dump({k: v for k, v in GOOD.items() if k != "current-context"}), "no current-context.*use-context"),
    (yaml.safe_dump({**GOOD, "users": None}), r"names user 'me', which is not defined \(users: none\)"),
    (yaml.safe_dump({**GOOD, "current-context": "prod"}), "current-context names context 'prod'.*dev"),
    (yaml.safe_dump({**GOOD, "clusters": [{"name": "c", "cluster": {}}]}), "cluster 'c' has no server"),
    (yaml.safe_dump({**GOOD, "users": [{"name": "me", "user": {"tokenFile": "nope"}}]}), "tokenFile .* cannot be"),
    (yaml.safe_dump({**GOOD, "users": [{"name": "me", "user": {"auth-provider": {"name": "oidc", "config": {}}}}]}),
     "auth-provider 'oidc' without an access-token or id-token"),
    (yaml.safe_dump({**GOOD, "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1",
                                                                    "tls-server-name": "api.internal"}}]}),
     "sets tls-server-name"),
])
def test_a_bad_kubeconfig_is_named_with_what_is_wrong(tmp_path, monkeypatch, content, message):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "kubeconfig"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(kopf.LoginError, match=message) as refused:
        login(str(path))
    assert str(path) in str(refused.value)


def test_relative_paths_are_read_from_the_kubeconfig_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.chdir("/")
    folder = tmp_path / "conf"
    (folder / "bin").mkdir(parents=True)
    (folder / "token").write_text("from-file\n")
    config = {**GOOD, "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1",
                                                               "certificate-authority": "ca.crt"}}],
              "users": [{"name": "me", "user": {"tokenFile": "token", "client-key": "keys/me.key"}}]}
    path = folder / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    info = login(str(path))
    assert info.token == "from-file" and info.ca_path == str(folder / "ca.crt")
    assert info.private_key_path == str(folder / "keys" / "me.key")
    plugin = folder / "bin" / "plugin"  # a command relative to the kubeconfig, as kubectl runs it
    plugin.write_text(f"#!{sys.executable}\nimport json\nprint(json.dumps({{'status': {{'token': 'exec'}}}}))\n")
    plugin.chmod(0o755)
    config["users"] = [{"name": "me", "user": {"exec": {"command": "./bin/plugin"}}}]
    path.write_text(yaml.safe_dump(config))
    assert login(str(path)).token == "exec"


def test_an_empty_kubeconfig_variable_reads_the_home_config_with_its_exec_plugin(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    plugin, _ = exec_plugin(tmp_path)
    (tmp_path / ".kube").mkdir()
    kubeconfig(tmp_path, "https://10.0.0.1", {"exec": plugin}).rename(tmp_path / ".kube" / "config")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", "")
    assert login().token == "first"


def test_in_a_pod_the_server_is_the_one_the_environment_names(monkeypatch):
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: kopf.ConnectionInfo(
        server="https://kubernetes.default.svc", token="sa"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    assert (login().server, login().token) == ("https://10.96.0.1:6443", "sa")


class TokenServer(BaseHTTPRequestHandler):
    """An API server that accepts one token at a time (`server.valid`) and records the tokens it was shown
    (`server.seen`) and the request targets (`server.paths`)."""

    def do_GET(self) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        self.server.seen.append(token)  # type: ignore[attr-defined]
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        ok = token == self.server.valid  # type: ignore[attr-defined]
        body = json.dumps({"kind": "ConfigMap", "metadata": {"name": "x"}} if ok else
                          {"kind": "Status", "message": "Unauthorized"}).encode()
        self.send_response(200 if ok else 401)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    running = ThreadingHTTPServer(("127.0.0.1", 0), TokenServer)
    running.valid, running.seen, running.paths = "first", [], []  # type: ignore[attr-defined]
    threading.Thread(target=running.serve_forever, daemon=True).start()
    yield running
    running.shutdown()
    running.server_close()


def exec_api(tmp_path: Path, server: ThreadingHTTPServer, **plugin_options: str) -> tuple[KubeApi, Path]:
    """A client whose kubeconfig points at `server` with an exec plugin; the plugin's token file."""
    plugin, token = exec_plugin(tmp_path, **plugin_options)
    path = kubeconfig(tmp_path, f"http://127.0.0.1:{server.server_port}", {"exec": plugin})
    return KubeApi.from_environment(str(path)), token


def test_the_api_client_logs_in_again_after_a_401_with_the_rotated_token(tmp_path, server):
    api, token = exec_api(tmp_path, server)
    assert api.get(CONFIG_MAPS, "ml", "x")["metadata"]["name"] == "x"
    token.write_text("second")
    server.valid = "second"
    assert api.get(CONFIG_MAPS, "ml", "x")["metadata"]["name"] == "x"  # 401 once, then the new token
    assert server.seen == ["first", "first", "second"]
    assert (tmp_path / "runs.txt").read_text() == "2"
    server.valid = "third"  # a token the plugin does not give: the 401 stands
    with pytest.raises(Exception, match="HTTP 401: Unauthorized"):
        api.get(CONFIG_MAPS, "ml", "x")


def test_threads_that_meet_a_401_together_log_in_once(tmp_path, server):
    api, token = exec_api(tmp_path, server)
    token.write_text("second")
    server.valid = "second"
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        for _ in range(3):
            assert api.get(CONFIG_MAPS, "ml", "x") is not None

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert server.seen.count("second") == 24  # every call answered
    assert (tmp_path / "runs.txt").read_text() == "2"  # the start, and one login for all eight threads


def test_the_api_client_goes_through_the_kubeconfig_proxy(tmp_path, server):
    server.valid = "t"  # the server plays the proxy: it answers and records the absolute URL asked for
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({**GOOD, "clusters": [{"name": "c", "cluster": {
        "server": "http://api.invalid:6443", "proxy-url": f"http://127.0.0.1:{server.server_port}"}}]}))
    assert KubeApi.from_environment(str(path)).get(CONFIG_MAPS, "ml", "x") is not None
    assert server.paths == ["http://api.invalid:6443/api/v1/namespaces/ml/configmaps/x"]


def test_an_expired_token_is_renewed_before_the_call(tmp_path, server):
    api, _ = exec_api(tmp_path, server, expiry="2020-01-01T00:00:00Z")
    api.get(CONFIG_MAPS, "ml", "x")
    api.get(CONFIG_MAPS, "ml", "x")
    assert server.seen == ["first", "first"]  # no 401 was needed
    assert (tmp_path / "runs.txt").read_text() == "3"  # logged in at start and before each call
