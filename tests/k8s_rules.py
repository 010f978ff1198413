"""What the service needs of its Kubernetes objects, read from the rendered YAML: each rule
returns the problems it finds (none: the manifests agree with the app and its image)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.api.guards import HEALTH_PATHS
from app.core.metrics import Metrics
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
Doc = dict[str, Any]
Rule = Callable[[list[Doc]], list[str]]


def image_settings(dockerfile: Path = ROOT / "Dockerfile") -> dict[str, str]:
    """The serving image's ENV values, EXPOSE and VOLUME (its last stage)."""
    text = dockerfile.read_text().split("AS serve", 1)[-1]
    found = dict(re.findall(r"\b(FFS_[A-Z_]+)=(\S+)", text))
    found["EXPOSE"] = re.search(r"^EXPOSE (\d+)", text, re.M).group(1)  # type: ignore[union-attr]
    found["VOLUME"] = re.search(r'^VOLUME \["([^"]+)"\]', text, re.M).group(1)  # type: ignore[union-attr]
    return found


def exported_metrics() -> set[str]:
    """Every series name the service exports (counters with and without _total)."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc.get("kind") == kind]


def server_pod(docs: list[Doc]) -> Doc:
    return of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def server(docs: list[Doc]) -> Doc:
    return next(c for c in server_pod(docs)["containers"]  # type: ignore[no-any-return]
                if c["name"] == "server")


def env(container: Doc) -> dict[str, str]:
    return {item["name"]: str(item.get("value", "")) for item in container.get("env", [])}


def setting(docs: list[Doc], name: str) -> str:
    """A server setting as the pod sets it: its env, else the image's, else the default."""
    values = {**image_settings(), **env(server(docs))}
    if name in values:
        return values[name]
    return str(Settings.model_fields[name.removeprefix("FFS_").lower()].default)


def _probes(container: Doc) -> list[Doc]:
    return [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")
            if k in container]


def probe_paths_exist(docs: list[Doc]) -> list[str]:
    return [f"probe path {p['httpGet']['path']} is not one of the app's {HEALTH_PATHS}"
            for p in _probes(server(docs)) if p["httpGet"]["path"] not in HEALTH_PATHS]


def _pre_stop_seconds(container: Doc) -> float:
    hook = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    found = re.search(r"sleep\((\d+(?:\.\d+)?)\)", " ".join(hook.get("exec", {}).get("command", [])))
    return float(found.group(1)) if found else 0.0


def grace_exceeds_drain(docs: list[Doc]) -> list[str]:
    pod = server_pod(docs)
    needed = _pre_stop_seconds(server(docs)) + float(setting(docs, "FFS_DRAIN_DELAY_S")) + \
        float(setting(docs, "FFS_SHUTDOWN_TIMEOUT_S"))
    grace = float(pod.get("terminationGracePeriodSeconds", 30))
    if grace <= needed:
        return [f"terminationGracePeriodSeconds {grace:g} <= preStop + drain_delay_s + "
                f"shutdown_timeout_s = {needed:g}: the kubelet would kill requests still draining"]
    return []


def autoscaler_metrics_exist(docs: list[Doc]) -> list[str]:
    exported = exported_metrics()
    wanted = [m["pods"]["metric"]["name"] for hpa in of_kind(docs, "HorizontalPodAutoscaler")
              for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    for scaled in of_kind(docs, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            wanted += re.findall(r"\b(ffs_[a-z_]+)", trigger["metadata"]["query"])
    problems = [f"the autoscaler asks for {name}, which the service does not export"
                for name in wanted if name not in exported]
    if not wanted:
        problems.append("no autoscaler scales on a metric of the service")
    return problems


def ports_agree(docs: list[Doc]) -> list[str]:
    problems = []
    container = server(docs)
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    port = int(setting(docs, "FFS_PORT"))
    if port not in ports.values():
        problems.append(f"the server listens on {port} (FFS_PORT) but the container declares "
                        f"{sorted(ports.values())}")
    if int(image_settings()["EXPOSE"]) != port and "FFS_PORT" not in env(container):
        problems.append(f"the image exposes {image_settings()['EXPOSE']}, not {port}")
    for probe in _probes(container):
        target = probe["httpGet"]["port"]
        if ports.get(target, target) != port:
            problems.append(f"a probe targets port {target}, the server listens on {port}")
    listening = {port} | ({int(setting(docs, "FFS_GRPC_PORT"))}
                          if "FFS_GRPC_PORT" in env(container) else set())
    if listening - set(ports.values()):
        problems.append(f"the server listens on {sorted(listening)} but the container declares "
                        f"{sorted(ports.values())}")
    for service in of_kind(docs, "Service"):
        for entry in service["spec"]["ports"]:
            target = entry.get("targetPort", entry["port"])
            if ports.get(target, target) not in listening:
                problems.append(f"the Service sends to {target}, the server listens on "
                                f"{sorted(listening)}")
    return problems


def model_path_agrees(docs: list[Doc]) -> list[str]:
    path = setting(docs, "FFS_MODEL_REPOSITORY")
    problems = []
    if path != image_settings()["VOLUME"]:
        problems.append(f"FFS_MODEL_REPOSITORY {path} is not the image's model folder "
                        f"{image_settings()['VOLUME']}")
    pod = server_pod(docs)
    volumes = {v["name"] for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in server(docs).get("volumeMounts", [])}
    if "models" in volumes and mounts.get(path) != "models":
        problems.append(f"the models volume is not mounted at {path} in the server container")
    for init in pod.get("initContainers", []):
        if not any(m["mountPath"] == path for m in init.get("volumeMounts", [])):
            problems.append(f"init container {init['name']} does not write to {path}")
    return problems


def guaranteed_qos(docs: list[Doc]) -> list[str]:
    problems = []
    pod = server_pod(docs)
    for container in pod.get("initContainers", []) + pod["containers"]:
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        if not requests or requests != limits:
            problems.append(f"{container['name']}: requests {requests} != limits {limits} "
                            "(not Guaranteed QoS)")
        if container["name"] == "server" and not str(limits.get("cpu", "")).isdigit():
            problems.append(f"server: cpu {limits.get('cpu')!r} is not whole cores")
    return problems


def non_root_read_only(docs: list[Doc]) -> list[str]:
    pod = server_pod(docs)
    context = {**pod.get("securityContext", {}), **server(docs).get("securityContext", {})}
    problems = []
    if context.get("runAsNonRoot") is not True:
        problems.append("the server may run as root (runAsNonRoot is not true)")
    if context.get("readOnlyRootFilesystem") is not True:
        problems.append("the server's root filesystem is writable")
    return problems


RULES: dict[str, Rule] = {
    "probe paths exist in the app": probe_paths_exist,
    "grace period exceeds the drain": grace_exceeds_drain,
    "the autoscaler's metric is exported": autoscaler_metrics_exist,
    "ports agree with the image": ports_agree,
    "the model path agrees with the image": model_path_agrees,
    "Guaranteed QoS": guaranteed_qos,
    "non-root, read-only root": non_root_read_only,
}
