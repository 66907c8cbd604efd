"""The operator's few Kubernetes API calls, in one place: 404 and 409 are handled here, once.

Children are written with server-side apply (one PATCH that creates or updates, and drops fields the
operator stopped setting); where the server answers 404 to an apply (API stand-ins used in tests), the
object is created with a POST instead.

Plain HTTP through urllib3 with the credentials `kubedistill_operator.login` reads, not the kubernetes client:
importing that client (its thousands of generated models, which kopf also imports when it finds them) cost the
operator about 11 MB of its resident memory for the six calls made here.
"""

from __future__ import annotations

import datetime
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import kopf
import urllib3

from kubedistill_operator.login import login
from kubedistill_operator.naming import MANAGER

# Connections that fail before the request is sent (a dropped keep-alive, an API server restarting) are tried
# again, for every verb; nothing is retried once sent (a POST must not be sent twice), nor on a status.
RETRIES = urllib3.Retry(total=3, connect=3, read=0, redirect=0, status=0, other=0, backoff_factor=0.2)
# Credentials that expire (an exec plugin's token) are renewed this long before, not by a failed call.
RENEW_BEFORE_S = 30.0
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Resource:
    """A REST resource: `group` is "" for the core API."""

    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [root]
        if namespace:
            parts.append(f"namespaces/{quote(namespace)}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


DISTILLATION_JOBS = Resource("kubedistill.io", "v1alpha1", "distillationjobs")
STUDENT_DEPLOYMENTS = Resource("kubedistill.io", "v1alpha1", "studentdeployments")
RAY_JOBS = Resource("ray.io", "v1", "rayjobs")
CONFIG_MAPS = Resource("", "v1", "configmaps")
SECRETS = Resource("", "v1", "secrets")
PERSISTENT_VOLUME_CLAIMS = Resource("", "v1", "persistentvolumeclaims")
SERVICES = Resource("", "v1", "services")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
HPAS = Resource("autoscaling", "v2", "horizontalpodautoscalers")
PODS = Resource("", "v1", "pods")

_BY_KIND = {
    ("kubedistill.io/v1alpha1", "DistillationJob"): DISTILLATION_JOBS,
    ("kubedistill.io/v1alpha1", "StudentDeployment"): STUDENT_DEPLOYMENTS,
    ("ray.io/v1", "RayJob"): RAY_JOBS,
    ("v1", "ConfigMap"): CONFIG_MAPS,
    ("v1", "Secret"): SECRETS,
    ("v1", "Service"): SERVICES,
    ("v1", "ServiceAccount"): SERVICE_ACCOUNTS,
    ("rbac.authorization.k8s.io/v1", "Role"): ROLES,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ROLE_BINDINGS,
    ("apps/v1", "Deployment"): DEPLOYMENTS,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): HPAS,
}


def resource_of(body: dict[str, Any]) -> Resource:
    return _BY_KIND[(body["apiVersion"], body["kind"])]


@dataclass(frozen=True)
class _Session:
    """Credentials with the pool and headers made from them: swapped as one, so that no request pairs a new pool
    with old headers."""

    credentials: kopf.ConnectionInfo
    pool: urllib3.PoolManager
    headers: dict[str, str]

    def expires_within(self, seconds: float) -> bool:
        expiration = self.credentials.expiration
        return expiration is not None and expiration - datetime.timedelta(seconds=seconds) <= datetime.datetime.now(
            datetime.UTC)


class ApiError(Exception):
    """An API call that failed for another reason than a missing or already existing object."""

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


class KubeApi:
    """A small synchronous client (the handlers run in kopf's thread pool; one connection pool is shared).

    `credentials` are read again (`relogin`) shortly before they expire and once after a 401 (a service
    account's token is rotated on disk by the kubelet, an exec plugin's token expires), once for all the threads
    that saw the old ones. Connections that fail before a request is sent are retried."""

    def __init__(self, credentials: kopf.ConnectionInfo, timeout: float = 30.0,
                 relogin: Callable[[], kopf.ConnectionInfo] | None = None, pool_size: int = 8) -> None:
        self._relogin = relogin
        self._timeout = urllib3.Timeout(total=timeout)
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._session = self._connect(credentials)

    def _connect(self, credentials: kopf.ConnectionInfo) -> _Session:
        try:
            tls = credentials.as_ssl_context() if credentials.server.startswith("https:") else None
        except (OSError, ssl.SSLError) as error:
            raise kopf.LoginError(f"the cluster's CA or the client certificate cannot be loaded: {error}") from None
        options: dict[str, Any] = {"maxsize": self._pool_size, "ssl_context": tls, "retries": RETRIES}
        proxy = credentials.proxy_url
        if proxy and not proxy.startswith(("http://", "https://")):
            raise kopf.LoginError(f"proxy-url {proxy!r}: only http:// and https:// proxies are supported")
        pool = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
        headers = {"Accept": "application/json", "User-Agent": MANAGER, **credentials.as_http_headers()}
        return _Session(credentials, pool, headers)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeApi:
        """In-cluster credentials inside a pod, else the kubeconfig (`kubeconfig`, $KUBECONFIG, ~/.kube/config).

        Raises `kopf.LoginError` naming what is missing or wrong."""
        return cls(login(kubeconfig), relogin=lambda: login(kubeconfig))

    @property
    def host(self) -> str:
        return self._session.credentials.server

    def connection_info(self) -> kopf.ConnectionInfo:
        """The same credentials for kopf's own watches and patches (read again: kopf asks after a 401)."""
        session = self._session
        if self._relogin is not None:
            session = self._refresh(session)
        return session.credentials

    def _refresh(self, seen: _Session) -> _Session:
        """New credentials, unless another thread already replaced `seen` while this one waited."""
        with self._lock:
            if self._session is seen and self._relogin is not None:
                self._session = self._connect(self._relogin())
                seen.pool.clear()
            return self._session

    def _request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                 query: dict[str, str] | None = None, missing_ok: bool = True,
                 conflict_ok: bool = False) -> dict[str, Any] | None:
        payload = None if body is None else json.dumps(body).encode()
        session = self._session
        if self._relogin is not None and session.expires_within(RENEW_BEFORE_S):
            session = self._refresh(session)
        for attempt in (1, 2):
            url = session.credentials.server.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
            headers = dict(session.headers, **({"Content-Type": content_type} if payload is not None else {}))
            response = session.pool.request(method, url, body=payload, headers=headers, timeout=self._timeout)
            if response.status == 401 and attempt == 1 and self._relogin is not None:
                session = self._refresh(session)  # a rotated token: once more with the new one
                continue
            break
        data = response.data
        if response.status == 404 and missing_ok:
            return None
        if response.status == 409 and conflict_ok:
            return None
        if response.status >= 400:
            try:
                message = json.loads(data).get("message", "")
            except (ValueError, AttributeError):
                message = data[:500].decode(errors="replace")
            raise ApiError(response.status, method, path, message)
        return json.loads(data) if data else {}

    def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        return self._request("GET", resource.path(namespace, name))

    def list(self, resource: Resource, namespace: str | None, labels: dict[str, str]) -> list[dict[str, Any]]:
        """The objects whose labels include `labels`."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = self._request("GET", resource.path(namespace), query={"labelSelector": selector})
        return list((found or {}).get("items") or [])

    def create(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create; None when an object of that name already exists."""
        resource = resource_of(body)
        return self._request("POST", resource.path(body["metadata"].get("namespace")), body,
                             missing_ok=False, conflict_ok=True)

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create or update to exactly `body`'s fields (server-side apply, the operator as field manager)."""
        resource = resource_of(body)
        namespace, name = body["metadata"].get("namespace"), body["metadata"]["name"]
        path = resource.path(namespace, name)
        applied = self._request("PATCH", path, body, APPLY_PATCH, query={"fieldManager": MANAGER, "force": "true"})
        if applied is not None:
            return applied
        created = self.create(body)
        if created is None:  # created meanwhile by a concurrent reconcile: apply once more
            applied = self._request("PATCH", path, body, APPLY_PATCH, missing_ok=False,
                                    query={"fieldManager": MANAGER, "force": "true"})
            assert applied is not None
            return applied
        return created

    def patch_status(self, resource: Resource, namespace: str | None, name: str,
                     status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the status subresource; None when the object is gone."""
        return self._request("PATCH", resource.path(namespace, name, "status"), {"status": status}, MERGE_PATCH)

    def delete(self, resource: Resource, namespace: str | None, name: str) -> bool:
        """Delete (children in the background); False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        return self._request("DELETE", resource.path(namespace, name), body) is not None
