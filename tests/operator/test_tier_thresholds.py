"""router.tiers without thresholds take the ones the job recommends for its cascade (status.results.
cascadeThresholds): resolved from the job's status, refused with the field named when the job evaluated no tier of
that name, and written into the router's config by the real operator against the emulated API server."""

from __future__ import annotations

import re
from typing import Any

import kubedistill_harness as harness
import pytest
import yaml
from kubedistill_harness import JOB, NS, SD, TIMEOUT, condition, example, status, volume_claim
from kubedistill_operator import naming
from kubedistill_operator.kubeapi import CONFIG_MAPS, DISTILLATION_JOBS, RAY_JOBS, STUDENT_DEPLOYMENTS
from kubedistill_operator.reconcile.student import job_change_matters, resolve_source
from kubedistill_operator.status.student import Waiting

from kubedistill.api import StudentDeployment
from kubedistill.routerconfig import RouterConfig

RESULTS = {"gatePassed": True, "retention": 0.97, "recommendedThreshold": 0.8, "escalationRate": 0.1,
           "cascadeThresholds": {"student": 0.9, "mid": 0.6},
           "artifactUri": f"pvc://models/{JOB}/run-1/model_repository", "modelVersion": "run-1"}


def _job(results: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "bbc", "generation": 1},
            "spec": {"task": {"type": "sequence-classification"}},
            "status": {"phase": "Succeeded", "observedGeneration": 1, "results": results}}


def _sd(router: dict[str, Any]) -> StudentDeployment:
    return StudentDeployment.model_validate({"metadata": {"name": "sd"}, "spec": {
        "source": {"jobRef": {"name": "bbc"}}, "router": router}})


def test_unset_tier_thresholds_and_the_students_come_from_the_jobs_cascade():
    source = resolve_source(None, _sd({"tiers": [{"name": "mid", "model": "mid"}]}), _job(RESULTS))
    assert not isinstance(source, Waiting)
    assert source.threshold == 0.9  # recommended with the tier, not the two-model 0.8
    assert [(t.name, t.threshold) for t in source.tiers] == [("mid", 0.6)]
    # The spec's own thresholds stand; the student's is the spec's when it sets one.
    pinned = resolve_source(None, _sd({"threshold": 0.7, "tiers": [{"name": "mid", "model": "mid"},
                                                                    {"name": "big", "model": "big",
                                                                     "threshold": 0.3}]}),
                            _job({**RESULTS, "cascadeThresholds": {"student": 0.9, "mid": 0.6, "big": 0.5}}))
    assert pinned.threshold == 0.7 and [t.threshold for t in pinned.tiers] == [0.6, 0.3]
    # Every tier set: the job's cascade is not used, the student keeps the two-model recommendation.
    assert resolve_source(None, _sd({"tiers": [{"name": "mid", "model": "mid", "threshold": 0.5}]}),
                          _job(RESULTS)).threshold == 0.8


@pytest.mark.parametrize(("router", "results", "message"), [
    ({"tiers": [{"name": "large", "model": "large"}]}, RESULTS,
     r"^spec\.router\.tiers\[0\]\.threshold: unset, and DistillationJob bbc recommends no threshold for a tier "
     r"named 'large' \(its evaluation\.tiers: \['mid'\]\)"),
    ({"tiers": [{"name": "mid", "model": "mid"}]}, {k: v for k, v in RESULTS.items() if k != "cascadeThresholds"},
     r"^spec\.router\.tiers\[0\]\.threshold: .*evaluation\.tiers: none"),
    ({"confidenceSignal": "margin", "threshold": 0.5, "tiers": [{"name": "mid", "model": "mid"}]}, RESULTS,
     r"^spec\.router\.tiers\[0\]\.threshold: unset, .* for the max-probability signal, not margin"),
])
def test_a_tier_the_job_did_not_evaluate_is_refused_naming_the_field(router, results, message):
    refused = resolve_source(None, _sd(router), _job(results))
    assert isinstance(refused, Waiting) and refused.reason == "TierThresholdRequired" and refused.refused
    assert re.search(message, refused.message), refused.message


def test_a_filled_tier_out_of_order_is_refused():
    refused = resolve_source(None, _sd({"threshold": 0.5, "tiers": [{"name": "mid", "model": "mid"}]}), _job(RESULTS))
    assert refused.reason == "TiersOutOfOrder" and "router.tiers[0].threshold: 0.6 is above 0.5" in refused.message


def _deploy_job(cluster: harness.OperatorHarness, results: dict[str, Any]) -> None:
    cluster.create(volume_claim("models"))
    cluster.create(example("quickstart/distillationjob.yaml"))
    cluster.wait_for(lambda: cluster.get(RAY_JOBS, NS, f"{JOB}-g1"), TIMEOUT, "the RayJob")
    cluster.patch_status(DISTILLATION_JOBS, NS, JOB, {"results": results})
    cluster.patch_status(RAY_JOBS, NS, f"{JOB}-g1", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})


def test_the_operator_fills_the_routers_tier_thresholds_from_the_job(tmp_path):
    with harness.OperatorHarness(tmp_path) as cluster:
        cluster.start_operator()
        _deploy_job(cluster, RESULTS)
        sd = example("quickstart/studentdeployment.yaml")
        sd["spec"]["router"]["tiers"] = [{"name": "mid", "model": "mid"}]
        cluster.create(sd)
        name = naming.router_config_map_name(SD)
        config_map = cluster.wait_for(lambda: cluster.get(CONFIG_MAPS, NS, name), TIMEOUT, "the router's ConfigMap")
        config = RouterConfig.model_validate(yaml.safe_load(config_map["data"]["router.yaml"]))
        assert config.threshold == 0.9 and [(t.name, t.threshold) for t in config.tiers] == [("mid", 0.6)]
        shown = cluster.wait_for(lambda: status(cluster, STUDENT_DEPLOYMENTS, SD).get("tierThresholds"), TIMEOUT,
                                 "status.tierThresholds")
        assert shown == {"mid": 0.6} and status(cluster, STUDENT_DEPLOYMENTS, SD)["threshold"] == 0.9
        assert not job_change_matters(cluster.get(STUDENT_DEPLOYMENTS, NS, SD), cluster.get(DISTILLATION_JOBS, NS, JOB))

        # A tier the job did not evaluate: refused, naming the field; what is deployed stays as it is.
        cluster.patch(STUDENT_DEPLOYMENTS, NS, SD, {"spec": {"router": {"tiers": [{"name": "large",
                                                                                   "model": "large"}]}}})

        def refused() -> dict[str, Any] | None:
            found = condition(cluster, STUDENT_DEPLOYMENTS, SD, "ModelAvailable")
            return found if found.get("reason") == "TierThresholdRequired" else None

        found = cluster.wait_for(refused, TIMEOUT, "the refusal")
        assert found["status"] == "False" and found["message"].startswith("spec.router.tiers[0].threshold: unset")
        assert "'large'" in found["message"]
        config_map = cluster.get(CONFIG_MAPS, NS, name)
        assert [t["name"] for t in yaml.safe_load(config_map["data"]["router.yaml"])["tiers"]] == ["mid"]
