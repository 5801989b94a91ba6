"""deploy/kubernetes/ as far as it can be checked without a cluster or a docker engine: the
image's command and the chart values name this package's definitions module (pyproject's
[tool.dagster] module_name, which loads), the values carry the project's own instance settings
(deploy/postgres/dagster.yaml) and the psycopg2 scheme, and every setting the pods get comes from
the example ConfigMap/Secret under a name the package reads, the secrets from Secrets only.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import dagster as dg
import yaml

from vitals_pipeline.instance import PG_URL_SCHEME, POSTGRES, shipped_settings

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "deploy" / "kubernetes"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
MODULE = PYPROJECT["tool"]["dagster"]["module_name"]
# Instance settings the values must carry exactly as the project ships them.
INSTANCE_SECTIONS = ("concurrency", "run_retries", "run_monitoring", "retention")
SECRETS = {"ACE_API_KEY"}


def values() -> dict:
    return yaml.safe_load((KUBERNETES / "values.yaml").read_text())


def manifests() -> dict[tuple[str, str], dict]:
    docs = yaml.safe_load_all((KUBERNETES / "vitals-env.example.yaml").read_text())
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (KUBERNETES / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def names_the_package_reads() -> set[str]:
    """Every environment variable name the package's code spells out (and the prefixes it reads)."""
    found = set()
    for path in (REPO / "vitals_pipeline").rglob("*.py"):
        found |= set(re.findall(r'"((?:ACE|VITALS|DAGSTER)_[A-Z0-9_]+)"', path.read_text()))
    return found


def test_the_image_and_the_values_serve_this_packages_definitions():
    [deployment] = values()["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", MODULE]

    instructions = dockerfile_instructions()
    assert "ENTRYPOINT" not in {kind for kind, _ in instructions}, (
        "the chart passes the code server's command as arguments: an ENTRYPOINT would be prepended"
    )
    [cmd] = [json.loads(arg) for kind, arg in instructions if kind == "CMD"]
    assert cmd == [
        "dagster",
        "api",
        "grpc",
        "-h",
        "0.0.0.0",
        "-p",
        str(deployment["port"]),
        "-m",
        MODULE,
    ]

    # What the image installs: this project with the extra that brings the run launcher the
    # chart's instance settings name, pinned with the rest of the dagster set.
    [base] = [arg for kind, arg in instructions if kind == "FROM"]
    python = tuple(int(n) for n in re.search(r"python:(\d+)\.(\d+)", base).groups())
    lowest = re.match(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"]).groups()
    assert python >= tuple(int(n) for n in lowest)
    assert any(kind == "RUN" and 'pip install ".[kubernetes]"' in arg for kind, arg in instructions)
    assert PYPROJECT["project"]["optional-dependencies"]["kubernetes"] == ["dagster-k8s==0.29.27"]
    assert "dagster-postgres==0.29.27" in PYPROJECT["project"]["dependencies"]

    # The module the image serves loads and holds the definitions.
    module = __import__(MODULE, fromlist=["defs"])
    assert isinstance(module.defs, dg.Definitions)


def test_the_values_carry_the_projects_instance_settings():
    chart = values()
    shipped = yaml.safe_load(shipped_settings(POSTGRES))
    extra = chart["additionalInstanceConfig"]
    assert {name: extra[name] for name in INSTANCE_SECTIONS} == {
        name: shipped[name] for name in INSTANCE_SECTIONS
    }
    assert set(extra) == set(INSTANCE_SECTIONS), "anything else belongs to the chart's own values"
    # The chart's own renderings of these are off: one of each in the instance settings.
    assert chart["dagsterDaemon"]["runMonitoring"]["enabled"] is False
    assert chart["dagsterDaemon"]["runRetries"]["enabled"] is False
    assert chart["retention"]["enabled"] is False
    assert chart["telemetry"]["enabled"] is shipped["telemetry"]["enabled"] is False

    assert chart["runLauncher"]["type"] == "K8sRunLauncher"
    coordinator = chart["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    assert chart["postgresql"]["postgresqlScheme"] == PG_URL_SCHEME


def test_every_setting_comes_from_the_configmap_or_secret_under_a_name_the_package_reads():
    chart = values()
    docs = manifests()
    [(_, config)] = [(k, d) for k, d in docs.items() if k[0] == "ConfigMap"]
    secrets = {name: doc for (kind, name), doc in docs.items() if kind == "Secret"}
    pg_secret = chart["global"]["postgresqlSecretName"]
    assert "postgresql-password" in secrets[pg_secret]["stringData"]

    refs = {"configmaps": set(), "secrets": set()}
    [deployment] = chart["dagster-user-deployments"]["deployments"]
    launcher = chart["runLauncher"]["config"]["k8sRunLauncher"]
    for holder in (deployment, launcher):
        refs["configmaps"] |= {ref["name"] for ref in holder["envConfigMaps"]}
        refs["secrets"] |= {ref["name"] for ref in holder["envSecrets"]}
        assert "env" not in holder or not holder["env"], (
            "settings come from the ConfigMap/Secret only"
        )
        # Both mount the warehouse volume the ConfigMap's VITALS_DUCKDB_PATH is on.
        [mount] = holder["volumeMounts"]
        assert Path(config["data"]["VITALS_DUCKDB_PATH"]).is_relative_to(mount["mountPath"])
        [volume] = holder["volumes"]
        assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in docs
    assert refs == {
        "configmaps": {config["metadata"]["name"]},
        "secrets": set(secrets) - {pg_secret},
    }

    readable = names_the_package_reads()
    env_secret_keys = {key for name in refs["secrets"] for key in secrets[name]["stringData"]}
    for key in [*config["data"], *env_secret_keys]:
        assert key in readable or key.startswith("VITALS_QUALITY_"), f"{key}: no such setting"
    assert {"ACE_API_URL", "ACE_SITES", "VITALS_DUCKDB_PATH"} <= set(config["data"])
    assert SECRETS <= env_secret_keys and not SECRETS & set(config["data"])
    # Placeholders only: nothing in the repository is a real secret.
    for doc in secrets.values():
        assert all(value.startswith("REPLACE_WITH_") for value in doc["stringData"].values())
    assert not re.search(r"(?i)password|api_key", shlex.join(str(v) for v in _leaves(chart)))


def _leaves(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value)
    else:
        yield node
