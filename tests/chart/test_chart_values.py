"""values.yaml is documented key by key, and values.schema.json refuses bad values with a message."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from .conftest import CHART, NAMESPACE, RELEASE

helm = pytest.importorskip("helm_python")

# (values, text the refusal must contain: the field's path and what is wrong)
BAD_VALUES = [
    ({"replicaCount": 0}, "at '/replicaCount': minimum: got 0, want 1"),
    ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
    ({"replicaCount": 2}, "at '/peering/enabled': value must be true"),
    ({"repliaCount": 2}, "additional properties 'repliaCount' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent'"),
    ({"image": {"tag": "v1 beta"}}, "at '/image/tag'"),
    ({"jobImage": {"digest": "md5:0123"}}, "at '/jobImage/digest': 'md5:0123' does not match pattern"),
    ({"routerImage": {"repository": ""}}, "at '/routerImage/repository': minLength: got 0, want 1"),
    ({"watchNamespaces": ["News_Topics"]}, "at '/watchNamespaces/0': 'News_Topics' does not match pattern"),
    ({"watchNamespaces": "news-topics"}, "at '/watchNamespaces': got string, want array"),
    ({"watchNamespaces": ["a", "a"]}, "at '/watchNamespaces': items at 0 and 1 are equal"),
    ({"serviceAccount": {"create": False}}, "at '/serviceAccount/name': minLength: got 0, want 1"),
    ({"rbac": {"create": "yes"}}, "at '/rbac/create': got string, want boolean"),
    ({"imagePullSecrets": ["ghcr"]}, "at '/imagePullSecrets/0': got string, want object"),
    ({"livenessProbe": {"port": 80}}, "at '/livenessProbe/port': minimum: got 80, want 1,024"),
    ({"serviceMonitor": {"routers": {"interval": "30"}}}, "at '/serviceMonitor/routers/interval': '30' does not match"),
    ({"serviceMonitor": {"router": {"enabled": True}}}, "additional properties 'router' not allowed"),
    ({"peering": {"enabled": "true"}}, "at '/peering/enabled': got string, want boolean"),
    ({"metrics": {"port": 80}}, "at '/metrics/port': minimum: got 80, want 1,024"),
    ({"metrics": {"enabled": False}, "serviceMonitor": {"operator": {"enabled": True}}},
     "at '/metrics/enabled': value must be true"),
    ({"serviceMonitor": {"operator": {"scrapeTimeout": "10"}}},
     "at '/serviceMonitor/operator/scrapeTimeout': '10' does not match"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[json.dumps(v) for v, _ in BAD_VALUES])
def test_schema_refuses_bad_values_with_a_message(chart, values, message):
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert message in str(refused.value)
    assert "values don't meet the specifications of the schema" in str(refused.value)


def test_schema_accepts_the_defaults_and_every_documented_variant(chart):
    from .conftest import VARIANTS

    for values in [{}, *VARIANTS.values()]:
        chart.validate_schema(values)


def _keys(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        keys.append(prefix + key)
        # Kubernetes objects passed through as they are (resources, security contexts) are documented
        # as a whole; the chart's own option groups are documented key by key.
        if isinstance(value, dict) and value and key not in {"resources", "podSecurityContext", "securityContext"}:
            keys.extend(_keys(value, prefix + key + "."))
    return keys


def test_every_value_is_documented_by_a_comment_starting_with_its_name():
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*# -- ([A-Za-z0-9_.]+) ", text, flags=re.MULTILINE))
    values = yaml.safe_load(text)
    missing = [key for key in _keys(values) if key not in documented]
    assert not missing, f"values.yaml keys without a `# -- <key> ...` comment: {missing}"
    assert documented <= set(_keys(values)), "a comment names a key that does not exist"


def test_schema_describes_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict, props: dict, path: str) -> None:
        for key, value in node.items():
            assert key in props, f"{path}{key} is missing from values.schema.json"
            sub = props[key]
            if isinstance(value, dict) and sub.get("additionalProperties") is False:
                walk(value, sub["properties"], f"{path}{key}.")

    assert schema["additionalProperties"] is False
    walk(values, schema["properties"], "")
