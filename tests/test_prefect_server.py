"""Against a real `prefect server start`: apply prefect.yaml's deployments, run the edge validation deployment
through a process worker, and read its state and artifact back through the API (marker `integration`)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tiers import heavy_fixture

from export.gguf import export_gguf
from rakd.data.generator import GeneratorConfig, generate
from rakd.io import to_jsonl
from rakd.models.zoo import build_model, preset_config

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(api: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


def prefect(env: dict, *args: str, timeout: float = 300) -> str:
    done = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@heavy_fixture()
def server(tmp_path):
    """A real Prefect server on a free loopback port with its own SQLite home; stopped even on failure."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_API_URL": api,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(api, proc, log)
        yield env, api
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_edge_deployment_runs_on_a_process_worker(server, tmp_path, tokenizer):
    env, api = server
    model = build_model(preset_config("test-micro", tokenizer), seed=2)
    gguf = export_gguf(model, tokenizer, tmp_path / "device-model.gguf", "f16")
    data = tmp_path / "problems.jsonl"
    data.write_text(to_jsonl(generate(GeneratorConfig(n_items=4, seed=8))))
    out = tmp_path / "report"

    for pool in ("cpu", "gpu", "edge"):
        prefect(env, "work-pool", "create", pool, "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all")
    deployments = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
    assert set(deployments) == {"tiny-nightly", "gpu", "edge"}
    nightly = deployments["tiny-nightly"]
    assert nightly["work_pool_name"] == "cpu" and nightly["parameters"]["config"] == "configs/tiny.yaml"
    assert nightly["parameters"]["refresh"] is True
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert deployments["gpu"]["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert deployments["edge"]["work_pool_name"] == "edge"

    params = {
        "model": str(gguf),
        "data": str(data),
        "out": str(out),
        "validation": {"n_problems": 4, "max_new_tokens": 8, "isolate": False},
    }
    prefect(env, "deployment", "run", "rakd-validate/edge", "--params", json.dumps(params))
    prefect(env, "worker", "start", "--pool", "edge", "--run-once", timeout=400)

    runs = httpx.post(
        f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [deployments["edge"]["id"]]}}}
    ).json()
    assert len(runs) == 1
    assert runs[0]["state"]["type"] == "COMPLETED", runs[0]["state"]
    report = json.loads((out / "report.json").read_text())
    assert report["artefacts"][0]["label"] == "gguf-f16"  # from the file's own file type, not its name
    assert report["data"]["n"] == 4
    artifacts = httpx.post(
        f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}}
    ).json()
    assert [a["key"] for a in artifacts] == ["edge-validate-device-model"]
    assert "gguf-f16" in json.dumps(artifacts[0]["data"])
