"""Serving under faults: the router as shipped (`python -m kubedistill_router`) in front of a real tritonserver
and a loopback remote teacher, under load from 32 concurrent clients, through three faults. Each scenario runs
in three equal phases (healthy, fault, recovered):

- `teacher-slow`: the teacher answers only after 3 × its timeout; the router gives up at the timeout, the
  student answers (marked `degraded`), the circuit breaker opens, then closes once the teacher is quick again;
- `teacher-refusing`: the teacher's port refuses connections, then listens again;
- `triton-restart`: tritonserver is killed (SIGKILL) and started again on the same ports. While it is down the
  student cannot answer: 503 with Retry-After, and /readyz false; once it is back /readyz must be true again
  within 5 s.

What is checked, per scenario: no unhandled error (a 5xx other than the router's 503, a dropped connection, a
client timeout), no 503 while the student can answer, no request slower than its bound (2 × router
timeoutSeconds, as a request may queue behind a shared call, plus the teacher's timeout, plus 1 s of slack for
a shared machine), and for `triton-restart` readiness false while Triton is down and true within 5 s of its
return. Figures: requests, answers by model, degraded answers (in all and by phase), the router's failed teacher
calls by reason, errors by kind, latency p50/p99/max.

    python benchmarks/faults.py [--repository DIR] [--seconds 60] [--concurrency 32] [--scenarios NAME ...]

`--seconds` is the length of each scenario (default 60). Without --repository it exports the router
benchmark's BERT student and MiniLM teacher (untrained heads) and routes about half the traffic to the
teacher. Prints a table and writes benchmarks/results/faults.json; exits 1 when a check fails.
`tests/router/test_faults.py` runs the same scenarios for a few seconds each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from kubedistill_router.local.repository import build_local_repository
from kubedistill_router.local.triton import TritonServer, free_port, start_triton
from published import publish

from kubedistill.artifacts import ServingManifest
from kubedistill.routerconfig import RouterConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
SCENARIOS = ("teacher-slow", "teacher-refusing", "triton-restart")
STUDENT_TIMEOUT = 2.0  # router.timeoutSeconds (its default)
TEACHER_TIMEOUT = 1.0  # router.teacher.timeoutSeconds
SLACK = 1.0  # seconds of scheduling noise allowed on a machine the load generator shares
BOUND = 2 * STUDENT_TIMEOUT + TEACHER_TIMEOUT + SLACK
READY_WITHIN = 5.0  # seconds from Triton's return to the router's readiness
PROBE_EVERY = 0.1


def _router_benchmark() -> Any:
    """benchmarks/router.py (its corpus and export), loaded by path: benchmarks/ is not a package."""
    spec = importlib.util.spec_from_file_location("kubedistill_router_benchmark", Path(__file__).with_name("router.py"))
    assert spec is not None and spec.loader is not None
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


class Teacher:
    """A remote kserve-v1 teacher on a fixed loopback port: `quick`, `slow` (past the router's timeout) or
    `refusing` (nothing listens on the port)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.mode = "quick"
        self.port = free_port()
        self.calls = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _predict(self, request: web.Request) -> web.Response:
        self.calls += 1
        instances = (await request.json())["instances"]
        if self.mode == "slow":
            await asyncio.sleep(3 * TEACHER_TIMEOUT)
        return web.json_response({"predictions": [{"label": self.label, "confidence": 0.99} for _ in instances]})

    async def start(self) -> None:
        self.mode = "quick"
        app = web.Application()
        app.router.add_post("/v1/models/{name}:predict", self._predict)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def refuse(self) -> None:
        """Stop the server, open connections included: the router's pooled keep-alive connections are closed and
        new ones refused."""
        self.mode = "refusing"
        await self.close()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class RouterProcess:
    """`python -m kubedistill_router` on a free port, as the sidecar runs, with the fault runs' timeouts."""

    def __init__(self, workdir: Path, repository: Path, triton: TritonServer, teacher: Teacher,
                 threshold: float | None) -> None:
        self.port = free_port()
        config = RouterConfig(model_name="faults", model_repository=str(repository), port=self.port,
                              triton_url=triton.grpc_url, triton_protocol="grpc", mode="route", threshold=threshold,
                              teacher={"url": teacher.url, "protocol": "kserve-v1", "model": "teacher",
                                       "timeoutSeconds": TEACHER_TIMEOUT},
                              timeout_seconds=STUDENT_TIMEOUT, max_concurrency=256)
        path = workdir / "router-faults.yaml"
        path.write_text(config.to_yaml())
        self.log = workdir / "router-faults.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "kubedistill_router", "--config", str(path),
                                             "--host", "127.0.0.1", "--log-level", "WARNING"],
                                            stdout=log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await ready(session, f"{self.base}/readyz"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the router did not start:\n{self.log.read_text()[-2000:]}")
            await asyncio.sleep(PROBE_EVERY)

    def unexpected_errors(self) -> int:
        """Tracebacks the router logged for errors it did not expect (its 500s)."""
        return self.log.read_text(errors="replace").count("unexpected error")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def ready(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@dataclass
class Request:
    started: float
    seconds: float
    status: int | None  # None: no answer (connection dropped, client timeout)
    error: str = ""
    served: Counter[str] = field(default_factory=Counter)
    degraded: int = 0


@dataclass
class Run:
    """What one scenario saw: every request, and the readiness probes of the router and of Triton."""

    name: str
    requests: list[Request] = field(default_factory=list)
    router_ready: list[tuple[float, bool]] = field(default_factory=list)
    triton_ready: list[tuple[float, bool]] = field(default_factory=list)
    fault: tuple[float, float] = (0.0, 0.0)  # when the fault was applied and lifted
    triton_dead: float | None = None  # when Triton's process group was gone (the kill is applied in a thread)
    triton_back: float | None = None  # first moment Triton was ready again
    unexpected_errors: int = 0
    teacher_errors: Counter[str] = field(default_factory=Counter)  # the router's failed teacher calls, by reason


async def load(session: aiohttp.ClientSession, url: str, texts: list[str], concurrency: int,
               done: Callable[[], bool], run: Run) -> None:
    """`concurrency` clients sending one text per request back to back until `done()`."""
    async def worker(offset: int) -> None:
        i = offset
        while not done():
            body = {"instances": [texts[i % len(texts)]]}
            started = time.monotonic()
            try:
                async with session.post(url, json=body) as response:
                    answer = await response.json(content_type=None)
                    request = Request(started, time.monotonic() - started, response.status)
                    if response.status == 200:
                        for prediction in answer["predictions"]:
                            request.served[prediction["served_by"]] += 1
                            request.degraded += bool(prediction.get("degraded"))
                    else:
                        request.error = str(answer.get("error", ""))[:200]
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                request = Request(started, time.monotonic() - started, None, f"{type(error).__name__}: {error}"[:200])
            run.requests.append(request)
            i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))


async def probe(session: aiohttp.ClientSession, stack: Stack, done: Callable[[], bool], run: Run) -> None:
    """Readiness as the kubelet sees it (/readyz), and Triton's own, every PROBE_EVERY seconds."""
    while not done():
        assert stack.router is not None and stack.triton is not None
        now = time.monotonic()
        router_up, triton_up = await asyncio.gather(
            ready(session, f"{stack.router.base}/readyz"), ready(session, f"http://{stack.triton.http_url}/v2/health/ready"))
        run.router_ready.append((now, router_up))
        run.triton_ready.append((now, triton_up))
        await asyncio.sleep(PROBE_EVERY)


class Stack:
    """Triton, the teacher and the router, kept across scenarios; Triton restartable on its ports."""

    def __init__(self, repository: Path, workdir: Path, threshold: float | None) -> None:
        self.repository = repository
        self.workdir = workdir
        self.threshold = threshold
        manifest = ServingManifest.read(repository)
        self.local = build_local_repository(repository, workdir / "local_repository")
        self.teacher = Teacher(manifest.labels[0])
        self.triton: TritonServer | None = None
        self.router: RouterProcess | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.triton = start_triton(self.local, self.workdir / "tritonserver.log")
        await asyncio.to_thread(self.triton.wait_ready, 180)
        await self.teacher.start()
        self.router = RouterProcess(self.workdir, self.local, self.triton, self.teacher, self.threshold)
        await self.router.wait_ready(session)

    def kill_triton(self) -> None:
        """SIGKILL to Triton's process group, as when its container is killed: the server and its python-backend
        stubs (which would otherwise live on, orphaned)."""
        assert self.triton is not None
        os.killpg(self.triton.process.pid, signal.SIGKILL)  # started in a session of its own: pgid == pid
        self.triton.process.wait()

    def restart_triton(self) -> None:
        assert self.triton is not None
        old = self.triton
        self.triton = start_triton(self.local, self.workdir / "tritonserver-restarted.log",
                                   http_port=old.http_port, grpc_port=old.grpc_port)

    async def close(self) -> None:
        if self.router is not None:
            self.router.stop()
        if self.triton is not None:
            self.triton.stop()
        await self.teacher.close()


async def scenario(stack: Stack, session: aiohttp.ClientSession, name: str, seconds: float, texts: list[str],
                   concurrency: int) -> Run:
    """One fault under load: a healthy third, the fault for a third, a recovered third (for a Triton restart, at
    least until the router has had its READY_WITHIN seconds after Triton's return)."""
    assert stack.router is not None and stack.triton is not None
    url = f"{stack.router.base}/v1/models/faults:predict"
    await settle(session, url, texts)
    run = Run(name)
    logged_before = stack.router.unexpected_errors()
    teacher_errors_before = await teacher_errors(session, stack.router.base)
    phase = seconds / 3
    end = time.monotonic() + seconds
    faulting = True

    def done() -> bool:
        return not faulting and time.monotonic() >= end

    async def fault() -> None:
        nonlocal end, faulting
        await asyncio.sleep(phase)
        run.fault = (time.monotonic(), 0.0)
        if name == "teacher-slow":
            stack.teacher.mode = "slow"
        elif name == "teacher-refusing":
            await stack.teacher.refuse()
        else:
            await asyncio.to_thread(stack.kill_triton)
            run.triton_dead = time.monotonic()
        await asyncio.sleep(phase)
        run.fault = (run.fault[0], time.monotonic())
        if name == "teacher-slow":
            stack.teacher.mode = "quick"
        elif name == "teacher-refusing":
            await stack.teacher.start()
        else:
            await asyncio.to_thread(stack.restart_triton)
            assert stack.triton is not None
            await asyncio.to_thread(stack.triton.wait_ready, 180)
            run.triton_back = time.monotonic()
            end = max(end, run.triton_back + max(phase, READY_WITHIN + 1))
        faulting = False

    await asyncio.gather(fault(), load(session, url, texts, concurrency, done, run), probe(session, stack, done, run))
    run.unexpected_errors = stack.router.unexpected_errors() - logged_before
    run.teacher_errors = await teacher_errors(session, stack.router.base) - teacher_errors_before
    return run


async def teacher_errors(session: aiohttp.ClientSession, base: str) -> Counter[str]:
    """The router's count of teacher calls that failed, by reason (timeout, error, circuit-open: skipped)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    found: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kubedistill_router_teacher_errors_total":
                found[sample.labels["reason"]] += int(sample.value)
    return found


async def settle(session: aiohttp.ClientSession, url: str, texts: list[str], timeout: float = 60.0) -> None:
    """Wait until the teacher answers escalations again: after a teacher fault the circuit breaker keeps it out
    for its cooldown (10 s), and the next scenario's healthy phase must be healthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.post(url, json={"instances": texts[:32]}) as response:
                if response.status == 200 and any(p["served_by"] == "teacher" and not p.get("degraded")
                                                  for p in (await response.json())["predictions"]):
                    return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the router did not escalate to the teacher within {timeout:g} s")


def summarise(run: Run) -> dict[str, Any]:
    """The figures of one scenario and whether each check held."""
    fault_on, fault_off = run.fault
    # When the student could not answer: from Triton's death until it was back and the router had READY_WITHIN
    # seconds to notice.
    student_down = (fault_on, (run.triton_back or fault_off) + READY_WITHIN) if run.name == "triton-restart" \
        else (0.0, 0.0)
    codes: Counter[str] = Counter()
    served: Counter[str] = Counter()
    degraded = unanswerable = wrong_503 = unhandled = 0
    latencies = [r.seconds for r in run.requests]
    for r in run.requests:
        codes[str(r.status) if r.status is not None else "no answer"] += 1
        served.update(r.served)
        degraded += r.degraded
        overlaps_down = r.started <= student_down[1] and r.started + r.seconds >= student_down[0]
        if r.status == 503 and overlaps_down:
            unanswerable += 1
        elif r.status == 503:
            wrong_503 += 1
        elif r.status is None or r.status >= 500:
            unhandled += 1
    over_bound = sum(s > BOUND for s in latencies)
    figures: dict[str, Any] = {
        "scenario": run.name, "requests": len(run.requests), "codes": dict(sorted(codes.items())),
        "served_by_student": served["student"], "served_by_teacher": served["teacher"], "degraded": degraded,
        "errors": len(run.requests) - codes["200"], "unhandled_5xx": unhandled + run.unexpected_errors,
        "503_student_down": unanswerable, "503_student_up": wrong_503,
        "p50_ms": _ms(latencies, 50), "p99_ms": _ms(latencies, 99), "max_ms": _ms(latencies, 100),
        "bound_ms": BOUND * 1000, "over_bound": over_bound,
        "error_examples": sorted({r.error for r in run.requests if r.error})[:3],
        # Degraded answers by phase: before the fault, while it lasts (for Triton: until it is ready again), after.
        "degraded_by_phase": {
            "healthy": sum(r.degraded for r in run.requests if r.started < fault_on),
            "fault": sum(r.degraded for r in run.requests if fault_on <= r.started < (run.triton_back or fault_off)),
            "recovered": sum(r.degraded for r in run.requests if r.started >= (run.triton_back or fault_off)),
        },
        "teacher_errors": dict(sorted(run.teacher_errors.items())),
    }
    checks = {"no unhandled 5xx": figures["unhandled_5xx"] == 0,
              "no 503 while the student can answer": wrong_503 == 0,
              "no request past its bound": over_bound == 0}
    if run.name == "triton-restart":
        back = run.triton_back
        # Probes sent from half a second after Triton was gone (the kill runs in a thread, which a busy machine
        # may start late) until it was back, where Triton's own probe, sent at the same moment, found it not ready
        # (the restarted Triton is ready a poll before `wait_ready` returns and `triton_back` is taken).
        down_ready = [t for (t, up), (_, triton_up) in zip(run.router_ready, run.triton_ready, strict=True)
                      if up and not triton_up and (run.triton_dead or fault_on) + PROBE_EVERY * 5 < t
                      and (back is None or t < back)]
        recovered = next((t for t, up in run.router_ready if up and back is not None and t >= back), None)
        figures["ready_while_down"] = len(down_ready)
        figures["not_ready_seconds"] = round(_not_ready_seconds(run.router_ready), 2)
        figures["triton_down_seconds"] = round((back or fault_off) - fault_on, 2)
        figures["ready_after_triton_s"] = None if recovered is None or back is None else round(recovered - back, 2)
        checks["readiness false while Triton is down"] = not down_ready
        checks[f"ready within {READY_WITHIN:g} s of Triton's return"] = \
            figures["ready_after_triton_s"] is not None and figures["ready_after_triton_s"] <= READY_WITHIN
    else:
        during = [r for r in run.requests if fault_on + TEACHER_TIMEOUT + 0.5 <= r.started < fault_off]
        figures["degraded_during_fault"] = sum(r.degraded for r in during)
        figures["teacher_during_fault"] = sum(r.served["teacher"] for r in during)
        checks["the student answers escalations while the teacher cannot (degraded)"] = \
            figures["degraded_during_fault"] > 0 and figures["teacher_during_fault"] == 0
    figures["checks"] = checks
    return figures


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values) * 1000, q)), 1) if values else float("nan")


def _not_ready_seconds(samples: list[tuple[float, bool]]) -> float:
    return sum(b[0] - a[0] for a, b in itertools.pairwise(samples) if not a[1])


async def run_scenarios(repository: Path, workdir: Path, seconds: float, concurrency: int = 32,
                        threshold: float | None = None, texts: list[str] | None = None,
                        scenarios: tuple[str, ...] = SCENARIOS) -> dict[str, Any]:
    """Every scenario against one stack; `seconds` per scenario. Returns the figures and checks."""
    texts = texts or _router_benchmark().bbc_texts()
    stack = Stack(repository, workdir, threshold)
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    client_timeout = aiohttp.ClientTimeout(total=3 * BOUND)  # a hung request ends as "no answer", counted
    results: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        try:
            await stack.start(session)
            for name in scenarios:
                run = await scenario(stack, session, name, seconds, texts, concurrency)
                results.append(summarise(run))
                print(line(results[-1]), flush=True)
        finally:
            await stack.close()
    return {"scenarios": results, "seconds_per_scenario": seconds, "concurrency": concurrency,
            "student_timeout_s": STUDENT_TIMEOUT, "teacher_timeout_s": TEACHER_TIMEOUT, "bound_s": BOUND,
            "passed": all(all(r["checks"].values()) for r in results)}


def line(r: dict[str, Any]) -> str:
    failed = [name for name, ok in r["checks"].items() if not ok]
    return (f"  {r['scenario']:<17} {r['requests']:6d} requests, student {r['served_by_student']}, teacher "
            f"{r['served_by_teacher']}, degraded {r['degraded']} {r['degraded_by_phase']}, teacher errors "
            f"{r['teacher_errors']}, errors {r['errors']} {r['codes']}, max "
            f"{r['max_ms']:.0f} ms" + (f"  FAILED: {', '.join(failed)}" if failed else "  ok"))


def table(results: dict[str, Any]) -> str:
    head = (f"{'scenario':<17} {'requests':>8} {'student':>8} {'teacher':>8} {'degraded':>8} {'errors':>7} "
            f"{'503 down':>8} {'unhandled':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  readiness")
    rows = [head, "-" * len(head)]
    for r in results["scenarios"]:
        readiness = "-"
        if r["scenario"] == "triton-restart":
            readiness = (f"ready {r['ready_after_triton_s']} s after Triton's return; {r['ready_while_down']} ready "
                         f"probes while down")
        rows.append(f"{r['scenario']:<17} {r['requests']:>8} {r['served_by_student']:>8} {r['served_by_teacher']:>8} "
                    f"{r['degraded']:>8} {r['errors']:>7} {r['503_student_down']:>8} {r['unhandled_5xx']:>9} "
                    f"{r['p50_ms']:>7.0f} {r['p99_ms']:>7.0f} {r['max_ms']:>7.0f}  {readiness}")
    rows.append(f"bound per request {results['bound_s']:g} s; every check "
                f"{'passed' if results['passed'] else 'did NOT pass'}")
    return "\n".join(rows)


async def _median_confidence(repository: Path, workdir: Path, texts: list[str]) -> float:
    """A threshold that escalates about half the traffic: the median student confidence, from Triton directly."""
    bench = _router_benchmark()
    from kubedistill_router.tokenizer import TextEncoder

    manifest = ServingManifest.read(repository)
    local = build_local_repository(repository, workdir / "probe_repository")
    triton = start_triton(local, workdir / "tritonserver-probe.log")
    try:
        await asyncio.to_thread(triton.wait_ready, 180)
        encoder = TextEncoder(repository / manifest.tokenizer, manifest.student.inputs, manifest.max_length)
        direct = bench.Direct(triton.grpc_url, encoder, manifest, texts[:100])
        confidences = [await bench._student_conf(direct, t) for t in texts[:100]]
        await direct.client.close()
        return float(np.median(confidences))
    finally:
        triton.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, help="a model repository to serve (default: export one)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each scenario (three phases)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threshold", type=float, help="route-mode threshold (default: escalate about half)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    bench = _router_benchmark()
    texts = bench.bbc_texts()
    with tempfile.TemporaryDirectory(prefix="kubedistill-faults-") as tmp:
        workdir = Path(tmp)
        repo = args.repository or bench.build_repository(workdir, texts)
        threshold = args.threshold
        if threshold is None and ServingManifest.read(repo).recommended_threshold is None:
            threshold = asyncio.run(_median_confidence(repo, workdir, texts))
        results = asyncio.run(run_scenarios(repo, workdir, args.seconds, args.concurrency, threshold, texts,
                                            tuple(args.scenarios)))
    results["threshold"] = threshold
    publish(results, args.results, table, "load generator, router, teacher and Triton")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
