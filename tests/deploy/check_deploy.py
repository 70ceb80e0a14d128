#!/usr/bin/env python3
"""Offline validation of the deployment (issue 10): the image, the compose stack, Prometheus, Grafana
and the Kubernetes overlays, checked against the server they deploy. Registered with ctest:

  check_deploy.py static                         files only: yamllint, docker-compose config, promtool,
                                                 kubectl kustomize + Kubernetes schemas, the checks of
                                                 deploy_checks.py, and the broken fixtures they reject
  check_deploy.py live --build-dir BUILD         runs BUILD's stavid_server the way each deployment
                                                 would (the image layout, the compose CPU profile, the
                                                 Kubernetes cpu-demo config), scrapes it with Debian's
                                                 Prometheus on the compose config, and checks the
                                                 dashboard against the live /metrics

Nothing here reaches the network: servers listen on 127.0.0.1 and every tool works on local files.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_checks as dc  # noqa: E402

ROOT = dc.ROOT
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BUILD_DIR: Path | None = None


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


class Files:
    """The deployment files, parsed once."""
    facts = dc.read_server_facts()
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    compose = load_yaml(ROOT / "docker-compose.yml")
    prometheus = load_yaml(ROOT / "deploy/prometheus/prometheus.yml")
    alerts = load_yaml(ROOT / "deploy/prometheus/alerts.yml")
    provider = load_yaml(ROOT / "deploy/grafana/provisioning/dashboards/stavid.yml")
    datasources = load_yaml(ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/stavid.json").read_text())
    adapter = load_yaml(ROOT / "deploy/k8s/prometheus-adapter/values.yaml")


def assert_problems(test: unittest.TestCase, problems: list[str], expected: list[str]):
    """Every expected fragment is in some problem (a broken fixture fails for the reasons it was built for)."""
    text = "\n".join(problems)
    for fragment in expected:
        test.assertIn(fragment, text, f"expected a problem mentioning {fragment!r}; got:\n{text}")


# ---------------------------------------------------------------------------------------------
class StaticTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="stavid-deploy-")
        self.work = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_server_facts_read_from_sources(self):
        f = Files.facts
        self.assertEqual(f.health_names, {"", "liveness", "readiness", "stavid.v1.VideoService"})
        self.assertEqual((f.listen_port, f.metrics_port), (50051, 9464))
        self.assertGreater(f.drain_budget_s, 0)
        self.assertIn("stavid_queue_depth", f.metric_names)
        self.assertIn("process_resident_memory_bytes", f.metric_names)
        self.assertGreater(f.image_uid, 0)

    def test_promql_metric_names(self):
        self.assertEqual(dc.promql_metric_names(
            'histogram_quantile(0.95, sum by (le, stage) (rate(stavid_stage_duration_seconds_bucket{instance=~".*",stage="x"}[1m])))'),
            {"stavid_stage_duration_seconds_bucket"})
        self.assertEqual(dc.promql_metric_names('DCGM_FI_DEV_FB_USED{pod=~".*"} * 1024 * 1e6 + up offset 5m'),
                         {"DCGM_FI_DEV_FB_USED", "up"})
        self.assertEqual(dc.promql_metric_names('(sum(a) or vector(0)) / on (x) group_left (y) b'), {"a", "b"})

    def test_yamllint(self):
        files = [str(ROOT / "docker-compose.yml")] + sorted(
            str(p) for p in (ROOT / "deploy").rglob("*") if p.suffix in (".yml", ".yaml"))
        r = run(["yamllint", "--strict", "-c", str(Path(__file__).parent / "yamllint.yml"), *files])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertGreater(len(files), 15)

    def test_yamllint_rejects_broken_yaml(self):
        r = run(["yamllint", "--strict", "-c", str(Path(__file__).parent / "yamllint.yml"), str(FIXTURES / "broken.yaml")])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("duplication of key", r.stdout)

    def test_dockerfile(self):
        self.assertEqual(dc.check_dockerfile(Files.dockerfile, Files.facts), [])

    def test_dockerfile_broken_fixture_rejected(self):
        problems = dc.check_dockerfile((FIXTURES / "Dockerfile.broken").read_text(), Files.facts)
        assert_problems(self, problems, ["final stage must be a CUDA runtime image", "numeric non-root USER",
                                         "HEALTHCHECK service 'ready'", "ADD fetches", 'ENTRYPOINT must be ["stavid_server"]'])

    def test_stage_runtime_lists_runtime_packages(self):
        """deploy/docker/stage-runtime.sh (the image's runtime package list) on this machine's build."""
        if BUILD_DIR is None or not (BUILD_DIR / "server/stavid_server").exists():
            self.skipTest("no --build-dir with stavid_server")
        staging = self.work / "staging"
        r = run([str(ROOT / "deploy/docker/stage-runtime.sh"), str(BUILD_DIR), str(staging), "1"])
        self.assertEqual(r.returncode, 0, r.stderr)
        packages = (staging / "runtime-packages.txt").read_text().split()
        self.assertTrue(any(p.startswith("libgrpc++") for p in packages), packages)
        self.assertTrue(any(p.startswith("libavcodec") for p in packages), packages)
        self.assertFalse([p for p in packages if p.endswith("-dev")], packages)
        for path in ("opt/stavid/bin/stavid_server", "opt/stavid/bin/stavid", "opt/stavid/deploy/models/demo.json",
                     "opt/stavid/tests/data/dit/small/transformer.safetensors"):
            self.assertTrue((staging / path).exists(), path)

    def test_compose_config_validates(self):
        for profile in ("cpu", "gpu"):
            r = run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", profile, "config", "-q"], cwd=ROOT)
            self.assertEqual(r.returncode, 0, f"profile {profile}: {r.stderr}")
        self.assertEqual(dc.check_compose(Files.compose, Files.prometheus, Files.provider, Files.facts), [])

    def test_compose_broken_fixtures_rejected(self):
        r = run(["docker-compose", "-f", str(FIXTURES / "compose-invalid.yml"), "config", "-q"], cwd=ROOT)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ports contains an invalid type", r.stderr + r.stdout)
        broken = load_yaml(FIXTURES / "compose-broken.yml")
        problems = dc.check_compose(broken, Files.prometheus, Files.provider, Files.facts)
        assert_problems(self, problems, ["stavid-gpu must reserve GPUs", "stavid-cpu serves /metrics on 9465",
                                         "stop_grace_period 20s does not cover", "stavid-gpu lacks the network alias",
                                         "must run read_only"])

    def test_prometheus_config_and_rules(self):
        r = run(["promtool", "check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS: 1 rule files found", r.stdout + r.stderr)
        r = run(["promtool", "check", "rules", str(ROOT / "deploy/prometheus/alerts.yml")])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = run(["promtool", "test", "rules", "alerts_test.yml"], cwd=ROOT / "deploy/prometheus")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        names = {rule["alert"] for g in Files.alerts["groups"] for rule in g["rules"]}
        self.assertTrue({"StavidHighP95Latency", "StavidQueueSaturated", "StavidHighErrorRatio",
                         "StavidNoReadyReplicas"} <= names, names)
        for g in Files.alerts["groups"]:
            for rule in g["rules"]:
                for n in dc.promql_metric_names(rule["expr"]):
                    self.assertIn(n, dc.known_dashboard_metrics(Files.facts.metric_names), rule["alert"])
        # The saturation alert fires before the server's queue is full.
        sat = next(r for g in Files.alerts["groups"] for r in g["rules"] if r["alert"] == "StavidQueueSaturated")
        self.assertLess(float(sat["expr"].split(">=")[1]), Files.facts.max_queue)

    def test_promtool_rejects_broken_rules(self):
        r = run(["promtool", "check", "rules", str(FIXTURES / "alerts-broken.yml")])
        self.assertNotEqual(r.returncode, 0)

    def test_grafana_provisioning(self):
        ds = Files.datasources["datasources"]
        self.assertEqual(len(ds), 1)
        self.assertEqual(ds[0]["type"], "prometheus")
        url = urllib.parse.urlparse(ds[0]["url"])
        prom_flags = dc.flag_values(Files.compose["services"]["prometheus"]["command"])
        self.assertIn(url.hostname, Files.compose["services"])
        self.assertEqual(url.port, dc.port_of(prom_flags["--web.listen-address"]))
        # $__rate_interval is derived from the scrape interval Grafana is told.
        self.assertEqual(dc.duration_seconds(ds[0]["jsonData"]["timeInterval"]),
                         dc.duration_seconds(Files.prometheus["global"]["scrape_interval"]))

    def test_dashboard(self):
        known = dc.known_dashboard_metrics(Files.facts.metric_names)
        self.assertEqual(dc.check_dashboard(Files.dashboard, known, self.work), [])
        exprs = " ".join(t["expr"] for _, t in dc.dashboard_exprs(Files.dashboard))
        # What issue 10 asks the dashboard to show.
        for needle in ("stavid_requests_total", 'outcome="failed"', "histogram_quantile(0.5,", "histogram_quantile(0.95,",
                       "histogram_quantile(0.99,", "stavid_queue_depth", "stavid_queue_wait_seconds_bucket",
                       "stavid_stage_duration_seconds_bucket", "stavid_step_duration_seconds_bucket",
                       "stavid_teacache_skipped_steps_total", "stavid_jobs_in_flight", "stavid_workers",
                       "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"):
            self.assertIn(needle, exprs)

    def test_dashboard_broken_fixture_rejected(self):
        broken = json.loads((FIXTURES / "dashboard-broken.json").read_text())
        problems = dc.check_dashboard(broken, dc.known_dashboard_metrics(Files.facts.metric_names), self.work)
        assert_problems(self, problems, ["queries stavid_queue_length", "DCGM reports it as mbytes: the unit must be 'mbytes'",
                                         "DCGM reports it as percent: the unit must be 'percent'", "uses datasource 'prom-1'",
                                         "promtool rejects an expression", "needs a templated 'instance'"])

    def test_kustomize_overlays(self):
        for overlay, gpu in (("cpu-demo", False), ("gpu", True)):
            with self.subTest(overlay=overlay):
                objects = dc.render_kustomize(ROOT / "deploy/k8s/overlays" / overlay)
                kinds = sorted(o["kind"] for o in objects)
                for kind in ("ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                             "PrometheusRule", "ServiceMonitor"):
                    self.assertIn(kind, kinds)
                self.assertEqual(kinds.count("Service"), 2)
                self.assertEqual(dc.validate_schemas(objects), [])
                self.assertEqual(dc.check_k8s(objects, Files.facts, Files.alerts, Files.adapter, gpu=gpu), [])

    def test_kustomize_broken_fixtures_rejected(self):
        objects = dc.render_kustomize(FIXTURES / "k8s-broken")
        problems = dc.check_k8s(objects, Files.facts, Files.alerts, Files.adapter, gpu=True)
        assert_problems(self, problems, [
            "readinessProbe asks health service 'ready'", "livenessProbe must ask 'liveness', asks 'readiness'",
            "terminationGracePeriodSeconds 20 does not cover", "readOnlyRootFilesystem", "container port 'metrics' is 9090",
            "nvidia.com/gpu", "the HPA's pods metrics ['stavid_queue_length']", "weights volume and its mount must be read-only"])
        objects = dc.render_kustomize(FIXTURES / "k8s-schema-broken")
        errors = dc.validate_schemas(objects)
        assert_problems(self, errors, ["containerPort must be integer", "replicas must be integer",
                                       "ServiceMonitor/stavid: /spec/endpoints/0/port must be string"])

    def test_prometheus_adapter_rule(self):
        rules = Files.adapter["rules"]["custom"]
        self.assertEqual(len(rules), 1)
        rule = rules[0]
        self.assertEqual(dc.promql_metric_names(rule["seriesQuery"]), {"stavid_queue_depth"})
        self.assertIn("stavid_queue_depth", Files.facts.metric_names)
        self.assertEqual(set(rule["resources"]["overrides"]), {"namespace", "pod"})
        concrete = (rule["metricsQuery"].replace("<<.Series>>", "stavid_queue_depth")
                    .replace("<<.LabelMatchers>>", 'namespace="stavid",pod=~"stavid-.*"').replace("<<.GroupBy>>", "pod"))
        self.assertEqual(dc.promtool_check_exprs({"adapter:stavid_queue_depth": concrete}, self.work), [])
        hpa = load_yaml(ROOT / "deploy/k8s/base/hpa.yaml")
        self.assertEqual(hpa["spec"]["metrics"][0]["pods"]["metric"]["name"], rule["name"]["as"])

    def test_serving_configs(self):
        base = json.loads((ROOT / "deploy/k8s/base/serving.json").read_text())
        gpu = json.loads((ROOT / "deploy/k8s/overlays/gpu/serving.json").read_text())
        demo = json.loads((ROOT / "deploy/models/demo.json").read_text())
        for config in (base, gpu, demo):
            self.assertEqual(dc.check_serving_config(config), [])
        # The Kubernetes demo config is the compose/image one (deploy/models/demo.json as the image
        # lays it out under /opt/stavid), descriptions aside.
        resolved = dc.resolve_serving_config(demo, f"{dc.IMAGE_ROOT}/deploy/models")
        strip = lambda c: [{k: v for k, v in m.items() if k != "description"} for m in c["models"]]  # noqa: E731
        self.assertEqual(strip(base), strip(resolved))
        broken = json.loads((FIXTURES / "serving-broken.json").read_text())
        assert_problems(self, dc.check_serving_config(broken), ["unknown key tiles", "712 is not", "not 4k+1",
                                                                "exactly one of text_encoder and embeddings"])


# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # 127.0.0.1 only
        return r.read().decode()


def prom_query(port: int, expr: str) -> dict:
    return json.loads(http_get(f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"))


def eventually(fn, timeout_s: float, step_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(step_s)
    return last


class Server:
    """stavid_server as a subprocess with the given flags (the ports rewritten onto 127.0.0.1)."""

    def __init__(self, binary: Path, args: list[str], log: Path):
        self.grpc_port, self.metrics_port = free_port(), free_port()
        flags = []
        for a in args:
            if a.startswith("--listen="):
                a = f"--listen=127.0.0.1:{self.grpc_port}"
            elif a.startswith("--metrics-listen="):
                a = f"--metrics-listen=127.0.0.1:{self.metrics_port}"
            flags.append(a)
        self.flags = flags
        self.log = log
        self.proc = subprocess.Popen([str(binary), *flags], stdout=log.open("w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60) -> bool:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"stavid_server exited {self.proc.returncode}: {self.log.read_text()}")
            return "stavid_server: ready" in self.log.read_text()
        return bool(eventually(ready, timeout_s))

    def stop(self, timeout_s: float = 60) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        return rc, time.monotonic() - t0

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class LiveTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if BUILD_DIR is None:
            raise unittest.SkipTest("live tests need --build-dir")
        cls.server_bin = BUILD_DIR / "server/stavid_server"
        cls.client_bin = BUILD_DIR / "client/stavid"
        cls.tmp = tempfile.TemporaryDirectory(prefix="stavid-deploy-live-")
        cls.work = Path(cls.tmp.name)
        # The image's /opt/stavid, laid out by the Dockerfile's own staging script.
        cls.staging = cls.work / "staging"
        r = run([str(ROOT / "deploy/docker/stage-runtime.sh"), str(BUILD_DIR), str(cls.staging), "1"])
        if r.returncode != 0:
            raise AssertionError(f"stage-runtime.sh failed: {r.stderr}")
        cls.image_root = str(cls.staging / "opt/stavid")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def to_local(self, args: list[str]) -> list[str]:
        return dc.map_image_paths(args, dc.IMAGE_ROOT, self.image_root)

    def client(self, server: Server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run([str(self.client_bin), "--server", f"127.0.0.1:{server.grpc_port}", *args], timeout=timeout)

    def test_image_layout_cmd_and_healthcheck(self):
        """The image's ENTRYPOINT + CMD on the staged /opt/stavid; its HEALTHCHECK command answers 0."""
        ins = dc.dockerfile_instructions(Files.dockerfile)
        cmd = dc.dockerfile_exec_form([rest for w, rest in ins if w == "CMD"][-1])
        health = dc.dockerfile_exec_form([rest for w, rest in ins if w == "HEALTHCHECK"][-1].split("CMD", 1)[1].strip())
        server = Server(Path(self.image_root) / "bin/stavid_server", self.to_local(cmd), self.work / "image.log")
        try:
            self.assertTrue(server.wait_ready(), server.log.read_text())
            argv = [Path(self.image_root, "bin", health[0]).as_posix()] + [
                f"127.0.0.1:{server.grpc_port}" if a.startswith("127.0.0.1:") else a for a in health[1:]]
            r = run(argv, timeout=30)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("SERVING", r.stdout)
            r = run([str(self.client_bin), "--server", f"127.0.0.1:{server.grpc_port}", "--json", "models"], timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("demo", r.stdout)
        finally:
            rc, _ = server.stop()
        self.assertEqual(rc, 0)

    def test_compose_cpu_profile_scraped_by_compose_prometheus(self):
        """Issue 10 acceptance: the compose CPU profile's server, run here with the same arguments, serves the
        demo model and is scraped by the Prometheus of the compose config (Debian's prometheus)."""
        svc = Files.compose["services"]["stavid-cpu"]
        server = Server(self.server_bin, self.to_local(svc["command"]), self.work / "compose-cpu.log")
        prom = None
        try:
            self.assertTrue(server.wait_ready(), server.log.read_text())
            out = self.work / "demo.mp4"
            r = self.client(server, "--quiet", "generate", "--model", "demo", "--prompt", "a red circle",
                            "--frames", "5", "--height", "64", "--width", "64", "--steps", "2", "--sta", "dense",
                            "--seed", "7", "-o", str(out))
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertGreater(out.stat().st_size, 1000)
            self.assertEqual(out.read_bytes()[4:8], b"ftyp")

            scrape = http_get(f"http://127.0.0.1:{server.metrics_port}/metrics")
            live = {line.split("{")[0].split(" ")[0] for line in scrape.splitlines() if line and not line.startswith("#")}
            self.assertIn("stavid_stage_duration_seconds_bucket", live)
            # Every server metric the dashboard queries is in this scrape (GPU-only families aside).
            known = live | dc.known_dashboard_metrics(Files.facts.gpu_only_metrics) | set(dc.DCGM_UNITS) | {"up"}
            self.assertEqual(dc.check_dashboard(Files.dashboard, known, self.work), [])
            used = set().union(*(dc.promql_metric_names(dc.substitute_grafana_variables(t["expr"]))
                                 for _, t in dc.dashboard_exprs(Files.dashboard)))
            server_used = {n for n in used if n.startswith(("stavid_", "process_"))}
            self.assertEqual(server_used - live - dc.known_dashboard_metrics(Files.facts.gpu_only_metrics), set())

            # The compose prometheus.yml, with compose's service names resolved to this machine; targets
            # that do not run here (the DCGM exporter) go to a closed loopback port, so that nothing
            # leaves the machine (not even a DNS query) and they are simply down.
            config = json.loads(json.dumps(Files.prometheus))
            prom_port = free_port()
            local = {"stavid:9464": f"127.0.0.1:{server.metrics_port}", "localhost:9090": f"127.0.0.1:{prom_port}"}
            for job in config["scrape_configs"]:
                for sc in job["static_configs"]:
                    sc["targets"] = [local.get(t, f"127.0.0.1:{free_port()}") for t in sc["targets"]]
            config["rule_files"] = [str(ROOT / "deploy/prometheus" / f) for f in config["rule_files"]]
            (self.work / "prometheus.yml").write_text(yaml.safe_dump(config))
            prom = subprocess.Popen(["prometheus", f"--config.file={self.work / 'prometheus.yml'}",
                                     f"--storage.tsdb.path={self.work / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{prom_port}"],
                                    stdout=subprocess.DEVNULL, stderr=(self.work / "prometheus.log").open("w"))

            def stavid_up():
                try:
                    res = prom_query(prom_port, 'up{job="stavid"}')["data"]["result"]
                except OSError:
                    return None
                return res if res and res[0]["value"][1] == "1" else None
            # The first scrape comes within one scrape_interval (15 s) of the start.
            interval = dc.duration_seconds(Files.prometheus["global"]["scrape_interval"])
            self.assertTrue(eventually(stavid_up, 2 * interval + 15), (self.work / "prometheus.log").read_text()[-2000:])
            ready = prom_query(prom_port, 'sum(stavid_ready{job="stavid"})')["data"]["result"]
            self.assertEqual(ready[0]["value"][1], "1")
            jobs = prom_query(prom_port, 'sum(stavid_jobs_total{job="stavid",outcome="succeeded"})')["data"]["result"]
            self.assertEqual(jobs[0]["value"][1], "1")
            # The alert rules loaded and evaluate; every dashboard query runs on this Prometheus.
            rules = json.loads(http_get(f"http://127.0.0.1:{prom_port}/api/v1/rules"))["data"]["groups"]
            self.assertEqual(sorted(r["name"] for g in rules for r in g["rules"]),
                             sorted(r["alert"] for g in Files.alerts["groups"] for r in g["rules"]))
            for _, t in dc.dashboard_exprs(Files.dashboard):
                answer = prom_query(prom_port, dc.substitute_grafana_variables(t["expr"]))
                self.assertEqual(answer["status"], "success", t["expr"])
        finally:
            if prom is not None:
                prom.terminate()
                try:
                    prom.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    prom.kill()
                    prom.wait()
            rc, _ = server.stop()
        self.assertEqual(rc, 0, server.log.read_text())

    def test_sigterm_taken_by_any_thread_drains(self):
        """Kubernetes and compose stop the server with a process-directed SIGTERM, which the kernel may hand
        to any thread that does not block it, such as the pool OpenBLAS starts before main. Sent to such a
        thread directly (tgkill), it must still drain and exit 0, not take the default action."""
        server = Server(self.server_bin, ["--stub", "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"],
                        self.work / "signal.log")
        try:
            self.assertTrue(server.wait_ready(), server.log.read_text())
            pid = server.proc.pid
            sigterm_bit = 1 << (signal.SIGTERM - 1)
            targets = []
            for task in Path(f"/proc/{pid}/task").iterdir():
                blocked = next(line for line in (task / "status").read_text().splitlines() if line.startswith("SigBlk:"))
                if int(task.name) != pid and not int(blocked.split()[1], 16) & sigterm_bit:
                    targets.append(int(task.name))
            if not targets:
                self.skipTest("every thread but the main one blocks SIGTERM")
            libc = ctypes.CDLL(None, use_errno=True)
            self.assertEqual(libc.tgkill(pid, targets[0], int(signal.SIGTERM)), 0)
            rc = server.proc.wait(timeout=60)
        finally:
            server.kill()
        self.assertEqual(rc, 0, server.log.read_text())
        self.assertIn("SIGTERM, draining", server.log.read_text())

    def test_k8s_cpu_demo_pod(self):
        """The cpu-demo overlay's container args and ConfigMap on the staged image tree: its probes (as the
        kubelet would ask them) and its drain within terminationGracePeriodSeconds."""
        objects = dc.render_kustomize(ROOT / "deploy/k8s/overlays/cpu-demo")
        dep = dc.find(objects, "Deployment")[0]
        spec = dep["spec"]["template"]["spec"]
        c = spec["containers"][0]
        flags = dc.flag_values(c["args"])
        cm = next(o for o in objects if o["kind"] == "ConfigMap")
        config = dc.map_image_paths(json.loads(cm["data"][os.path.basename(flags["--config"])]), dc.IMAGE_ROOT, self.image_root)
        config_file = self.work / "serving.json"
        config_file.write_text(json.dumps(config))
        args = [f"--config={config_file}" if a.startswith("--config=") else a for a in c["args"]]
        server = Server(self.server_bin, args, self.work / "k8s.log")
        try:
            self.assertTrue(server.wait_ready(), server.log.read_text())
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                service = c[probe]["grpc"]["service"]
                r = self.client(server, "--timeout", str(c[probe].get("timeoutSeconds", 1)), "health", "--service", service)
                self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"), f"{probe}: {r.stderr}")
            r = self.client(server, "--json", "models")
            self.assertIn('"demo"', r.stdout.replace(" ", ""))
        finally:
            rc, drained_s = server.stop()
        self.assertEqual(rc, 0, server.log.read_text())
        pre_sleep = float(c["lifecycle"]["preStop"]["exec"]["command"][1])
        self.assertLess(pre_sleep + drained_s, spec["terminationGracePeriodSeconds"])


def main() -> int:
    global BUILD_DIR
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=["static", "live"])
    parser.add_argument("--build-dir", type=Path, help="the CMake build tree with server/stavid_server and client/stavid")
    args, rest = parser.parse_known_args()
    BUILD_DIR = args.build_dir.resolve() if args.build_dir else None
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(StaticTests if args.suite == "static" else LiveTests)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors)
    passed = result.testsRun - failed - len(result.skipped)
    print(f"{passed} passed, {failed} failed, {len(result.skipped)} skipped")
    return 0 if result.wasSuccessful() and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
