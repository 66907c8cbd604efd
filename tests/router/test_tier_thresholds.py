"""router.tiers without a threshold take the job's cascade thresholds from serving.json (`kubedistill serve`, or a
deployment of a model repository URI); a tier the job did not evaluate is refused at start, naming the field."""

from __future__ import annotations

import json
import shutil

import pytest

from kubedistill.api.studentdeployment import RouterTier
from kubedistill.artifacts import SERVING_MANIFEST

from .conftest import router_config


def _with_cascade(model_repository, tmp_path, thresholds):  # type: ignore[no-untyped-def]
    repo = tmp_path / "model_repository"
    shutil.copytree(model_repository, repo)
    manifest = json.loads((repo / SERVING_MANIFEST).read_text())
    (repo / SERVING_MANIFEST).write_text(json.dumps({**manifest, "cascade_thresholds": thresholds}))
    return repo


def test_unset_tier_thresholds_come_from_serving_json(model_repository, threshold, tmp_path):
    from kubedistill_router.app import build_app
    from kubedistill_router.classification import ClassificationHandler

    built = []
    original = ClassificationHandler.__init__

    def keep(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        built.append(self)

    repo = _with_cascade(model_repository, tmp_path, {"student": threshold * 0.9, "mid": threshold / 2})
    with pytest.MonkeyPatch.context() as patch:  # no Triton is called: the handler is only built
        patch.setattr(ClassificationHandler, "__init__", keep)
        build_app(router_config(repo, "127.0.0.1:1", mode="route",
                                tiers=[RouterTier(name="mid", model="mid"),
                                       RouterTier(name="big", model="mid", threshold=0.01)]))
    (handler,) = built
    assert [(t.name, t.threshold) for t in handler.tiers] == [("mid", threshold / 2), ("big", 0.01)]
    assert handler.threshold == threshold * 0.9  # the student's, recommended with the tiers (not serving.json's
    # two-model recommended_threshold)

    with pytest.raises(ValueError, match=r"^router\.tiers\[0\]\.threshold: unset, and serving\.json recommends no "
                                         r"threshold for a tier named 'large' \(its evaluation\.tiers: \['mid'\]\)"):
        build_app(router_config(repo, "127.0.0.1:1", mode="route", tiers=[RouterTier(name="large", model="mid")]))
    with pytest.raises(ValueError, match=r"^router\.tiers\[0\]\.threshold: .*evaluation\.tiers: none"):
        build_app(router_config(model_repository, "127.0.0.1:1", mode="route",
                                tiers=[RouterTier(name="mid", model="mid")]))
    with pytest.raises(ValueError, match=r"router\.tiers\[0\]\.threshold: .* is above"):  # filled, then checked
        build_app(router_config(repo, "127.0.0.1:1", mode="route", threshold=threshold / 4,
                                tiers=[RouterTier(name="mid", model="mid")]))
