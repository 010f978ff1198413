"""deploy/k8s and deploy/kserve, offline: every overlay renders (kubectl kustomize), every object
validates against the Kubernetes schemas (kubernetes-validate ships them), and the rendered YAML
agrees with what the service needs (tests/k8s_rules.py); each rule is also broken on purpose."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.__main__ import _arguments
from app.api.guards import HEALTH_PATHS
from tests.k8s_rules import ROOT, RULES, Doc, server, server_pod

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["base", "overlays/keda", "overlays/gpu", "overlays/baked"]
K8S_VERSION = "1.31.0"  # the schemas objects are validated against (AKS and EKS support it)
# Custom resources: no schema ships for them; the rules read what the service needs of them.
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject", "ServingRuntime", "InferenceService"}


def _render(overlay: str) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlays cannot be rendered here (install "
                    "kubectl, which bundles kustomize)")
    done = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {overlay: _render(overlay) for overlay in OVERLAYS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(
        rendered: dict[str, list[Doc]], overlay: str) -> None:
    checked = 0
    for doc in rendered[overlay]:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("rule", RULES)
def test_the_manifests_agree_with_the_service(rendered: dict[str, list[Doc]], overlay: str,
                                              rule: str) -> None:
    assert RULES[rule](rendered[overlay]) == []


def _set_env(docs: list[Doc], name: str, value: str) -> None:
    container = server(docs)
    container["env"] = [e for e in container["env"] if e["name"] != name] + \
        [{"name": name, "value": value}]


def _metric(docs: list[Doc]) -> None:
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "ffs_queue_length"


def _unmount(docs: list[Doc]) -> None:
    server(docs)["volumeMounts"] = [m for m in server(docs)["volumeMounts"]
                                    if m["name"] != "models"]


BREAKS: dict[str, Callable[[list[Doc]], None]] = {
    "probe paths exist in the app": lambda docs: server(docs)["readinessProbe"]["httpGet"]
    .update(path="/ready"),
    "grace period exceeds the drain": lambda docs: _set_env(docs, "FFS_DRAIN_DELAY_S", "30"),
    "the autoscaler's metric is exported": _metric,
    "ports agree with the image": lambda docs: _set_env(docs, "FFS_PORT", "9000"),
    "the model path agrees with the image": _unmount,
    "Guaranteed QoS": lambda docs: server(docs)["resources"]["requests"].update(cpu="1500m"),
    "non-root, read-only root": lambda docs: server(docs)["securityContext"]
    .update(readOnlyRootFilesystem=False),
}


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_fails_when_its_manifest_is_broken(rendered: dict[str, list[Doc]],
                                                     rule: str) -> None:
    docs = copy.deepcopy(rendered["base"])
    BREAKS[rule](docs)
    assert RULES[rule](docs) != []


def test_the_keda_overlay_replaces_the_hpa_with_a_scaled_object(
        rendered: dict[str, list[Doc]]) -> None:
    kinds = [doc["kind"] for doc in rendered["overlays/keda"]]
    assert "ScaledObject" in kinds and "HorizontalPodAutoscaler" not in kinds


def test_the_gpu_overlay_asks_for_a_gpu_and_tolerates_gpu_nodes(
        rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["overlays/gpu"]
    assert server(docs)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server_pod(docs)["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {"name": "FFS_DEFAULT_POOL", "value": "gpu"} in server(docs)["env"]


def _kserve(name: str) -> Any:
    return yaml.safe_load((ROOT / "deploy" / "kserve" / name).read_text())


def test_the_kserve_runtime_passes_arguments_the_server_takes() -> None:
    runtime = _kserve("servingruntime.yaml")
    container = runtime["spec"]["containers"][0]
    args = [a.replace("{{.Name}}", "sst2") for a in container["args"]]
    parsed = _arguments(args)
    assert parsed == {"model_name": "sst2", "model_repository": "/mnt/models", "port": 8080,
                      "grpc_port": 8081}
    assert container["ports"][0]["containerPort"] == parsed["port"]
    assert {"name": "h2c", "containerPort": parsed["grpc_port"]}.items() <= \
        container["ports"][1].items()
    assert container["readinessProbe"]["httpGet"]["path"] in HEALTH_PATHS
    assert container["readinessProbe"]["httpGet"]["port"] == parsed["port"]
    assert runtime["spec"]["protocolVersions"] == ["v2"]


def test_the_inference_service_uses_the_runtime_and_its_model_format() -> None:
    runtime, service = _kserve("servingruntime.yaml"), _kserve("inferenceservice.yaml")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [f["name"] for f in
                                            runtime["spec"]["supportedModelFormats"]]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


def test_the_base_kustomization_lists_every_file_of_its_folder() -> None:
    listed = set(yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present



def test_the_health_paths_the_rules_accept_are_routes_of_the_app(fast_repo: Path) -> None:
    import asyncio

    from tests.fakes import app_client

    async def statuses() -> list[int]:
        async with app_client(fast_repo) as (client, _, _):
            return [(await client.get(path)).status_code for path in HEALTH_PATHS]

    assert asyncio.run(statuses()) == [200] * len(HEALTH_PATHS)
