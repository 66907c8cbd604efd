"""The real kopf operator against kmock's Kubernetes API emulator on loopback, for tests.

Loading: tests/conftest.py loads this file by path as module `kubedistill_harness` (tests run with
`--import-mode=importlib`, so test folders are not packages), for every test folder. Usage::

    from kubedistill_harness import OperatorHarness
    from kubedistill_operator.kubeapi import RAY_JOBS

    with OperatorHarness(tmp_path) as cluster:            # emulator + kubeconfig, operator not started yet
        cluster.start_operator()                           # `kubedistill operator -A --standalone`, own thread
        cluster.create(job_manifest)                       # kubectl apply (uid, generation, ... filled in)
        cluster.wait_for(lambda: cluster.get(RAY_JOBS, "default", "job-g1"), what="the RayJob")
        cluster.patch_status(RAY_JOBS, "default", "job-g1", {"jobDeploymentStatus": "Complete", ...})
        cluster.restart_operator()                         # a new operator (own loop), same cluster state
        cluster.events("default", "job")                   # the Events posted about an object
        calls = cluster.operator_calls                     # every API request the operator made (ApiCall)
        cluster.rbac_rules()                               # {(group, resource[/subresource]): {verbs}}

What the emulator needs, and what this harness adds (see ARCHITECTURE.md, "Facts verified"):

- kmock 0.8's `KubernetesEmulator` served by `kmock.Server`; a kubeconfig pointing at it, used by both kopf
  and the operator's own client; every resource declared in `emulator.resources` (RESOURCES below); kopf
  runs cluster-wide (`-A`: with namespaces kopf lists /api/v1/namespaces, which kmock 0.8 fails on).
- kmock stores what it is sent and nothing more. `ApiServer` plays the API server's own bookkeeping:
  uid, resourceVersion, generation (bumped on spec changes), creationTimestamp, namespace from the URL,
  generateName, the status subresource (a /status patch changes only status, a main patch never
  status), and a JSON-patch `test` on resourceVersion that fails with 422 as kopf expects. It runs no
  controllers and no garbage collector: tests play KubeRay's and the Deployment controller's part with
  `patch_status`, and check ownerReferences instead of cascading deletion.
- Every request that is not the harness's own is recorded as an `ApiCall` (method, path, verb, group,
  resource, subresource, namespace, name), so a test can check that an RBAC role allows exactly them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import attrs
import kmock
import yaml
from kubedistill_operator.config import OperatorConfig
from kubedistill_operator.kubeapi import KubeApi, Resource
from kubedistill_operator.main import OperatorOptions, run_operator
from kubedistill_patches import merge_patch

HARNESS_AGENT = "kubedistill-test-harness"
NAME_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"  # the API server's alphabet for generateName
T = TypeVar("T")

# The examples' objects, as the operator tests create them.
ROOT = Path(__file__).resolve().parents[2]
NS = "default"
JOB = "bbc-news-topics"  # the quickstart job, and the StudentDeployment that serves it
SD = "bbc-news-topics"
TIMEOUT = 30.0  # seconds the operator gets to react


def example(path: str) -> dict[str, Any]:
    """A manifest under examples/, e.g. `quickstart/distillationjob.yaml`."""
    return yaml.safe_load((ROOT / "examples" / path).read_text())

def volume_claim(name: str) -> dict[str, Any]:
    """A PersistentVolumeClaim as a user creates one (what `pvc://<name>/...` URIs mount)."""
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}}}


ALL_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


def _info(kind: str, namespaced: bool = True, status: bool = False, short: str | None = None) -> kmock.ResourceInfo:
    return kmock.ResourceInfo(kind=kind, namespaced=namespaced, singular=kind.lower(), verbs=ALL_VERBS,
                              subresources={"status"} if status else set(), shortnames={short} if short else set())


# Every resource the operator watches or writes, and what kopf itself touches.
RESOURCES: dict[str, kmock.ResourceInfo] = {
    "kubedistill.io/v1alpha1/distillationjobs": _info("DistillationJob", status=True, short="dj"),
    "kubedistill.io/v1alpha1/studentdeployments": _info("StudentDeployment", status=True, short="sd"),
    "ray.io/v1/rayjobs": _info("RayJob", status=True),
    "v1/configmaps": _info("ConfigMap"),
    "v1/pods": _info("Pod", status=True),
    "v1/secrets": _info("Secret"),
    "v1/persistentvolumeclaims": _info("PersistentVolumeClaim", status=True),
    "v1/services": _info("Service", status=True),
    "v1/serviceaccounts": _info("ServiceAccount"),
    "v1/events": _info("Event"),
    "v1/namespaces": _info("Namespace", namespaced=False, status=True),
    "rbac.authorization.k8s.io/v1/roles": _info("Role"),
    "rbac.authorization.k8s.io/v1/rolebindings": _info("RoleBinding"),
    "apps/v1/deployments": _info("Deployment", status=True),
    "autoscaling/v2/horizontalpodautoscalers": _info("HorizontalPodAutoscaler", status=True),
    # kopf's peering objects (the chart installs their CRDs when peering is on).
    "kopf.dev/v1/clusterkopfpeerings": _info("ClusterKopfPeering", namespaced=False),
}


@dataclass(frozen=True)
class ApiCall:
    """One request the operator made, in RBAC terms."""

    method: str
    path: str
    verb: str  # get, list, watch, create, patch, delete (non-resource requests: get)
    group: str | None = None  # "" for the core API; None for non-resource URLs (discovery)
    resource: str | None = None
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None

    @property
    def rbac_resource(self) -> str | None:
        if self.resource is None:
            return None
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


_VERBS = {
    kmock.action.LIST: "list",
    kmock.action.WATCH: "watch",
    kmock.action.FETCH: "get",
    kmock.action.CREATE: "create",
    kmock.action.UPDATE: "patch",
    kmock.action.DELETE: "delete",
}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class _MatchOnlyThisRequest(kmock.RawHandler):
    """kmock records every request it serves and finds the reactions for a new one by filtering all of them
    for that very request (by identity): a request costs time in proportion to the requests before it, so
    thousands of objects make each one take seconds, and the emulator, not the operator, sets the pace.
    Matching runs synchronously right here (the emulator's own locks are taken before): with only this
    request in the record it costs the same for the first request and the millionth. Nothing in the harness
    reads kmock's record (the operator's calls are in `ApiServer.calls`)."""

    __slots__ = ()

    async def _handle(self, request: Any) -> Any:
        self._requests[:] = [request]
        return await super()._handle(request)


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator, _MatchOnlyThisRequest):
    """kmock's emulator plus the API server's bookkeeping and a record of the operator's requests."""

    calls: list[ApiCall] = attrs.field(factory=list)
    # Error answers to the operator's requests: (verb, resource, HTTP status) -> count (409: it created an
    # object that already existed).
    errors: dict[tuple[str, str, int], int] = attrs.field(factory=dict)
    _version: int = 0
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)

    def _record(self, request: Any) -> None:
        if request.headers.get("User-Agent", "") == HARNESS_AGENT:
            return
        res = request.resource
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        if res is None or res.plural is None or request.action is None:
            self.calls.append(ApiCall(method, request.url.path, method.lower()))
            return
        self.calls.append(ApiCall(method, request.url.path, _VERBS[request.action], res.group, res.plural,
                                  request.subresource, request.namespace, request.name))

    def _stored(self, request: Any) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _prepare_create(self, request: Any) -> None:
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            # As the API server: 5 characters of its 27 (about 14 million names; 5 hex digits, a million, made
            # a thousand jobs' Events collide).
            meta["name"] = meta["generateName"] + "".join(secrets.choice(NAME_SUFFIX) for _ in range(5))
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_version()

    def _prepare_patch(self, request: Any) -> None:
        stored = self._stored(request)
        if stored is None:
            return  # the emulator answers 404
        version = self._next_version()
        has_status = "status" in self.resources[request.resource].subresources
        data = request.data
        if isinstance(data, list):  # JSON patch: check kopf's optimistic-concurrency test, bump the version
            for op in data:
                if op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion" \
                        and op.get("value") != stored.get("metadata", {}).get("resourceVersion"):
                    raise kmock.KubernetesError(status=422, reason="Invalid", message="resourceVersion changed")
            data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})
            return
        if not isinstance(data, dict):
            return
        if has_status and request.subresource == "status":
            for key in list(data):
                if key != "status":
                    del data[key]
        elif has_status:
            data.pop("status", None)
        meta = data.setdefault("metadata", {})
        meta["resourceVersion"] = version
        if "spec" in data and request.subresource is None:
            merged = merge_patch(stored.get("spec") or {}, data["spec"])
            if merged != (stored.get("spec") or {}):
                meta["generation"] = int(stored.get("metadata", {}).get("generation") or 1) + 1

    # kmock finds the object of a get, create, patch or delete by testing every stored object of every resource
    # against the request: each request costs time in proportion to the objects stored, which makes a thousand
    # objects and their children minutes of the emulator's time. These look the object up by its key instead
    # (the same answers: the object, or 404 for one absent or deleted).
    def _by_key(self, request: Any, namespace: str | None = None, name: str | None = None) -> Any:
        key = (request.resource, namespace or request.namespace, name or request.name)
        return self._objects[key] if key in self._objects else None  # noqa: SIM401 - kmock's array has no .get()

    async def _serve_fetch(self, request: Any) -> Any:
        async with self._lock:
            obj = self._by_key(request)
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: Any) -> Any:
        meta = request.data.get("metadata", {})
        async with self._lock:
            obj = self._by_key(request, meta.get("namespace"), meta.get("name"))
        assert obj is not None  # created in _handle()
        return obj.raw

    async def _serve_update(self, request: Any) -> Any:
        async with self._lock:
            obj = self._by_key(request)
        assert obj is not None  # patched in _handle()
        return obj.last.raw

    async def _serve_delete(self, request: Any) -> Any:
        async with self._lock:
            obj = self._by_key(request)
        assert obj is not None  # deleted in _handle()
        return obj.last.raw

    async def _handle(self, request: Any) -> Any:
        self._record(request)
        try:
            if request.resource is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE):
                return await super()._handle(request)
            async with self._write_lock:
                if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                    self._prepare_create(request)
                elif request.action == kmock.action.UPDATE:
                    self._prepare_patch(request)
                return await super()._handle(request)
        except kmock.KubernetesError as error:
            if request.headers.get("User-Agent", "") != HARNESS_AGENT and request.resource is not None:
                key = (_VERBS.get(request.action, "?"), str(request.resource.plural), int(error.status))
                self.errors[key] = self.errors.get(key, 0) + 1
            raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OperatorHarness:
    """A kmock API server in a background event loop, and the operator run against it on demand."""

    tmp_path: Path
    config: OperatorConfig = field(default_factory=OperatorConfig)
    wait_delay: float = 1.0
    live_status_seconds: float = 30.0
    server: ApiServer | None = None
    url: str = ""
    kubeconfig: Path | None = None
    liveness_port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _kmock_server: Any = None
    _operator: threading.Thread | None = None
    _stop: threading.Event | None = None
    _failure: list[BaseException] = field(default_factory=list)

    # Life cycle.
    def __enter__(self) -> OperatorHarness:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kmock-loop", daemon=True)
        self._thread.start()
        self._call(self._start_server())
        self.kubeconfig = self.tmp_path / "kubeconfig.yaml"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "operator", "user": {"token": "kmock-operator"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator"}}],
        }))
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop_operator()
        with contextlib.suppress(Exception):
            self._call(self._kmock_server.__aexit__(None, None, None))
            self._call(self.server.__aexit__(None, None, None))
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start_server(self) -> None:
        self.server = ApiServer()
        for key, info in RESOURCES.items():
            self.server.resources[key] = info
        await self.server.__aenter__()
        self._kmock_server = kmock.Server(self.server)
        await self._kmock_server.__aenter__()
        self.url = str(self._kmock_server.url).rstrip("/")

    def _call(self, coro: Any, timeout: float = 30.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start_operator(self, peering: str | None = None) -> None:
        """Run `kubedistill operator -A --standalone` (or `--peering NAME`) in a thread and event loop of its
        own (kopf treats every task of its loop as its own and cancels them on exit: the emulator's must not
        be among them), and wait until kopf is ready."""
        assert self._operator is None
        self.liveness_port = free_port()
        options = OperatorOptions(standalone=peering is None, peering=peering, liveness_host="127.0.0.1",
                                  liveness_port=self.liveness_port, kubeconfig=str(self.kubeconfig),
                                  wait_delay=self.wait_delay, config=self.config,
                                  live_status_seconds=self.live_status_seconds)
        ready = threading.Event()
        self._stop = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(run_operator(options, api=KubeApi.from_environment(options.kubeconfig),
                                         stop_flag=self._stop, ready_flag=ready))
            except BaseException as error:  # reported by wait_for and stop_operator
                failure.append(error)

        self._operator = threading.Thread(target=run, name="kubedistill-operator", daemon=True)
        self._failure = failure
        self._operator.start()
        deadline = time.monotonic() + 30
        while not ready.is_set():
            self._raise_if_stopped()
            if time.monotonic() > deadline:
                raise TimeoutError("the operator did not become ready in 30 s")
            time.sleep(0.05)

    def _raise_if_stopped(self) -> None:
        if self._operator is not None and not self._operator.is_alive():
            if self._failure:
                raise AssertionError("the operator stopped") from self._failure[0]
            raise AssertionError("the operator stopped")

    def stop_operator(self) -> None:
        if self._operator is None:
            return
        assert self._stop is not None
        self._stop.set()
        self._operator.join(timeout=60)
        alive = self._operator.is_alive()
        self._operator = None
        if alive:
            raise TimeoutError("the operator did not stop in 60 s")
        if self._failure:
            raise AssertionError("the operator failed") from self._failure[0]

    def restart_operator(self) -> None:
        self.stop_operator()
        self.start_operator()

    @property
    def operator_running(self) -> bool:
        return self._operator is not None and self._operator.is_alive()

    # A kubectl of sorts (its requests are not recorded as the operator's).
    def _request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "User-Agent": HARNESS_AGENT, "Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise AssertionError(f"{method} {path}: HTTP {error.code}: {error.read()[:500]!r}") from None
        return json.loads(text) if text else {}

    def create(self, obj: dict[str, Any], namespace: str | None = "default") -> dict[str, Any]:
        """POST an object (into `namespace`; None for a cluster-scoped one)."""
        obj = copy.deepcopy(obj)
        if namespace is not None:
            obj.setdefault("metadata", {}).setdefault("namespace", namespace)
        resource = _resource_of(obj)
        return self._request("POST", resource.path(obj["metadata"].get("namespace")), obj)

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return self._request("GET", resource.path(namespace, name))

    def list(self, resource: Resource, namespace: str | None = None) -> list[dict[str, Any]]:
        return list((self._request("GET", resource.path(namespace)) or {}).get("items", []))

    def patch(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._request("PATCH", resource.path(namespace, name), patch, "application/merge-patch+json")

    def patch_status(self, resource: Resource, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Play a controller (KubeRay, the Deployment controller) or the pipeline: merge-patch /status."""
        return self._request("PATCH", resource.path(namespace, name, "status"), {"status": status},
                             "application/merge-patch+json")

    def delete(self, resource: Resource, namespace: str, name: str) -> None:
        self._request("DELETE", resource.path(namespace, name))

    def events(self, namespace: str = "default", name: str | None = None) -> list[dict[str, Any]]:
        events = self.list(Resource("", "v1", "events"), namespace)
        return [e for e in events if name is None or e.get("involvedObject", {}).get("name") == name]

    def liveness(self, timeout: float = 30.0) -> int:
        """The status of kopf's /healthz, once its server listens (it starts with the operator's tasks)."""

        def probe() -> int | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=10) as answer:
                    return int(answer.status)
            except urllib.error.HTTPError as error:
                return error.code
            except (urllib.error.URLError, ConnectionError):
                return None  # not listening yet

        return self.wait_for(probe, timeout, "the liveness endpoint to listen")

    # Waiting and records.
    def wait_for(self, probe: Callable[[], T], timeout: float = 30.0, what: str = "the condition",
                 interval: float = 0.05) -> T:
        """Poll `probe` until it returns something truthy; fail with `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = probe()
            if last:
                return last
            self._raise_if_stopped()
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value: {last!r}")

    @property
    def operator_calls(self) -> list[ApiCall]:
        assert self.server is not None
        return list(self.server.calls)

    def rbac_rules(self) -> dict[tuple[str, str], set[str]]:
        """(API group, resource[/subresource]) → verbs the operator used; discovery requests left out."""
        rules: dict[tuple[str, str], set[str]] = {}
        for call in self.operator_calls:
            if call.group is not None and call.rbac_resource is not None:
                rules.setdefault((call.group, call.rbac_resource), set()).add(call.verb)
        return rules


def status(cluster: OperatorHarness, resource: Resource, name: str, namespace: str = "default") -> dict[str, Any]:
    """An object's status, {} while it has none (or the object is gone)."""
    return (cluster.get(resource, namespace, name) or {}).get("status") or {}


def condition(cluster: OperatorHarness, resource: Resource, name: str, type_: str,
              namespace: str = "default") -> dict[str, Any]:
    """The object's condition of `type_`, {} while it has none."""
    conditions = status(cluster, resource, name, namespace).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def _resource_of(obj: dict[str, Any]) -> Resource:
    group, _, version = obj["apiVersion"].rpartition("/")
    plural = {
        "DistillationJob": "distillationjobs", "StudentDeployment": "studentdeployments", "RayJob": "rayjobs",
        "Secret": "secrets", "ConfigMap": "configmaps", "Deployment": "deployments", "Service": "services",
        "ClusterKopfPeering": "clusterkopfpeerings", "PersistentVolumeClaim": "persistentvolumeclaims",
        "ServiceAccount": "serviceaccounts", "Pod": "pods",
    }[obj["kind"]]
    return Resource(group, version, plural)
