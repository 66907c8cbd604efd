"""Cluster credentials for the operator's watches (kopf) and its own calls (`KubeApi`), as kopf's
`ConnectionInfo`: the pod's service account, or a kubeconfig's current context as kubectl reads it (files merged
in $KUBECONFIG order, the first value of a name wins, relative paths from the file that names them, `token`,
`tokenFile`, client certificates, `exec` plugins such as EKS's and GKE's, a legacy `auth-provider`'s stored
access-token or id-token).

No kubernetes client: see `kubeapi`. Every failure is a `kopf.LoginError` that names the file and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kopf
import yaml

EXEC_TIMEOUT_S = 60.0


def login(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """The service account's credentials inside a pod (no `kubeconfig` given), else the kubeconfig's current
    context (`kubeconfig`, $KUBECONFIG, ~/.kube/config)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if kubeconfig is None and host:
        found = kopf.login_with_service_account(settings=kopf.OperatorSettings())
        if found is not None:  # the server as the pod's environment names it (kopf's assumes cluster DNS)
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            return dataclasses.replace(found, server=f"https://[{host}]:{port}" if ":" in host
                                       else f"https://{host}:{port}")
    paths = [kubeconfig] if kubeconfig else [p for p in (os.environ.get("KUBECONFIG") or "").split(os.pathsep) if p]
    if not paths:
        default = Path("~/.kube/config").expanduser()
        if not default.is_file():
            raise kopf.LoginError("no cluster credentials: neither a service account (in a pod) nor a kubeconfig; "
                                  "give --kubeconfig, or set $KUBECONFIG, or create ~/.kube/config")
        paths = [str(default)]
    return _from_kubeconfig([Path(p).expanduser().absolute() for p in paths])


@dataclasses.dataclass
class _Entry:
    """A named kubeconfig entry and the folder of the file that holds it (its relative paths start there)."""

    value: dict[str, Any]
    folder: Path

    def path(self, key: str) -> str | None:
        value = self.value.get(key)
        return str(self.folder / os.path.expanduser(value)) if value else None


def _from_kubeconfig(paths: list[Path]) -> kopf.ConnectionInfo:
    where = " and ".join(str(p) for p in paths)
    current: str | None = None
    entries: dict[str, dict[str, _Entry]] = {"contexts": {}, "clusters": {}, "users": {}}
    for path in paths:
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise kopf.LoginError(f"cannot use kubeconfig {path}: {type(error).__name__}: {error}") from None
        if config is None:
            continue
        if not isinstance(config, dict):
            raise kopf.LoginError(f"{path} is not a kubeconfig (a YAML mapping with clusters, users and contexts)")
        current = current or config.get("current-context") or None
        for kind, named in entries.items():
            items = config.get(kind) or []
            if not isinstance(items, list) or not all(isinstance(i, dict) and "name" in i for i in items):
                raise kopf.LoginError(f"{path}: `{kind}` must be a list of entries, each with a name")
            for item in items:
                named.setdefault(str(item["name"]), _Entry(dict(item.get(kind[:-1]) or {}), path.parent))
    if current is None:
        raise kopf.LoginError(f"{where} has no current-context; choose one with `kubectl config use-context NAME`")
    context = _named(entries, "contexts", current, where, "current-context")
    cluster = _named(entries, "clusters", context.value.get("cluster"), where, f"context {current!r}")
    user = _named(entries, "users", context.value.get("user"), where, f"context {current!r}")
    if not cluster.value.get("server"):
        raise kopf.LoginError(f"{where}: cluster {context.value.get('cluster')!r} has no server")
    if cluster.value.get("tls-server-name"):  # kopf's client checks the certificate against the server's host
        raise kopf.LoginError(f"{where}: cluster {context.value.get('cluster')!r} sets tls-server-name, which the "
                              "operator's client cannot send; make `server` name that host (an /etc/hosts entry or "
                              "DNS name pointing at the address), or run the operator in the cluster")
    token = user.value.get("token")
    if not token and user.value.get("tokenFile"):
        try:
            token = Path(user.path("tokenFile") or "").read_text().strip()
        except OSError as error:
            raise kopf.LoginError(f"{where}: the tokenFile of user {context.value.get('user')!r} cannot be read: "
                                  f"{error}") from None
    provided, provided_expiration = (None, None) if token else _auth_provider_token(
        user.value.get("auth-provider"), where, context.value.get("user"))
    info = kopf.ConnectionInfo(
        server=cluster.value["server"],
        ca_path=cluster.path("certificate-authority"), ca_data=cluster.value.get("certificate-authority-data"),
        insecure=cluster.value.get("insecure-skip-tls-verify"), proxy_url=cluster.value.get("proxy-url"),
        certificate_path=user.path("client-certificate"), certificate_data=user.value.get("client-certificate-data"),
        private_key_path=user.path("client-key"), private_key_data=user.value.get("client-key-data"),
        username=user.value.get("username"), password=user.value.get("password"),
        token=token or provided, expiration=None if token else provided_expiration,
        default_namespace=context.value.get("namespace"))
    if user.value.get("exec") and not (info.token or info.certificate_path or info.certificate_data):
        info = _with_exec_credential(info, user.value["exec"], user.folder)
    return info


def _auth_provider_token(provider: Any, where: str, user: Any) -> tuple[str | None, datetime.datetime | None]:
    """The token a legacy `auth-provider` stores in its config, `access-token` (gcp, azure) or `id-token`
    (oidc), and when it expires (`expiry`, `expires-on`, or the id-token's `exp` claim). kubectl refreshes
    them; this client cannot, so a provider without a token, or with an expired one, is an error naming the
    fix, not a silent anonymous login or a 401 later."""
    if not provider:
        return None, None
    config = provider.get("config") or {}
    token = config.get("access-token") or config.get("id-token")
    named = f"{where}: user {user!r} uses auth-provider {provider.get('name')!r}"
    fix = ("refresh it with kubectl (oidc: the kubelogin plugin), or give the user an exec plugin (the gcp and "
           "azure providers left kubectl in 1.26: gke-gcloud-auth-plugin, kubelogin) or a token")
    if not token:
        raise kopf.LoginError(f"{named} without an access-token or id-token in its config; {fix}")
    expiration = _expiry(config, str(token))
    if expiration is not None and expiration <= datetime.datetime.now(datetime.UTC):
        raise kopf.LoginError(f"{named} whose token expired at {expiration.isoformat()}; {fix}")
    return str(token), expiration


def _expiry(config: dict[str, Any], token: str) -> datetime.datetime | None:
    """When a stored token expires, if it says: RFC 3339 `expiry` (gcp), epoch `expires-on` (azure), a JWT's
    `exp` claim (oidc id-tokens)."""
    import base64

    with contextlib.suppress(ValueError, TypeError, AttributeError):
        if config.get("expiry"):
            return _timestamp(str(config["expiry"]))
        if config.get("expires-on"):
            return datetime.datetime.fromtimestamp(int(config["expires-on"]), datetime.UTC)
        parts = token.split(".")
        if len(parts) == 3:  # a JWT: header.payload.signature, base64url without padding
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            if isinstance(claims, dict) and isinstance(claims.get("exp"), (int, float)):
                return datetime.datetime.fromtimestamp(claims["exp"], datetime.UTC)
    return None


def _timestamp(text: str) -> datetime.datetime:
    """An RFC 3339 time as kubeconfigs and ExecCredentials write it (`Z` for UTC; no zone read as UTC)."""
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def _named(entries: dict[str, dict[str, _Entry]], kind: str, name: Any, where: str, named_by: str) -> _Entry:
    if name not in entries[kind]:
        known = ", ".join(sorted(entries[kind])) or "none"
        raise kopf.LoginError(f"{where}: {named_by} names {kind[:-1]} {name!r}, which is not defined ({kind}: "
                              f"{known})")
    return entries[kind][name]


def _with_exec_credential(info: kopf.ConnectionInfo, plugin: dict[str, Any], folder: Path) -> kopf.ConnectionInfo:
    """Run a kubeconfig `exec` plugin (client.authentication.k8s.io ExecCredential) in the kubeconfig's folder
    for a token or a client certificate, with its expiry so that it is asked again in time."""
    api_version = plugin.get("apiVersion") or "client.authentication.k8s.io/v1"
    env = dict(os.environ, **{e["name"]: e["value"] for e in plugin.get("env") or []})
    env["KUBERNETES_EXEC_INFO"] = json.dumps({"apiVersion": api_version, "kind": "ExecCredential",
                                              "spec": {"interactive": False}})
    command = [str(plugin.get("command")), *(plugin.get("args") or [])]
    named = f"the kubeconfig's exec plugin {command[0]!r}"
    try:
        done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=EXEC_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        hint = f" ({plugin['installHint'].strip()})" if plugin.get("installHint") else ""
        raise kopf.LoginError(f"{named} did not run: {error}{hint}") from None
    if done.returncode != 0:
        raise kopf.LoginError(f"{named} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    try:
        status = json.loads(done.stdout)["status"]
        expiry = status.get("expirationTimestamp")
        expiration = _timestamp(expiry) if expiry else None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise kopf.LoginError(f"{named} printed no ExecCredential with a status") from None
    return dataclasses.replace(  # certificate data as PEM, which kopf's ConnectionInfo takes as it is
        info, token=status.get("token") or None, expiration=expiration,
        certificate_data=status.get("clientCertificateData") or None,
        private_key_data=status.get("clientKeyData") or None)
