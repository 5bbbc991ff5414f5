"""Issue 30, live streams on many replicas: the deployment files and the drain.

The Kubernetes manifests are checked offline against the API's schemas
(kubernetes-validate) and against the server they run (probe paths, drain timing, the
metric the autoscaler reads); the nginx site config with ``nginx -t``; the drain on a real
uvicorn server in a thread, with a stream held open so the drain lasts while it is probed.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.cli import build_parser
from app.metrics import Metrics
from app.server import create_app
from app.settings import Settings
from app.shutdown import GracefulServer
from benchmarks.replicas import nginx_binary, nginx_site, write_nginx_config
from tests.conftest import RANKING, TEST_SETTINGS, fixture_path
from tests.servers import in_thread, serve_config, stream_until_a_partial

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MANIFESTS = [*sorted(DEPLOY.glob("k8s/*.yaml")), DEPLOY / "hpa-active-streams.yaml"]
# The oldest Kubernetes the manifests promise to work on, and the newest schema at hand.
KUBERNETES_VERSIONS = ("1.29.0", "latest")
WAIT_S = 10.0


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest(kind: str, path: Path | None = None) -> dict:
    found = [d for p in ([path] if path else MANIFESTS) for d in documents(p) if d["kind"] == kind]
    assert len(found) >= 1, f"no {kind} in {path or MANIFESTS}"
    return found[0]


def serve_flags(command: list[str]) -> dict[str, str]:
    """``--name=value`` and ``--name value`` flags of a ``spikeear serve`` command line,
    after checking that the real parser accepts them."""
    assert command[:2] == ["spikeear", "serve"], command
    build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown flag
    flags, rest = {}, command[2:]
    while rest:
        name, _, value = rest.pop(0).partition("=")
        flags[name] = value or rest.pop(0)
    return flags


# ----- Kubernetes ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_pass_the_kubernetes_schema_strictly(path, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    for document in documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_catches_a_wrong_field():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = manifest("Deployment")
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {
        **probe,
        "periodSecond": 2,  # a typo: strict validation must refuse it
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_the_deployment_probes_health_and_its_drain_fits_the_grace_period():
    deployment = manifest("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    flags = serve_flags(container["command"])
    (port,) = [p for p in container["ports"] if p["containerPort"] == int(flags["--port"])]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/health" and check["port"] in (port["name"], port["containerPort"])
    # A draining pod answers 503 at once: one failed readiness check takes it out.
    assert container["readinessProbe"]["failureThreshold"] == 1
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain_s = int(pre_stop[1]) + float(flags["--shutdown-grace-s"])
    assert pod["terminationGracePeriodSeconds"] >= drain_s + 5  # and time to exit after it
    # The drain's 503s must not look like a dead pod before the kubelet's own SIGKILL.
    liveness = container["livenessProbe"]
    assert (
        liveness["periodSeconds"] * liveness["failureThreshold"]
        > (pod["terminationGracePeriodSeconds"])
    )
    # Workers pinned to the CPU the pod gets ("auto" would count the node's cores).
    assert int(flags["--workers"]) <= float(container["resources"]["limits"]["cpu"])
    assert container["resources"]["requests"]["memory"]


def test_the_service_and_autoscalers_point_at_the_deployment():
    deployment = manifest("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = manifest("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    container_port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert service["spec"]["ports"][0]["targetPort"] in (
        container_port["name"],
        container_port["containerPort"],
    )
    cpu = manifest("HorizontalPodAutoscaler", DEPLOY / "k8s" / "hpa.yaml")
    streams = manifest("HorizontalPodAutoscaler", DEPLOY / "hpa-active-streams.yaml")
    for hpa in (cpu, streams):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert cpu["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # Same name: applying the variant replaces the CPU autoscaler rather than adding one.
    assert streams["metadata"]["name"] == cpu["metadata"]["name"]


def test_the_custom_metric_autoscaler_reads_a_gauge_that_metrics_exports():
    hpa = manifest("HorizontalPodAutoscaler", DEPLOY / "hpa-active-streams.yaml")
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    exported = {m.name: m.type for m in Metrics().registry.collect()}
    assert exported.get(name) == "gauge", f"{name} is not a gauge of /metrics: {exported}"
    assert name in (DEPLOY / "README.md").read_text()  # the adapter rule names it too


# ----- docker compose --------------------------------------------------------------------------
def test_compose_runs_the_repository_image_behind_nginx_with_a_drain_that_fits():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    replica, nginx = compose["spikeear"], compose["nginx"]
    dockerfile = DEPLOY / replica["build"]["context"] / replica["build"]["dockerfile"]
    assert dockerfile.resolve() == (DEPLOY.parent / "Dockerfile").resolve()
    flags = serve_flags(replica["command"])
    grace_s = float(flags["--shutdown-grace-s"])
    assert float(replica["stop_grace_period"].rstrip("s")) >= grace_s + 5
    assert "/health" in " ".join(replica["healthcheck"]["test"])
    assert replica["deploy"]["replicas"] >= 2
    mounted = {v.split(":")[0]: v.split(":")[1] for v in nginx["volumes"]}
    assert mounted["./nginx.conf"].startswith("/etc/nginx/conf.d/")
    upstream = re.search(r"server\s+(\w+):(\d+)", (DEPLOY / "nginx.conf").read_text())
    assert upstream is not None and upstream.groups() == ("spikeear", flags["--port"])
    assert nginx["depends_on"]["spikeear"]["condition"] == "service_healthy"


# ----- nginx -----------------------------------------------------------------------------------
NGINX = nginx_binary()
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light)"
)


def nginx_test(tmp_path: Path, template: Path) -> subprocess.CompletedProcess:
    config = write_nginx_config(tmp_path, [18001, 18002, 18003], 18000, template)
    return subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@needs_nginx
def test_the_nginx_config_passes_nginx_t(tmp_path):
    checked = nginx_test(tmp_path, DEPLOY / "nginx.conf")
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


@needs_nginx
def test_nginx_t_fails_a_broken_config(tmp_path):
    broken = tmp_path / "broken.conf"
    broken.write_text((DEPLOY / "nginx.conf").read_text().replace("least_conn;", "least_con;"))
    checked = nginx_test(tmp_path, broken)
    assert checked.returncode != 0 and "least_con" in checked.stderr


def test_the_nginx_config_balances_websockets_by_open_connections():
    conf = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream spikeear \{(.*?)\}", conf, re.S).group(1)
    assert re.search(r"^\s*least_conn;", upstream, re.M)
    assert "proxy_http_version 1.1;" in conf
    assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", conf)
    assert re.search(r"proxy_set_header Connection \$connection_upgrade;", conf)
    read_timeout = re.search(r"proxy_read_timeout (\d+)([smh]);", conf)
    seconds = int(read_timeout.group(1)) * {"s": 1, "m": 60, "h": 3600}[read_timeout.group(2)]
    assert seconds > Settings().idle_timeout_s  # the server, not nginx, ends idle streams
    assert re.search(r"proxy_next_upstream [^;]*\berror\b[^;]*\bhttp_503\b", conf)
    # The loopback version keeps every line but the upstream servers and the port.
    site = nginx_site(conf, [1, 2], 3)
    assert site.count("server 127.0.0.1:") == 2 and "listen 127.0.0.1:3;" in site
    assert "spikeear:8000" not in site


# ----- the drain -------------------------------------------------------------------------------
def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=WAIT_S) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def read_until_closed(ws: ClientConnection) -> tuple[list[dict], ConnectionClosed]:
    messages = []
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=WAIT_S)))
    except ConnectionClosed as closed:
        return messages, closed


def test_on_sigterm_health_turns_503_new_streams_get_1012_and_open_ones_finish_their_word(
    controlled_model,
):
    settings = Settings(**TEST_SETTINGS)
    app = create_app(settings, controlled_model)
    streams = app.state.services.streams
    server = GracefulServer(serve_config(app, settings), streams, grace_s=30.0)
    audio, rate = sf.read(fixture_path("yes"), dtype="int16")
    assert rate == 16000
    with in_thread(server) as port:
        url = f"ws://127.0.0.1:{port}"
        assert health(port)[0] == 200
        with connect(f"{url}/v1/stream") as open_stream:
            stream_until_a_partial(open_stream, audio, pace_s=0.02)
            # A stream that has not finished yet keeps the drain going while it is probed.
            unfinished = streams.register()
            try:
                server.handle_exit(signal.SIGTERM, None)  # what the signal handler calls
                status, body = health(port)  # at once: before the shutdown's first step
                assert (status, body["status"]) == (503, "draining"), body
                messages, closed = read_until_closed(open_stream)
                assert [m["type"] for m in messages] == ["final", "error"], messages
                assert messages[0]["word"] == RANKING[0]
                assert closed.rcvd.code == 1012 and "reconnect" in closed.rcvd.reason
                # New streams during the drain: refused with the same code and reason.
                with connect(f"{url}/v1/stream") as late:
                    late_messages, late_closed = read_until_closed(late)
                assert [m["type"] for m in late_messages] == ["error"]
                assert late_closed.rcvd.code == 1012 and "reconnect" in late_closed.rcvd.reason
                with connect(f"{url}/vosk") as late_vosk:
                    _, vosk_closed = read_until_closed(late_vosk)
                assert vosk_closed.rcvd.code == 1012 and "reconnect" in vosk_closed.rcvd.reason
                assert health(port)[0] == 503 and server.started  # still draining, port open
            finally:
                streams.unregister(unfinished)
            # The last stream done, the shutdown goes on and the port closes.
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                try:
                    health(port)
                except OSError:  # refused: the server is gone
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the server did not finish its shutdown after the drain")


def test_uploads_and_enrollments_are_refused_with_503_while_the_server_drains(
    controlled_model, tmp_path
):
    from fastapi.testclient import TestClient

    from tests.conftest import fixture_path

    clip = fixture_path("yes")
    with TestClient(create_app(Settings(), controlled_model)) as client:
        client.app.state.services.streams.shutting_down = True  # as SIGTERM sets it
        upload = {"file": (clip.name, clip.read_bytes(), "audio/wav")}
        for answer in (
            client.post("/v1/transcribe", files=upload),
            client.post("/v1/words", data={"word": "lights", "synthesize": "true"}),
        ):
            assert answer.status_code == 503 and "shutting down" in answer.json()["error"]
            assert answer.headers["Retry-After"]
