"""Cluster credentials for the operator's watches (kopf) and its own calls (`KubeApi`): kopf's own readers of a
service account and a kubeconfig, plus kubeconfig `exec` plugins (EKS, GKE, OIDC), which kopf's reader skips.

No kubernetes client: see `kubeapi`. Raises `kopf.LoginError` with what to do when there are no credentials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import kopf
import yaml

EXEC_TIMEOUT_S = 60.0
_ENVIRONMENT = threading.Lock()


def login(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """The service account's credentials inside a pod (no `kubeconfig` given), else the kubeconfig's current
    context (`kubeconfig`, $KUBECONFIG, ~/.kube/config), with an exec plugin's token when its user has one."""
    settings = kopf.OperatorSettings()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        found = kopf.login_with_service_account(settings=settings)
        if found is not None:
            return found
    with _kubeconfig_path(kubeconfig):
        try:
            found = kopf.login_with_kubeconfig(settings=settings)
            user = _current_user() if found is not None else {}
        except (OSError, KeyError, yaml.YAMLError) as error:
            raise kopf.LoginError(f"the kubeconfig cannot be read: {type(error).__name__}: {error}") from None
    if found is None:
        raise kopf.LoginError("neither a service account (in a pod) nor a kubeconfig (--kubeconfig, $KUBECONFIG, "
                              "~/.kube/config)")
    if user.get("exec") and not (found.token or found.certificate_path or found.certificate_data):
        found = _with_exec_credential(found, user["exec"])
    return found


@contextlib.contextmanager
def _kubeconfig_path(path: str | None) -> Iterator[None]:
    """$KUBECONFIG pointed at `path` while kopf reads it (kopf reads only the environment)."""
    with _ENVIRONMENT:
        before = os.environ.get("KUBECONFIG")
        if path is not None:
            os.environ["KUBECONFIG"] = os.path.abspath(os.path.expanduser(path))
        try:
            yield
        finally:
            if path is not None:
                if before is None:
                    os.environ.pop("KUBECONFIG", None)
                else:
                    os.environ["KUBECONFIG"] = before


def _current_user() -> dict[str, Any]:
    """The current context's user entry, read as kopf reads the files (the first value of a name wins)."""
    paths = [os.path.expanduser(p.strip()) for p in os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)]
    current: str | None = None
    contexts: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for path in (p for p in paths if p):
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
        current = current or config.get("current-context")
        for item in config.get("contexts") or []:
            contexts.setdefault(item["name"], item.get("context") or {})
        for item in config.get("users") or []:
            users.setdefault(item["name"], item.get("user") or {})
    context = contexts.get(current or "") or {}
    return dict(users.get(context.get("user") or "") or {})


def _with_exec_credential(info: kopf.ConnectionInfo, plugin: dict[str, Any]) -> kopf.ConnectionInfo:
    """Run a kubeconfig `exec` plugin (client.authentication.k8s.io ExecCredential) for a token or a client
    certificate, with its expiry so that it is asked again in time."""
    api_version = plugin.get("apiVersion") or "client.authentication.k8s.io/v1"
    env = dict(os.environ, **{e["name"]: e["value"] for e in plugin.get("env") or []})
    env["KUBERNETES_EXEC_INFO"] = json.dumps({"apiVersion": api_version, "kind": "ExecCredential",
                                              "spec": {"interactive": False}})
    command = [plugin["command"], *(plugin.get("args") or [])]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=EXEC_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise kopf.LoginError(f"the kubeconfig's exec plugin {plugin['command']!r} did not run: {error}") from None
    if done.returncode != 0:
        raise kopf.LoginError(f"the kubeconfig's exec plugin {plugin['command']!r} exited {done.returncode}: "
                              f"{done.stderr.strip()[-500:]}")
    try:
        status = json.loads(done.stdout)["status"]
    except (ValueError, KeyError, TypeError):
        raise kopf.LoginError(f"the kubeconfig's exec plugin {plugin['command']!r} printed no ExecCredential "
                              "with a status") from None
    expiry = status.get("expirationTimestamp")
    expiration = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00")) if expiry else None
    return dataclasses.replace(  # certificate data as PEM, which kopf's ConnectionInfo takes as it is
        info, token=status.get("token") or None, expiration=expiration,
        certificate_data=status.get("clientCertificateData") or None,
        private_key_data=status.get("clientKeyData") or None)
