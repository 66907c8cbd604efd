"""The operator at scale: `kubedistill operator` (a process of its own, real kopf) against kmock's API emulator
(the operator tests' harness), with DistillationJobs and StudentDeployments created in bursts.

1. Burst: N DistillationJobs and N/5 StudentDeployments (each serving one of the jobs), created in bursts of
   `--burst` objects. Steady state: every job has its RayJob, ConfigMap and status (Pending, the run's name);
   every deployment waits with ModelAvailable=False, JobNotSucceeded.
2. The served jobs succeed (KubeRay's and the pipeline's part, played here). Steady state: those jobs
   Succeeded; every deployment has its Deployment, Service and router ConfigMap, and status Progressing.
3. Idle: nothing changes for a few seconds; the operator should make no call (no hot loop) but the live-status
   timer's list of each deployed StudentDeployment's router pods (one per deployment every `--live-status-seconds`,
   counted apart: the emulator runs no pods, so nothing more follows).
4. Crashes: another burst (N/2 jobs, N/10 deployments), with the operator SIGKILLed at random moments during it
   and started again each time. Then: no duplicate children, and every object in the steady state of step 1.

Figures: seconds to each steady state, API calls per object (by verb), conflicts (creates of objects that
already existed, answered 409), reconciliations per object and their duration p50/p95 (the operator's own
metrics), the operator's peak RSS.

    python benchmarks/operator_scale.py [--jobs 1000] [--burst 100] [--kills 3] [--seed 0]

Prints a table and writes benchmarks/results/operator_scale.json; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from kubedistill_operator.kubeapi import (
    CONFIG_MAPS,
    DEPLOYMENTS,
    DISTILLATION_JOBS,
    RAY_JOBS,
    SERVICES,
    STUDENT_DEPLOYMENTS,
)
from published import publish

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "operator_scale.json"
NS = "default"
TARGETS = {"steady_state_s": 60.0, "peak_rss_mb": 150.0}


def _harness_module() -> Any:
    """tests/operator/harness.py (kmock's emulator with the API server's bookkeeping), loaded by path once, after
    the test helper it imports (as tests/conftest.py loads them)."""
    for name, file in (("kubedistill_patches", "patches.py"), ("kubedistill_harness", "operator/harness.py")):
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / file)
            assert spec is not None and spec.loader is not None
            module = sys.modules.setdefault(name, importlib.util.module_from_spec(spec))
            spec.loader.exec_module(module)
    return sys.modules["kubedistill_harness"]


def job(name: str) -> dict[str, Any]:
    manifest = yaml.safe_load((ROOT / "examples" / "quickstart" / "distillationjob.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["output"]["uri"] = f"pvc://models/{name}"
    return manifest


def student(name: str, job_name: str) -> dict[str, Any]:
    manifest = yaml.safe_load((ROOT / "examples" / "quickstart" / "studentdeployment.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["source"]["jobRef"]["name"] = job_name
    return manifest


@dataclass
class Batch:
    """One set of related objects: jobs, and deployments each serving one of the first jobs."""

    prefix: str
    jobs: int
    students: int

    def job_names(self) -> list[str]:
        return [f"{self.prefix}-job-{i}" for i in range(self.jobs)]

    def student_pairs(self) -> list[tuple[str, str]]:
        return [(f"{self.prefix}-sd-{i}", f"{self.prefix}-job-{i}") for i in range(self.students)]

    def objects(self) -> list[dict[str, Any]]:
        """Jobs and deployments interleaved, as a GitOps sync applies a folder."""
        out: list[dict[str, Any]] = []
        pairs = dict((j, s) for s, j in self.student_pairs())
        for name in self.job_names():
            out.append(job(name))
            if name in pairs:
                out.append(student(pairs[name], name))
        return out


class Operator:
    """`kubedistill operator -A --standalone` against the emulator, with its metrics; RSS sampled while it runs."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.metrics_port = _harness_module().free_port()
        env = dict(os.environ, KUBEDISTILL_METRICS_PORT=str(self.metrics_port))
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kubedistill.cli", "operator", "-A", "--standalone", "--kubeconfig",
             str(kubeconfig), "--liveness-port", "0", "--metrics-port", str(self.metrics_port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.peak_rss = 0
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        proc = psutil.Process(self.process.pid)
        while self._sampling and self.process.poll() is None:
            try:
                self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return response.read().decode()

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.metrics()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the operator did not start (exit {self.process.poll()})") from None
                time.sleep(0.1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._stop_sampling()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stop_sampling()

    def _stop_sampling(self) -> None:
        self._sampling = False
        self._sampler.join(5)
        self.log.close()


def parse_metrics(text: str) -> dict[str, Any]:
    """Reconciliations by kind and outcome, and the duration histogram's buckets by kind."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"reconciliations": Counter(), "buckets": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kubedistill_operator_reconciliations_total":
                out["reconciliations"][(sample.labels["kind"], sample.labels["outcome"])] += sample.value
            elif sample.name == "kubedistill_operator_reconcile_duration_seconds_bucket":
                le = float(sample.labels["le"])
                out["buckets"].setdefault(sample.labels["kind"], []).append((le, sample.value))
    return out


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """A quantile from a cumulative histogram, linear within the bucket (as Prometheus' histogram_quantile)."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


@dataclass
class Cluster:
    """The emulator's state as the checks see it (one list per resource)."""

    harness: Any
    snapshot: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def refresh(self) -> None:
        for resource in (DISTILLATION_JOBS, STUDENT_DEPLOYMENTS, RAY_JOBS, CONFIG_MAPS, DEPLOYMENTS, SERVICES):
            self.snapshot[resource.plural] = self.harness.list(resource, NS)

    def by_name(self, plural: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.snapshot.get(plural, [])}

    def names(self, plural: str) -> Counter[str]:
        return Counter(o["metadata"]["name"] for o in self.snapshot.get(plural, []))


def reason(obj: dict[str, Any] | None, type_: str) -> str | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return str(c.get("reason"))
    return None


def waiting_state(cluster: Cluster, batch: Batch) -> list[str]:
    """What is missing from steady state 1 (empty: reached)."""
    jobs, rayjobs, maps = cluster.by_name("distillationjobs"), cluster.names("rayjobs"), cluster.names("configmaps")
    students = cluster.by_name("studentdeployments")
    missing = []
    for name in batch.job_names():
        status = (jobs.get(name) or {}).get("status") or {}
        if status.get("phase") != "Pending" or status.get("rayJobName") != f"{name}-g1":
            missing.append(f"{name} status")
        if rayjobs[f"{name}-g1"] != 1 or maps[f"{name}-spec"] != 1:
            missing.append(f"{name} children")
    for name, _ in batch.student_pairs():
        if reason(students.get(name), "ModelAvailable") != "JobNotSucceeded":
            missing.append(f"{name} waiting")
    return missing


def serving_state(cluster: Cluster, batch: Batch) -> list[str]:
    """What is missing from steady state 2 (empty: reached)."""
    jobs, students = cluster.by_name("distillationjobs"), cluster.by_name("studentdeployments")
    deployments, services = cluster.names("deployments"), cluster.names("services")
    missing = []
    for name, job_name in batch.student_pairs():
        if ((jobs.get(job_name) or {}).get("status") or {}).get("phase") != "Succeeded":
            missing.append(f"{job_name} succeeded")
        status = (students.get(name) or {}).get("status") or {}
        if status.get("phase") != "Progressing" or status.get("modelVersion") != "run-1":
            missing.append(f"{name} status")
        if deployments[name] != 1 or services[name] != 1:
            missing.append(f"{name} children")
    return missing


def wait(cluster: Cluster, check: Any, batch: Batch, timeout: float) -> float:
    """Seconds until `check` finds nothing missing. Polled every 0.5 s, or less often while a look takes long:
    listing every object is the emulator's work too, and at most a third of it goes to looking."""
    started = time.monotonic()
    missing: list[str] = []
    while time.monotonic() - started < timeout:
        looked = time.monotonic()
        cluster.refresh()
        missing = check(cluster, batch)
        if not missing:
            return time.monotonic() - started
        time.sleep(max(0.5, 2 * (time.monotonic() - looked)))
    raise RuntimeError(f"no steady state after {timeout:g} s: {len(missing)} missing, e.g. {missing[:5]}")


def create(harness: Any, objects: list[dict[str, Any]], burst: int, pause: float = 0.2) -> None:
    for start in range(0, len(objects), burst):
        for obj in objects[start:start + burst]:
            harness.create(copy.deepcopy(obj))
        time.sleep(pause)


def succeed(harness: Any, batch: Batch) -> None:
    for _, job_name in batch.student_pairs():
        harness.patch_status(DISTILLATION_JOBS, NS, job_name, {"results": {
            "gatePassed": True, "retention": 0.97, "recommendedThreshold": 0.8, "modelVersion": "run-1",
            "artifactUri": f"pvc://models/{job_name}/model_repository"}})
        harness.patch_status(RAY_JOBS, NS, f"{job_name}-g1", {"jobDeploymentStatus": "Complete",
                                                             "jobStatus": "SUCCEEDED"})


def quiet(harness: Any, window: float, timeout: float) -> float | None:
    """Seconds until the operator made no call but watches and router-pod lists for `window` seconds (None: never,
    within timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = len(harness.operator_calls)
        time.sleep(window)
        if not calls_by_verb(harness.operator_calls[before:], pod_lists=False):
            return round(time.monotonic() - started - window, 2)
    return None


def _pod_list(call: Any) -> bool:
    return bool(call.verb == "list" and call.resource == "pods")


def calls_by_verb(calls: list[Any], pod_lists: bool = True) -> Counter[str]:
    """API calls by verb, watches left out (and the live-status timer's lists of router pods unless `pod_lists`)."""
    return Counter(c.verb for c in calls
                   if c.group is not None and c.verb != "watch" and (pod_lists or not _pod_list(c)))


def duplicates(cluster: Cluster) -> dict[str, int]:
    """Children that exist more than once, or under another name than their parent's (none expected)."""
    out: dict[str, int] = {}
    for plural in ("rayjobs", "configmaps", "deployments", "services"):
        extra = sum(n - 1 for n in cluster.names(plural).values() if n > 1)
        if extra:
            out[plural] = extra
    jobs = cluster.names("distillationjobs")
    stray = [n for n in cluster.names("rayjobs") if n.rsplit("-g", 1)[0] not in jobs or not n.endswith("-g1")]
    if stray:
        out["stray rayjobs"] = len(stray)
    return out


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    harness_module = _harness_module()
    rng = random.Random(args.seed)
    first = Batch("a", args.jobs, args.jobs // 5)
    second = Batch("b", max(1, args.jobs // 2), max(1, args.jobs // 10))
    with harness_module.OperatorHarness(workdir) as harness:
        cluster = Cluster(harness)
        harness.create(harness_module.volume_claim("models"))  # the claim every job's pvc:// output names
        operator = Operator(harness.kubeconfig, workdir / "operator.log")
        operator.wait_serving()
        results: dict[str, Any] = {"jobs": first.jobs, "students": first.students, "burst": args.burst}
        try:
            # 1. The burst, and the steady state every object reaches.
            started = time.monotonic()
            cpu_before = operator.cpu_seconds(), _own_cpu_seconds()
            create(harness, first.objects(), args.burst)
            results["create_seconds"] = round(time.monotonic() - started, 2)
            wait(cluster, waiting_state, first, args.timeout)
            results["steady_state_s"] = round(time.monotonic() - started, 2)
            # Whose CPU the burst took: the operator's process, and this one's (kmock's emulator, the creates and the
            # polling of steady state). On a shared machine the rest went to other work.
            results["cpu_seconds_to_steady_state"] = {
                "operator": round(operator.cpu_seconds() - cpu_before[0], 1),
                "emulator_and_driver": round(_own_cpu_seconds() - cpu_before[1], 1)}
            print(f"  steady state 1: {results['steady_state_s']} s", flush=True)

            # 2. The served jobs succeed: their deployments deploy.
            started = time.monotonic()
            succeed(harness, first)
            wait(cluster, serving_state, first, args.timeout)
            results["serving_state_s"] = round(time.monotonic() - started, 2)
            print(f"  steady state 2: {results['serving_state_s']} s", flush=True)

            # 3. Quiet: the operator works off what the bursts queued, then makes no call but its watches (a hot
            # loop never gets quiet).
            started = time.monotonic()
            results["quiet_after_s"] = quiet(harness, args.idle, args.timeout)
            before = len(harness.operator_calls)
            time.sleep(args.idle)
            idle = harness.operator_calls[before:]
            results["idle_calls"] = dict(calls_by_verb(idle, pod_lists=False))
            results["idle_router_pod_lists"] = sum(1 for c in idle if _pod_list(c))

            calls = harness.operator_calls
            objects = first.jobs + first.students
            by_verb = calls_by_verb(calls)
            results["api_calls_per_object"] = round(sum(by_verb.values()) / objects, 2)
            results["api_calls_per_object_by_verb"] = {v: round(n / objects, 2) for v, n in sorted(by_verb.items())}
            errors = dict(harness.server.errors)
            results["conflicts"] = sum(n for (_, _, code), n in errors.items() if code == 409)
            results["error_answers"] = {f"{verb} {plural} {code}": n
                                        for (verb, plural, code), n in sorted(errors.items())}
            metrics = parse_metrics(operator.metrics())
            results["reconciliations_per_object"] = {
                kind: round(sum(v for (k, _), v in metrics["reconciliations"].items() if k == kind) / count, 2)
                for kind, count in (("DistillationJob", first.jobs), ("StudentDeployment", first.students))}
            results["reconcile_seconds"] = {
                kind: {"p50": _round(quantile(b, 0.5)), "p95": _round(quantile(b, 0.95))}
                for kind, b in metrics["buckets"].items()}
            results["peak_rss_mb"] = round(operator.peak_rss / 2**20, 1)
        finally:
            operator.stop()

        # 4. Another burst with the operator killed at random moments during it, and restarted each time.
        objects = second.objects()
        kill_at = sorted(rng.sample(range(1, len(objects)), min(args.kills, len(objects) - 1)))
        operator = Operator(harness.kubeconfig, workdir / "operator.log")
        operator.wait_serving()
        started = time.monotonic()
        kills = 0
        try:
            for i, obj in enumerate(objects):
                harness.create(copy.deepcopy(obj))
                if kills < len(kill_at) and i == kill_at[kills]:
                    time.sleep(rng.uniform(0.0, 1.0))  # let some handlers be mid-way
                    operator.kill()
                    kills += 1
                    operator = Operator(harness.kubeconfig, workdir / "operator.log")
                    operator.wait_serving()
            wait(cluster, waiting_state, second, args.timeout)
            results_after = serving_state(cluster, first)  # and the first batch is still where it was
        finally:
            operator.stop()
        cluster.refresh()
        results["crash_burst"] = {"jobs": second.jobs, "students": second.students, "kills": kills,
                                  "steady_state_s": round(time.monotonic() - started, 2),
                                  "duplicates": duplicates(cluster), "first_batch_changed": results_after}
    return results


def _own_cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def checks(results: dict[str, Any]) -> dict[str, bool]:
    return {
        f"steady state within {TARGETS['steady_state_s']:g} s": results["steady_state_s"] <= TARGETS["steady_state_s"],
        f"peak RSS within {TARGETS['peak_rss_mb']:g} MB": results["peak_rss_mb"] <= TARGETS["peak_rss_mb"],
        "quiet after the bursts, no calls while idle but router-pod lists (no hot loop)":
            results["quiet_after_s"] is not None and not results["idle_calls"],
        "no 409 storm (conflicts under 1% of objects)":
            results["conflicts"] <= 0.01 * (results["jobs"] + results["students"]),
        "no duplicate children after the crashes": not results["crash_burst"]["duplicates"],
        "the first batch unchanged by the crashes": not results["crash_burst"]["first_batch_changed"],
    }


def table(results: dict[str, Any]) -> str:
    rows = [f"{results['jobs']} DistillationJobs, {results['students']} StudentDeployments, bursts of "
            f"{results['burst']}",
            f"  created in {results['create_seconds']} s; steady state (children and status) after "
            f"{results['steady_state_s']} s; deployments serving {results['serving_state_s']} s after the jobs "
            "succeeded",
            f"  API calls per object {results['api_calls_per_object']} {results['api_calls_per_object_by_verb']}; "
            f"conflicts (409) {results['conflicts']}; error answers {results['error_answers']}; calls while idle "
            f"{results['idle_calls'] or 'none'} (quiet {results['quiet_after_s']} s after steady state 2), and "
            f"{results['idle_router_pod_lists']} lists of router pods by the live-status timer",
            f"  reconciliations per object {results['reconciliations_per_object']}; duration "
            f"{results['reconcile_seconds']}",
            f"  operator peak RSS {results['peak_rss_mb']} MB; CPU seconds until steady state "
            f"{results['cpu_seconds_to_steady_state']}",
            f"  crash burst: {results['crash_burst']['jobs']} jobs, {results['crash_burst']['students']} deployments, "
            f"{results['crash_burst']['kills']} SIGKILLs; steady again after {results['crash_burst']['steady_state_s']}"
            f" s; duplicates {results['crash_burst']['duplicates'] or 'none'}"]
    rows += [f"  {'ok    ' if ok else 'FAILED'} {name}" for name, ok in results["checks"].items()]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="DistillationJobs (StudentDeployments: a fifth)")
    parser.add_argument("--burst", type=int, default=100, help="objects created back to back per burst")
    parser.add_argument("--kills", type=int, default=3, help="operator SIGKILLs during the crash burst")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of quiet to watch for a hot loop")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each steady state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, help="keep the operator's log and kubeconfig here")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = measure(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="kubedistill-scale-") as tmp:
            results = measure(args, Path(tmp))
    results["checks"] = checks(results)
    publish(results, args.results, table, "the emulator, the operator and this driver")
    return 0 if all(results["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
