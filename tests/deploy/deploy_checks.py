"""Checks of the deployment files (deploy/, docker-compose.yml) against the server they deploy.

Each check_* function takes parsed files and the facts read from the server's own sources
(ServerFacts) and returns a list of problems (strings); an empty list means the files pass.
tests/deploy/check_deploy.py runs them on the real files and on the broken fixtures of
tests/deploy/fixtures, which must fail with the problems they were built to have.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, Iterable

import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE_ROOT = "/opt/stavid"  # where deploy/docker/stage-runtime.sh lays the tree inside the image

# NVIDIA DCGM exporter metrics the dashboard may use (default-counters.csv of dcgm-exporter), with the
# unit DCGM reports them in, as a Grafana unit id.
DCGM_UNITS = {
    "DCGM_FI_DEV_GPU_UTIL": "percent",           # 0-100
    "DCGM_FI_DEV_MEM_COPY_UTIL": "percent",
    "DCGM_FI_DEV_ENC_UTIL": "percent",
    "DCGM_FI_DEV_DEC_UTIL": "percent",
    "DCGM_FI_DEV_FB_USED": "mbytes",             # MiB
    "DCGM_FI_DEV_FB_FREE": "mbytes",
    "DCGM_FI_DEV_POWER_USAGE": "watt",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "mjoule",
    "DCGM_FI_DEV_GPU_TEMP": "celsius",
    "DCGM_FI_DEV_MEMORY_TEMP": "celsius",
    "DCGM_FI_DEV_SM_CLOCK": "rotmhz",            # MHz
    "DCGM_FI_DEV_MEM_CLOCK": "rotmhz",
    "DCGM_FI_DEV_XID_ERRORS": "none",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "none",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "percentunit",  # 0-1
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "percentunit",
    "DCGM_FI_PROF_DRAM_ACTIVE": "percentunit",
    "DCGM_FI_PROF_PCIE_TX_BYTES": "Bps",
    "DCGM_FI_PROF_PCIE_RX_BYTES": "Bps",
}
# A conversion in the expression changes the unit the panel must show.
UNIT_CONVERSIONS = [
    (re.compile(r"\*\s*1024\s*\*\s*1024\b|\*\s*1048576\b"), {"mbytes": "bytes"}),
    (re.compile(r"\*\s*1000000\b|\*\s*1e6\b"), {"rotmhz": "hertz"}),
    (re.compile(r"/\s*100\b"), {"percent": "percentunit"}),
]
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                   "unless", "offset", "inf", "nan"}
# Grafana variables and their stand-ins when an expression is checked outside Grafana.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "instance": ".*", "pod": ".*"}


@dataclasses.dataclass
class ServerFacts:
    health_names: set[str]          # grpc.health.v1 service names the server sets
    listen_port: int                # --listen default port
    metrics_port: int               # --metrics-listen default port
    drain_budget_s: float           # --drain-budget default
    stream_grace_s: float           # time the streams get after the drain (server.h shutdown_grace)
    max_queue: int                  # --max-queue default
    metric_names: set[str]          # every metric family name in server/metrics.cc
    gpu_only_metrics: set[str]      # families present only with a GPU (absent from a CPU scrape)
    image_uid: int                  # the numeric USER of the runtime image


def read_server_facts(root: Path = ROOT) -> ServerFacts:
    server_h = (root / "server/server.h").read_text()
    server_cc = (root / "server/server.cc").read_text()
    metrics_cc = (root / "server/metrics.cc").read_text()
    health = set(re.findall(r'kHealth\w+\s*=\s*"([^"]+)"', server_h)) | {""}
    listen = int(re.search(r"--listen=ADDR\s+gRPC address \(default [\d.]+:(\d+)", server_cc).group(1))
    metrics = int(re.search(r"--metrics-listen=ADDR\s+.*\(default [\d.]+:(\d+)", server_cc).group(1))
    drain = float(re.search(r"--drain-budget=S\s+.*\(default (\d+)\)", server_cc).group(1))
    max_queue = int(re.search(r"--max-queue=N\s+.*\(default (\d+)\)", server_cc).group(1))
    grace_ms = int(re.search(r"shutdown_grace\{(\d+)\}", server_h).group(1))
    names = set(re.findall(r'"((?:stavid|process)_[a-z0-9_]+)"', metrics_cc))
    gpu_only = {n for n in names if n.startswith("stavid_gpu_")}
    dockerfile = (root / "deploy/docker/Dockerfile").read_text()
    return ServerFacts(health, listen, metrics, drain, grace_ms / 1000.0, max_queue, names, gpu_only,
                       dockerfile_user_uid(dockerfile))


# ---- helpers ----

def flag_values(args: Iterable[str]) -> dict[str, str]:
    """--name=value arguments as {"--name": "value"} (a bare --flag maps to "")."""
    out = {}
    for a in args:
        if a.startswith("--"):
            k, _, v = a.partition("=")
            out[k] = v
    return out


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def duration_seconds(text: str) -> float:
    """Compose / Prometheus durations: 45s, 1m30s, 2h, 500ms."""
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", str(text))
    if not parts or "".join(a + b for a, b in parts) != str(text):
        raise ValueError(f"not a duration: {text!r}")
    for value, unit in parts:
        total += float(value) * units[unit]
    return total


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = m.group(0)
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # the exponent or unit of a number: 1e6, 5m
        if s[m.end():].lstrip().startswith("("):
            continue  # a function
        if token.lower() in PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def substitute_grafana_variables(expr: str) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in GRAFANA_VARIABLES:
            raise KeyError(name)
        return GRAFANA_VARIABLES[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def promtool_check_exprs(exprs: dict[str, str], workdir: Path) -> list[str]:
    """Runs `promtool check rules` on a rules file that records each expression; returns problems."""
    rules = {"groups": [{"name": "check", "rules": [{"record": name, "expr": e} for name, e in exprs.items()]}]}
    path = workdir / "exprs.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False, width=1000))
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        return [f"promtool rejects an expression: {(r.stdout + r.stderr).strip()}"]
    return []


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---- Dockerfile ----

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_user_uid(text: str) -> int:
    users = [rest for ins, rest in dockerfile_instructions(text) if ins == "USER"]
    if not users:
        return 0
    user = users[-1].split(":")[0]
    return int(user) if user.isdigit() else -1


def dockerfile_exec_form(rest: str) -> list[str] | None:
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(x, str) for x in value) else None


def check_dockerfile(text: str, facts: ServerFacts) -> list[str]:
    problems = []
    ins = dockerfile_instructions(text)
    stages = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    if len(stages) < 2:
        return [f"Dockerfile: {len(stages)} stage(s); a build stage and a runtime stage are required"]
    first_from = ins[stages[0]][1]
    last_from = ins[stages[-1]][1]
    if "-devel-" not in first_from or " AS " not in first_from.upper():
        problems.append(f"Dockerfile: the first stage must be a named CUDA devel image, not '{first_from}'")
    if "-runtime-" not in last_from:
        problems.append(f"Dockerfile: the final stage must be a CUDA runtime image, not '{last_from}'")
    final = ins[stages[-1]:]
    copies = [rest for w, rest in final if w == "COPY"]
    if not copies or any("--from=" not in c for c in copies):
        problems.append("Dockerfile: the final stage may only COPY --from the build stage (no sources)")
    if any(w == "ADD" for w, _ in ins):
        problems.append("Dockerfile: ADD fetches and unpacks implicitly; use COPY")
    uid = dockerfile_user_uid(text)
    if uid <= 0:
        problems.append("Dockerfile: the final stage must end with a numeric non-root USER (runAsNonRoot checks the uid)")
    health = [rest for w, rest in final if w == "HEALTHCHECK"]
    if not health:
        problems.append("Dockerfile: no HEALTHCHECK")
    else:
        cmd_part = health[-1].split("CMD", 1)
        argv = dockerfile_exec_form(cmd_part[1].strip()) if len(cmd_part) == 2 else None
        if not argv or argv[0] != "stavid" or "health" not in argv:
            problems.append("Dockerfile: HEALTHCHECK must run `stavid health` (gRPC health service), exec form")
        else:
            tail = argv[argv.index("health") + 1:]
            service = tail[tail.index("--service") + 1] if "--service" in tail else ""
            if service not in facts.health_names:
                problems.append(f"Dockerfile: HEALTHCHECK service '{service}' is not a health name of the server {sorted(facts.health_names)}")
            server = argv[argv.index("--server") + 1] if "--server" in argv else "localhost:50051"
            if port_of(server) != facts.listen_port:
                problems.append(f"Dockerfile: HEALTHCHECK asks port {port_of(server)}, the server listens on {facts.listen_port}")
    entry = [rest for w, rest in final if w == "ENTRYPOINT"]
    if not entry or dockerfile_exec_form(entry[-1]) != ["stavid_server"]:
        problems.append('Dockerfile: ENTRYPOINT must be ["stavid_server"] (exec form: SIGTERM reaches the server)')
    exposed = {int(p.split("/")[0]) for w, rest in final if w == "EXPOSE" for p in rest.split()}
    for port in (facts.listen_port, facts.metrics_port):
        if port not in exposed:
            problems.append(f"Dockerfile: port {port} is not EXPOSEd")
    return problems


# ---- docker-compose.yml ----

def check_compose(compose: dict, prometheus_config: dict, grafana_provider: dict, facts: ServerFacts) -> list[str]:
    problems = []
    services = compose.get("services", {})
    stavid_job = next((j for j in prometheus_config.get("scrape_configs", []) if j.get("job_name") == "stavid"), None)
    if stavid_job is None:
        return ["prometheus.yml: no scrape job 'stavid'"]
    targets = [t for sc in stavid_job.get("static_configs", []) for t in sc.get("targets", [])]
    if len(targets) != 1:
        return [f"prometheus.yml: job stavid must have one target, has {targets}"]
    target_host, target_port = targets[0].rsplit(":", 1)
    for name, profile in (("stavid-cpu", "cpu"), ("stavid-gpu", "gpu")):
        svc = services.get(name)
        if svc is None:
            problems.append(f"compose: no service {name}")
            continue
        if svc.get("profiles") != [profile]:
            problems.append(f"compose: {name} must be in profile '{profile}' only, has {svc.get('profiles')}")
        aliases = (svc.get("networks") or {}).get("default", {}) or {}
        if target_host not in (aliases.get("aliases") or []):
            problems.append(f"compose: {name} lacks the network alias '{target_host}' that Prometheus scrapes")
        flags = flag_values(svc.get("command") or [])
        metrics_port = port_of(flags.get("--metrics-listen", f"0.0.0.0:{facts.metrics_port}"))
        listen_port = port_of(flags.get("--listen", f"0.0.0.0:{facts.listen_port}"))
        if metrics_port != int(target_port):
            problems.append(f"compose: {name} serves /metrics on {metrics_port}, Prometheus scrapes {target_port}")
        published = {str(p).split(":")[-1] for p in svc.get("ports", [])}
        for port in (listen_port, metrics_port):
            if str(port) not in published:
                problems.append(f"compose: {name} does not publish port {port}")
        drain = float(flags.get("--drain-budget", facts.drain_budget_s))
        grace = duration_seconds(svc.get("stop_grace_period", "10s"))
        if grace <= drain + facts.stream_grace_s:
            problems.append(f"compose: {name} stop_grace_period {grace:g}s does not cover the drain ({drain:g}s + {facts.stream_grace_s:g}s)")
        if svc.get("read_only") is not True or "/tmp" not in (svc.get("tmpfs") or []):
            problems.append(f"compose: {name} must run read_only with a tmpfs /tmp")
        devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
        if profile == "gpu":
            if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices):
                problems.append(f"compose: {name} must reserve GPUs (deploy.resources.reservations.devices, driver nvidia, capabilities [gpu])")
        else:
            if devices:
                problems.append(f"compose: {name} (CPU) must not reserve devices")
            if flags.get("--config") != f"{IMAGE_ROOT}/deploy/models/demo.json":
                problems.append(f"compose: {name} must serve the demo config baked in the image, not {flags.get('--config')}")
            if (svc.get("environment") or {}).get("NVIDIA_VISIBLE_DEVICES") != "void":
                problems.append(f"compose: {name} must hide GPUs (NVIDIA_VISIBLE_DEVICES: void)")
    dcgm = services.get("dcgm-exporter")
    dcgm_job = next((j for j in prometheus_config.get("scrape_configs", []) if j.get("job_name") == "dcgm"), None)
    if dcgm is None or dcgm.get("profiles") != ["gpu"]:
        problems.append("compose: dcgm-exporter must exist, in the gpu profile only")
    elif dcgm_job is None or [t for sc in dcgm_job.get("static_configs", []) for t in sc.get("targets", [])] != ["dcgm-exporter:9400"]:
        problems.append("prometheus.yml: job dcgm must scrape dcgm-exporter:9400")
    prom = services.get("prometheus", {})
    prom_flags = flag_values(prom.get("command") or [])
    config_dir = os.path.dirname(prom_flags.get("--config.file", ""))
    if not any(str(v).split(":")[1:2] == [config_dir] and str(v).startswith("./deploy/prometheus:") for v in prom.get("volumes", [])):
        problems.append(f"compose: prometheus must mount ./deploy/prometheus at {config_dir or '?'} (its --config.file)")
    grafana = services.get("grafana", {})
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana.get("volumes", []) if str(v).startswith("./")}
    if mounts.get("/etc/grafana/provisioning") != "./deploy/grafana/provisioning":
        problems.append("compose: grafana must mount ./deploy/grafana/provisioning at /etc/grafana/provisioning")
    provider_paths = [p.get("options", {}).get("path") for p in grafana_provider.get("providers", [])]
    if not provider_paths or mounts.get(provider_paths[0]) != "./deploy/grafana/dashboards":
        problems.append(f"compose: grafana must mount ./deploy/grafana/dashboards at the provider path {provider_paths}")
    return problems


# ---- Grafana ----

def dashboard_exprs(dashboard: dict) -> list[tuple[dict, dict]]:
    """(panel, target) for every query of every panel, rows' nested panels included."""
    out = []
    def walk(panels):
        for p in panels:
            if p.get("type") == "row":
                walk(p.get("panels", []))
            for t in p.get("targets", []) or []:
                out.append((p, t))
    walk(dashboard.get("panels", []))
    return out


def check_dashboard(dashboard: dict, known_metrics: set[str], workdir: Path) -> list[str]:
    problems = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("dashboard: needs a templated datasource variable 'datasource' of type prometheus")
    inst = variables.get("instance")
    if not inst or inst.get("type") != "query" or not inst.get("includeAll"):
        problems.append("dashboard: needs a templated 'instance' query variable (with All)")
    for name, v in variables.items():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.match(r"label_values\((\w+),\s*(\w+)\)", q or "")
            if not m:
                problems.append(f"dashboard: variable {name} query '{q}' is not label_values(metric, label)")
            elif m.group(1) not in known_metrics:
                problems.append(f"dashboard: variable {name} reads {m.group(1)}, which nothing exports")
    exprs = {}
    for panel, target in dashboard_exprs(dashboard):
        title = panel.get("title", "?")
        for obj, what in ((panel, "panel"), (target, "query")):
            uid = (obj.get("datasource") or {}).get("uid")
            if uid != "${datasource}":
                problems.append(f"dashboard: {what} of '{title}' uses datasource {uid!r}, not the templated ${{datasource}}")
        expr = target.get("expr", "")
        if not expr:
            problems.append(f"dashboard: '{title}' has a query without expr")
            continue
        if "$instance" not in expr and "$pod" not in expr:
            problems.append(f"dashboard: '{title}' query ignores the instance/pod variables: {expr}")
        try:
            concrete = substitute_grafana_variables(expr)
        except KeyError as e:
            problems.append(f"dashboard: '{title}' uses an unknown variable ${e.args[0]}")
            continue
        exprs[f"dashboard:panel_{panel.get('id')}_{target.get('refId')}"] = concrete
        names = promql_metric_names(concrete)
        for n in sorted(names - known_metrics):
            problems.append(f"dashboard: '{title}' queries {n}, which neither stavid_server nor the DCGM exporter exports")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        for n in sorted(names & DCGM_UNITS.keys()):
            expected = DCGM_UNITS[n]
            for pattern, conversion in UNIT_CONVERSIONS:
                if pattern.search(concrete) and expected in conversion:
                    expected = conversion[expected]
            if unit != expected:
                problems.append(f"dashboard: '{title}' shows {n} as '{unit}'; DCGM reports it as {DCGM_UNITS[n]}: the unit must be '{expected}'")
    if exprs:
        problems += promtool_check_exprs(exprs, workdir)
    return problems


def known_dashboard_metrics(server_metrics: set[str]) -> set[str]:
    """Server families (with the _bucket/_sum/_count series of histograms), DCGM metrics, `up`."""
    out = set(server_metrics) | set(DCGM_UNITS) | {"up"}
    for n in server_metrics:
        if n.endswith("_seconds") or n.endswith("_bytes"):
            out |= {n + "_bucket", n + "_sum", n + "_count"}
    return out


# ---- Kubernetes ----

def render_kustomize(path: Path) -> list[dict]:
    r = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {r.stderr.strip()}")
    return [o for o in yaml.safe_load_all(r.stdout) if o]


def validate_schemas(objects: list[dict]) -> list[str]:
    """kubernetes-models / @kubernetes-models/prometheus-operator schema validation (Node.js)."""
    here = Path(__file__).resolve().parent
    if not (here / "node_modules/kubernetes-models").is_dir():
        return ["tests/deploy/node_modules is missing: run scripts/install-deps.sh (npm ci)"]
    r = subprocess.run(["node", str(here / "validate_k8s.mjs")], input=json.dumps(objects),
                       capture_output=True, text=True, cwd=here)
    errors = [line for line in r.stdout.splitlines() if line.startswith("error ")]
    if r.returncode != 0 and not errors:
        errors = [f"validate_k8s.mjs failed: {r.stderr.strip()}"]
    return errors


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def check_k8s(objects: list[dict], facts: ServerFacts, alerts: dict, adapter_values: dict,
              gpu: bool, namespace: str = "stavid") -> list[str]:
    problems = []
    deployments = find(objects, "Deployment")
    if len(deployments) != 1:
        return [f"k8s: expected one Deployment, found {len(deployments)}"]
    dep = deployments[0]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    spec = pod["spec"]
    if not labels_match(dep["spec"]["selector"].get("matchLabels", {}), pod_labels):
        problems.append("k8s: the Deployment's selector does not match its pod labels")
    containers = [c for c in spec["containers"] if c["name"] == "stavid"]
    if not containers:
        return problems + ["k8s: no container named stavid"]
    c = containers[0]
    flags = flag_values(c.get("args", []))
    grpc_port = port_of(flags.get("--listen", f"0.0.0.0:{facts.listen_port}"))
    metrics_port = port_of(flags.get("--metrics-listen", f"0.0.0.0:{facts.metrics_port}"))
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    if ports.get("grpc") != grpc_port:
        problems.append(f"k8s: container port 'grpc' is {ports.get('grpc')}, the server listens on {grpc_port}")
    if ports.get("metrics") != metrics_port:
        problems.append(f"k8s: container port 'metrics' is {ports.get('metrics')}, /metrics is on {metrics_port}")

    # Probes: native gRPC on the health service names.
    want = {"startupProbe": "readiness", "readinessProbe": "readiness", "livenessProbe": "liveness"}
    for probe, service in want.items():
        p = c.get(probe)
        if not p or "grpc" not in p:
            problems.append(f"k8s: {probe} must be a native gRPC probe")
            continue
        got = p["grpc"].get("service", "")
        if got not in facts.health_names:
            problems.append(f"k8s: {probe} asks health service '{got}', which the server does not set {sorted(facts.health_names)}")
        elif got != service:
            problems.append(f"k8s: {probe} must ask '{service}', asks '{got}'")
        if p["grpc"].get("port") != grpc_port:
            problems.append(f"k8s: {probe} probes port {p['grpc'].get('port')}, the server listens on {grpc_port}")
    startup = c.get("startupProbe") or {}
    window = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if window < 60:
        problems.append(f"k8s: the startup probe allows {window}s for loading the weights; give it at least 60s")

    # Termination: preStop sleep + drain + stream grace within the grace period.
    pre = ((c.get("lifecycle") or {}).get("preStop") or {})
    pre_sleep = None
    if "sleep" in pre:
        pre_sleep = float(pre["sleep"]["seconds"])
    elif "exec" in pre and pre["exec"].get("command", [None])[0] == "sleep":
        pre_sleep = float(pre["exec"]["command"][1])
    if pre_sleep is None:
        problems.append("k8s: the container needs a preStop sleep (endpoint removal must propagate before SIGTERM)")
        pre_sleep = 0.0
    drain = float(flags.get("--drain-budget", facts.drain_budget_s))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= pre_sleep + drain + facts.stream_grace_s:
        problems.append(f"k8s: terminationGracePeriodSeconds {grace} does not cover preStop {pre_sleep:g}s + drain {drain:g}s + stream grace {facts.stream_grace_s:g}s")

    # Security.
    psc = spec.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problems.append("k8s: the pod must set runAsNonRoot: true")
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    if uid not in (None, facts.image_uid) or uid == 0:
        problems.append(f"k8s: runAsUser {uid} is not the image's user {facts.image_uid}")
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.append("k8s: the container must set readOnlyRootFilesystem: true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problems.append("k8s: the container must set allowPrivilegeEscalation: false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        problems.append("k8s: the container must drop ALL capabilities")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    tmp = mounts.get("/tmp")
    if not tmp or "emptyDir" not in volumes.get(tmp["name"], {}):
        problems.append("k8s: /tmp must be an emptyDir (the root filesystem is read-only)")

    # Resources.
    res = c.get("resources") or {}
    for key in ("cpu", "memory"):
        if key not in (res.get("requests") or {}):
            problems.append(f"k8s: the container must request {key}")
    if "memory" not in (res.get("limits") or {}):
        problems.append("k8s: the container must limit memory")
    gpus_limit = (res.get("limits") or {}).get("nvidia.com/gpu")
    if gpu:
        if gpus_limit is None or int(gpus_limit) < 1:
            problems.append("k8s (gpu): the container must limit nvidia.com/gpu to at least 1")
        gpus_request = (res.get("requests") or {}).get("nvidia.com/gpu")
        if gpus_request is not None and gpus_request != gpus_limit:
            problems.append("k8s (gpu): nvidia.com/gpu requests must equal limits")
    elif gpus_limit is not None:
        problems.append("k8s (cpu): the container must not ask for nvidia.com/gpu")

    # The serving config: a ConfigMap mounted where --config points.
    config_path = flags.get("--config", "")
    config_dir, config_key = os.path.dirname(config_path), os.path.basename(config_path)
    serving = None
    m = mounts.get(config_dir)
    cm_name = (volumes.get(m["name"], {}).get("configMap") or {}).get("name") if m else None
    cms = find(objects, "ConfigMap", cm_name) if cm_name else []
    if not cms or config_key not in cms[0].get("data", {}):
        problems.append(f"k8s: --config={config_path} is not a key of a ConfigMap mounted at {config_dir}")
    else:
        try:
            serving = json.loads(cms[0]["data"][config_key])
        except ValueError as e:
            problems.append(f"k8s: the serving config is not JSON: {e}")
    if serving is not None:
        problems += [f"k8s: serving config: {p}" for p in check_serving_config(serving)]
        paths = serving_config_paths(serving)
        if gpu:
            models = mounts.get("/models")
            vol = volumes.get(models["name"], {}) if models else {}
            pvc = vol.get("persistentVolumeClaim")
            if not models or not pvc:
                problems.append("k8s (gpu): the weights must come from a PersistentVolumeClaim mounted at /models")
            else:
                if not (pvc.get("readOnly") is True and models.get("readOnly") is True):
                    problems.append("k8s (gpu): the weights volume and its mount must be read-only")
                claims = find(objects, "PersistentVolumeClaim", pvc["claimName"])
                if not claims or claims[0]["spec"].get("accessModes") != ["ReadOnlyMany"]:
                    problems.append(f"k8s (gpu): PersistentVolumeClaim {pvc['claimName']} must exist with accessModes [ReadOnlyMany]")
            outside = [p for p in paths if not p.startswith("/models/")]
            if outside:
                problems.append(f"k8s (gpu): serving config paths outside the weights volume: {outside}")
        else:
            outside = [p for p in paths if not p.startswith(IMAGE_ROOT + "/")]
            if outside:
                problems.append(f"k8s (cpu): serving config paths outside the image's {IMAGE_ROOT}: {outside}")

    # Services.
    services = {s["metadata"]["name"]: s for s in find(objects, "Service")}
    main = services.get(dep["metadata"]["name"])
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    if not main or main["spec"].get("clusterIP") == "None":
        problems.append("k8s: a ClusterIP Service named like the Deployment is required")
    if len(headless) != 1:
        problems.append(f"k8s: one headless Service (clusterIP: None) is required, found {len(headless)}")
    for s in services.values():
        if not labels_match(s["spec"].get("selector", {}), pod_labels) or not s["spec"].get("selector"):
            problems.append(f"k8s: Service {s['metadata']['name']} does not select the pods")
        for p in s["spec"].get("ports", []):
            if not p.get("name"):
                problems.append(f"k8s: Service {s['metadata']['name']} has an unnamed port")
            target = p.get("targetPort", p.get("port"))
            if isinstance(target, str) and target not in ports:
                problems.append(f"k8s: Service {s['metadata']['name']} port {p.get('name')} targets '{target}', not a container port")
    if main:
        names = {p.get("name"): p for p in main["spec"].get("ports", [])}
        if "grpc" not in names or "metrics" not in names:
            problems.append("k8s: the Service must name its ports grpc and metrics")
        elif names["metrics"].get("targetPort") not in ("metrics", metrics_port):
            problems.append("k8s: the Service's metrics port must target the container's metrics port")
    if headless and "grpc" not in {p.get("name") for p in headless[0]["spec"].get("ports", [])}:
        problems.append("k8s: the headless Service must carry the grpc port")

    # ServiceMonitor -> exactly the main Service's metrics port; its job label (the Service name) is
    # the job the alert rules select.
    monitors = find(objects, "ServiceMonitor")
    if len(monitors) != 1:
        problems.append(f"k8s: expected one ServiceMonitor, found {len(monitors)}")
    else:
        sm = monitors[0]["spec"]
        selected = [s for s in services.values() if labels_match(sm["selector"].get("matchLabels", {}), s["metadata"].get("labels", {}))]
        if [s["metadata"]["name"] for s in selected] != ([main["metadata"]["name"]] if main else []):
            problems.append(f"k8s: the ServiceMonitor must select only the main Service, selects {[s['metadata']['name'] for s in selected]}")
        elif main:
            port_names = {p.get("name") for p in main["spec"].get("ports", [])}
            for ep in sm.get("endpoints", []):
                if ep.get("port") not in port_names or ep.get("port") != "metrics":
                    problems.append(f"k8s: the ServiceMonitor scrapes port {ep.get('port')!r}, not the Service's metrics port")
                if ep.get("path", "/metrics") != "/metrics":
                    problems.append(f"k8s: the ServiceMonitor scrapes {ep.get('path')}, the server serves /metrics")
            jobs = set(re.findall(r'job="([^"]+)"', json.dumps(alerts)))
            if jobs and jobs != {main["metadata"]["name"]}:
                problems.append(f"k8s: alert rules select job {sorted(jobs)}, the ServiceMonitor's job is {main['metadata']['name']}")

    # PodDisruptionBudget.
    pdbs = find(objects, "PodDisruptionBudget")
    if len(pdbs) != 1 or not labels_match(pdbs[0]["spec"]["selector"].get("matchLabels", {}), pod_labels):
        problems.append("k8s: one PodDisruptionBudget selecting the pods is required")
    elif "maxUnavailable" not in pdbs[0]["spec"] and pdbs[0]["spec"].get("minAvailable", 0) >= dep["spec"].get("replicas", 1):
        problems.append("k8s: the PodDisruptionBudget's minAvailable blocks every eviction at the Deployment's replicas")

    # HPA on the queue-depth metric that prometheus-adapter serves.
    hpas = find(objects, "HorizontalPodAutoscaler")
    adapter_names = {r.get("name", {}).get("as") for r in (adapter_values.get("rules") or {}).get("custom", [])}
    if len(hpas) != 1:
        problems.append(f"k8s: expected one HorizontalPodAutoscaler, found {len(hpas)}")
    else:
        h = hpas[0]["spec"]
        ref = h.get("scaleTargetRef", {})
        if ref.get("kind") != "Deployment" or ref.get("name") != dep["metadata"]["name"]:
            problems.append(f"k8s: the HPA scales {ref}, not the Deployment")
        if not (1 <= h.get("minReplicas", 1) <= h.get("maxReplicas", 0)):
            problems.append("k8s: the HPA needs 1 <= minReplicas <= maxReplicas")
        metrics = [m["pods"]["metric"]["name"] for m in h.get("metrics", []) if m.get("type") == "Pods"]
        if not metrics or any(n not in adapter_names for n in metrics):
            problems.append(f"k8s: the HPA's pods metrics {metrics} are not served by the prometheus-adapter rules {sorted(n for n in adapter_names if n)}")

    # PrometheusRule == deploy/prometheus/alerts.yml.
    rules = find(objects, "PrometheusRule")
    if len(rules) != 1 or rules[0]["spec"] != alerts:
        problems.append("k8s: the PrometheusRule must carry exactly the groups of deploy/prometheus/alerts.yml")

    # Namespaced objects live in one namespace.
    for o in objects:
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != namespace:
            problems.append(f"k8s: {o['kind']}/{o['metadata']['name']} is not in namespace {namespace}")
    return problems


# ---- serving configs (docs/serving-config.md) ----

MODEL_KEYS = {"name", "description", "dit", "vae", "text_encoder", "embeddings", "tile", "max_frames", "max_pixels",
              "vae_memory_budget_mib", "strategies", "defaults"}
TEXT_ENCODER_KEYS = {"llama", "clip", "template", "crop_start", "max_length", "skip_layers", "clip_length", "cache_capacity"}
DEFAULT_KEYS = {"frames", "height", "width", "steps", "guidance", "flow_shift", "fps", "sta"}


def check_serving_config(config: dict) -> list[str]:
    """Key-level checks of docs/serving-config.md (the server itself checks the rest at load)."""
    problems = []
    if set(config) != {"models"} or not isinstance(config["models"], list) or not config["models"]:
        return ["the top level must be {\"models\": [...]} with at least one model"]
    names = set()
    for i, m in enumerate(config["models"]):
        where = f"models[{i}]"
        for k in sorted(set(m) - MODEL_KEYS):
            problems.append(f"{where}: unknown key {k}")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", str(m.get("name", ""))):
            problems.append(f"{where}: name {m.get('name')!r} is not 1..64 of [A-Za-z0-9._-]")
        if m.get("name") in names:
            problems.append(f"{where}: duplicate name {m.get('name')}")
        names.add(m.get("name"))
        for part in ("dit", "vae"):
            if not isinstance(m.get(part), dict) or "dir" not in m[part] or set(m[part]) - {"dir", "weights"}:
                problems.append(f"{where}.{part}: needs dir (and optionally weights) only")
        if ("text_encoder" in m) == ("embeddings" in m):
            problems.append(f"{where}: exactly one of text_encoder and embeddings")
        te = m.get("text_encoder") or {}
        for k in sorted(set(te) - TEXT_ENCODER_KEYS):
            problems.append(f"{where}.text_encoder: unknown key {k}")
        for enc in ("llama", "clip"):
            if te and (not isinstance(te.get(enc), dict) or set(te[enc]) != {"dir", "tokenizer"}):
                problems.append(f"{where}.text_encoder.{enc}: needs dir and tokenizer")
        for k in sorted(set(m.get("defaults") or {}) - DEFAULT_KEYS):
            problems.append(f"{where}.defaults: unknown key {k}")
        d = m.get("defaults") or {}
        for k in ("height", "width"):
            if k in d and d[k] % 16:
                problems.append(f"{where}.defaults.{k}: {d[k]} is not a multiple of 16")
        if "frames" in d and d["frames"] and (d["frames"] - 1) % 4:
            problems.append(f"{where}.defaults.frames: {d['frames']} is not 4k+1")
        if d.get("height") and d.get("width") and d["height"] * d["width"] > m.get("max_pixels", 921600):
            problems.append(f"{where}.defaults: {d['height']}x{d['width']} exceeds max_pixels")
        if d.get("frames") and d["frames"] > m.get("max_frames", 129):
            problems.append(f"{where}.defaults.frames exceeds max_frames")
    return problems


def serving_config_paths(config: dict) -> list[str]:
    paths = []
    for m in config.get("models", []):
        for part in ("dit", "vae"):
            paths += [v for k, v in (m.get(part) or {}).items()]
        te = m.get("text_encoder") or {}
        for enc in ("llama", "clip"):
            paths += list((te.get(enc) or {}).values())
        if "embeddings" in m:
            paths.append(m["embeddings"])
        paths += list((m.get("strategies") or {}).values())
    return paths


def resolve_serving_config(config: dict, config_dir: str) -> dict:
    """The config with every path made absolute against config_dir (as the server resolves them)."""
    def fix(p: str) -> str:
        return os.path.normpath(p if os.path.isabs(p) else os.path.join(config_dir, p))
    out = json.loads(json.dumps(config))
    for m in out.get("models", []):
        for part in ("dit", "vae"):
            for k in list((m.get(part) or {})):
                m[part][k] = fix(m[part][k])
        te = m.get("text_encoder") or {}
        for enc in ("llama", "clip"):
            for k in list(te.get(enc) or {}):
                te[enc][k] = fix(te[enc][k])
        if "embeddings" in m:
            m["embeddings"] = fix(m["embeddings"])
        for k in list(m.get("strategies") or {}):
            m["strategies"][k] = fix(m["strategies"][k])
    return out


def map_image_paths(value: Any, image_root: str, local_root: str) -> Any:
    """Strings under the image's /opt/stavid rewritten under local_root (to run the same config here)."""
    if isinstance(value, str):  # a path, or a --flag=path
        return re.sub(r"(^|=)" + re.escape(image_root) + r"(?=/|$)", lambda m: m.group(1) + local_root, value)
    if isinstance(value, list):
        return [map_image_paths(v, image_root, local_root) for v in value]
    if isinstance(value, dict):
        return {k: map_image_paths(v, image_root, local_root) for k, v in value.items()}
    return value


def shell_words(text: str) -> list[str]:
    return shlex.split(text)
