"""`kubedistill manifests` and `kubedistill operator`'s flags and environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubedistill_operator.cli import options_from_args
from kubedistill_operator.config import OperatorConfig
from kubedistill_operator.main import FINALIZER, build_settings
from kubedistill_validation import validate_object

from kubedistill.api import load_manifests
from kubedistill.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if load_manifests(p))


def test_there_are_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_manifests_of_every_example_validate(path, capsys):
    assert main(["manifests", str(path)]) == 0
    objects = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    resources = load_manifests(path)
    assert objects and len({o["kind"] for o in objects}) >= 3
    for obj in objects:
        validate_object(obj)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubedistill-operator"
        assert obj["metadata"]["ownerReferences"][0]["name"] in {r.metadata.name for r in resources}


def test_manifests_of_a_job_and_its_deployment_serve_the_jobs_output(capsys):
    files = [str(ROOT / "examples" / "quickstart" / n) for n in ("distillationjob.yaml", "studentdeployment.yaml")]
    assert main(["manifests", *files]) == 0
    objects = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    fetch = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["command"][3] == "file:///tmp/kubedistill/bbc-news-topics/model_repository"


def test_manifests_of_a_chain_show_the_assistants_student_as_teacher(capsys):
    chain = ROOT / "examples" / "teacher-assistant"
    assert main(["manifests", str(chain / "assistant.yaml"), str(chain / "tiny.yaml")]) == 0
    out = capsys.readouterr()
    objects = [d for d in yaml.safe_load_all(out.out) if d]
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "bbc-news-tiny-spec"]
    teacher = yaml.safe_load(config_map["data"]["distillationjob.yaml"])["spec"]["teacher"]
    assert teacher["uri"] == "file:///tmp/kubedistill/bbc-news-assistant/student" and "jobRef" not in teacher
    assert "not among the files" not in out.err

    assert main(["manifests", str(chain / "tiny.yaml")]) == 0
    assert "DistillationJob bbc-news-assistant (teacher.jobRef) is not among the files" in capsys.readouterr().err


def test_manifests_refuses_jobs_that_teach_each_other_or_disagree_on_labels(tmp_path, capsys):
    chain = ROOT / "examples" / "teacher-assistant"
    assistant = yaml.safe_load((chain / "assistant.yaml").read_text())
    tiny = yaml.safe_load((chain / "tiny.yaml").read_text())
    assistant["spec"]["teacher"] = {"jobRef": {"name": tiny["metadata"]["name"]}}
    assistant["spec"]["student"] = {"uri": "hf://org/student"}
    (tmp_path / "cycle.yaml").write_text(yaml.safe_dump_all([assistant, tiny]))
    assert main(["manifests", str(tmp_path / "cycle.yaml")]) == 2
    err = capsys.readouterr().err
    assert "spec.teacher.jobRef.name" in err and "cycle" in err and "bbc-news-assistant" in err

    assistant = yaml.safe_load((chain / "assistant.yaml").read_text())
    assistant["spec"]["task"]["labels"] = list(reversed(assistant["spec"]["task"]["labels"]))
    (tmp_path / "labels.yaml").write_text(yaml.safe_dump_all([assistant, tiny]))
    assert main(["manifests", str(tmp_path / "labels.yaml")]) == 2
    assert "task.labels" in capsys.readouterr().err


def test_manifests_refuses_vllm_for_a_classification_job_as_the_operator_does(tmp_path, capsys):
    quickstart = ROOT / "examples" / "quickstart"
    job = yaml.safe_load((quickstart / "distillationjob.yaml").read_text())
    deployment = yaml.safe_load((quickstart / "studentdeployment.yaml").read_text())
    deployment["spec"]["triton"] = {"backend": "vllm", "gpus": 1}
    (tmp_path / "both.yaml").write_text(yaml.safe_dump_all([job, deployment]))
    assert main(["manifests", str(tmp_path / "both.yaml")]) == 2
    err = capsys.readouterr().err
    assert "spec.triton.backend" in err and "sequence-classification" in err


def test_manifests_refuses_a_bad_file_with_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load((ROOT / "examples" / "quickstart" / "distillationjob.yaml").read_text())
    doc["spec"]["distillation"]["loss"] = "mse"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["manifests", str(bad)]) == 2
    assert "spec.distillation.loss" in capsys.readouterr().err


def test_manifests_reads_a_folder_as_kubectl_apply_does_and_counts_what_it_skips(capsys):
    models = ROOT / "examples" / "gitops" / "models"
    files = [str(models / n) for n in ("distillationjob.yaml", "studentdeployment.yaml")]
    assert main(["manifests", *files]) == 0
    one_by_one = capsys.readouterr().out
    assert main(["manifests", str(models)]) == 0
    captured = capsys.readouterr()
    assert captured.out == one_by_one
    skipped = "skipped 3 document(s) of other kinds: 1 Kustomization, 1 Namespace, 1 PersistentVolumeClaim\n"
    assert captured.err == skipped

    gitops = str(ROOT / "examples" / "gitops")  # its manifests are in subfolders: -R, as with kubectl
    assert main(["manifests", gitops]) == 2
    assert f"no DistillationJob or StudentDeployment in {gitops}" in capsys.readouterr().err
    assert main(["manifests", "-R", gitops]) == 0
    assert capsys.readouterr().out == one_by_one

    assert main(["manifests", str(models / "missing")]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err


def test_manifests_reads_stdin_for_a_dash(monkeypatch, capsys):
    import io

    path = ROOT / "examples" / "quickstart" / "distillationjob.yaml"
    assert main(["manifests", str(path)]) == 0
    from_file = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO(path.read_text()))
    assert main(["manifests", "-"]) == 0
    assert capsys.readouterr().out == from_file


def test_manifests_show_configmap_files_as_readable_blocks(capsys):
    from kubedistill_operator.manifests import render

    path = ROOT / "examples" / "quickstart" / "distillationjob.yaml"
    assert main(["manifests", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  distillationjob.yaml: |\n    apiVersion: kubedistill.io/v1alpha1\n    kind: DistillationJob\n" in out
    assert "\\n" not in out  # no escaped line breaks anywhere
    assert list(yaml.safe_load_all(out)) == render(load_manifests(path), OperatorConfig.from_env())


def test_every_command_and_flag_says_what_it_does_and_its_default():
    import argparse

    from kubedistill.cli import COMMANDS

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == set(COMMANDS)
    listed = {a.dest: a.help for a in commands._choices_actions}
    for name, command in commands.choices.items():
        assert listed[name] and command.description, f"kubedistill {name}: no help line or description"
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = f"kubedistill {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{flag}: no help"
            if action.option_strings and action.nargs != 0:  # a flag that takes a value says what it defaults to
                assert "default" in action.help, f"{flag}: the help does not give the default"


def test_operator_flags():
    args = build_parser().parse_args(["operator", "--namespace", "a", "--namespace", "b", "--peering", "kd",
                                      "--liveness-port", "9090"])
    options = options_from_args(args)
    assert options.namespaces == ("a", "b") and options.peering == "kd" and not options.standalone
    assert options.liveness_endpoint == "http://0.0.0.0:9090/healthz"
    cluster_wide = options_from_args(build_parser().parse_args(["operator", "-A", "--standalone",
                                                                "--liveness-port", "0"]))
    assert cluster_wide.namespaces == () and cluster_wide.standalone and cluster_wide.liveness_endpoint is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "-A", "--namespace", "a"])
    with pytest.raises(SystemExit):
        options_from_args(build_parser().parse_args(["operator", "--peering", "x", "--standalone"]))


def test_settings_use_the_projects_prefix():
    settings = build_settings(options_from_args(build_parser().parse_args(["operator"])))
    assert settings.persistence.finalizer == FINALIZER == "kubedistill.io/finalizer"
    assert settings.persistence.progress_storage.prefix == "kubedistill.io"
    assert settings.persistence.diffbase_storage.prefix == "kubedistill.io"


def test_config_from_env():
    config = OperatorConfig.from_env({
        "KUBEDISTILL_JOB_IMAGE": "r/jobs:2", "KUBEDISTILL_ROUTER_IMAGE": "r/router:2",
        "KUBEDISTILL_TRITON_IMAGE": "r/triton:24", "KUBEDISTILL_IMAGE_PULL_SECRETS": "a, b,,",
    })
    assert config == OperatorConfig("r/jobs:2", "r/router:2", "r/triton:24", ("a", "b"))
    assert OperatorConfig.from_env({}) == OperatorConfig()


def test_peering_replicas_never_tie_on_priority():
    # Equal priorities freeze every kopf peer; replicas share their arguments, so each must draw its own.
    args = build_parser().parse_args(["operator", "--peering", "kubedistill"])
    priorities = {build_settings(options_from_args(args)).peering.priority for _ in range(50)}
    assert len(priorities) == 50 and min(priorities) > 0
    pinned = build_parser().parse_args(["operator", "--peering", "kubedistill", "--priority", "7"])
    assert build_settings(options_from_args(pinned)).peering.priority == 7
    assert build_settings(options_from_args(build_parser().parse_args(["operator"]))).peering.priority == 0
