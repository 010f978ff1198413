"""Cost and energy per 100M requests: measured capacity, scaled by cores to a VM size, times its
price and its estimated power (prices.yaml says where both come from)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

PRICES = Path(__file__).with_name("prices.yaml")
REQUESTS = 100_000_000
JOULES_PER_KWH = 3.6e6
POWER_MODEL = ("estimate: TDP / hardware threads per busy vCPU (codecarbon's TDP method, no RAPL); "
               "CPU only")


@dataclass(frozen=True)
class VmPrice:
    name: str
    vcpus: int
    usd_per_hour: float
    pool: str
    watts_per_vcpu: float | None = None


@dataclass(frozen=True)
class Projection:
    """Capacity measured here and what it projects to on `vm` (an estimate, not a measurement)."""

    vm: str
    vm_vcpus: int
    measured_rps: float
    measured_cores: int
    projected_rps: float
    usd_per_hour: float
    usd_per_100m: float
    price_date: str
    # CPU per request of the whole server at the measured rate, when it was read (/proc):
    # the projection is then vCPUs / (API + workers), counting the API tier, not cores x rate.
    api_ms_per_request: float | None = None
    worker_ms_per_request: float | None = None
    # Energy at that capacity with every vCPU busy (None where prices.yaml gives no power).
    watts: float | None = None
    joules_per_request: float | None = None
    kwh_per_100m: float | None = None
    power_model: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def load_prices(path: Path = PRICES) -> tuple[dict[str, VmPrice], str]:
    """VM prices and the date they are from."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    vms = {name: VmPrice(name, int(v["vcpus"]), float(v["usd_per_hour"]), str(v["pool"]),
                         float(v["watts_per_vcpu"]) if "watts_per_vcpu" in v else None)
           for name, v in raw["vms"].items()}
    return vms, str(raw["date"])


def usd_per_100m(rps: float, usd_per_hour: float) -> float:
    """Hours to serve 100M requests at `rps`, times the hourly price."""
    return usd_per_hour * REQUESTS / (rps * 3600.0)


def kwh_per_100m(joules_per_request: float) -> float:
    """Energy of 100M requests at `joules_per_request`."""
    return joules_per_request * REQUESTS / JOULES_PER_KWH


def project(measured_rps: float, measured_cores: int, vm: str, path: Path = PRICES,
            cpu_ms: tuple[float, float] | None = None) -> Projection:
    """Price a capacity measured on `measured_cores` on the VM `vm`.

    With `cpu_ms` (the server's API and worker CPU per request at that rate, read from /proc) the
    VM's capacity is its vCPUs kept busy by the whole server: vCPUs x 1000 / (API + workers), the
    API tier counted. Without it, the rate is scaled linearly by cores, which assumes the API tier
    grows with them (settings.api_processes). Either way it is a projection, which is why the
    measured figure is kept beside it. Energy is the VM's estimated power (vCPUs x watts per
    busy vCPU) over that capacity: the same premise, so it is an estimate too.
    """
    prices, date = load_prices(path)
    if vm not in prices:
        raise KeyError(f"no price for {vm!r} in {path}; known: {', '.join(sorted(prices))}")
    price = prices[vm]
    if cpu_ms is not None and sum(cpu_ms) > 0:
        projected = price.vcpus * 1000.0 / sum(cpu_ms)
    else:
        projected = measured_rps * price.vcpus / measured_cores
    watts = None if price.watts_per_vcpu is None else price.vcpus * price.watts_per_vcpu
    joules = None if watts is None else watts / projected
    return Projection(vm=vm, vm_vcpus=price.vcpus, measured_rps=measured_rps,
                      measured_cores=measured_cores,
                      projected_rps=projected, usd_per_hour=price.usd_per_hour,
                      usd_per_100m=usd_per_100m(projected, price.usd_per_hour), price_date=date,
                      api_ms_per_request=None if cpu_ms is None else cpu_ms[0],
                      worker_ms_per_request=None if cpu_ms is None else cpu_ms[1],
                      watts=watts, joules_per_request=joules,
                      kwh_per_100m=None if joules is None else kwh_per_100m(joules),
                      power_model=None if watts is None else POWER_MODEL)
