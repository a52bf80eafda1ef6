"""Against a real Prefect server (the suite's, the same app `prefect server start` runs): apply prefect.yaml's
deployments, run the edge validation deployment through a process worker, and read its state and artifact back
through the API (marker `integration`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from export.gguf import export_gguf
from rakd.data.generator import GeneratorConfig, generate
from rakd.io import to_jsonl
from rakd.models.zoo import build_model, preset_config

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")

pytestmark = pytest.mark.integration


def prefect(env: dict, *args: str, timeout: float = 300) -> str:
    done = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture()
def server(prefect_harness, tmp_path):
    """The suite's Prefect server (the harness's: the same server app `prefect server start` runs, on a loopback port
    with its own SQLite database; one server start and migration for the whole suite), and the environment a CLI
    process or a worker talks to it with."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    return env, api


def test_edge_deployment_runs_on_a_process_worker(server, tmp_path, tokenizer):
    env, api = server
    model = build_model(preset_config("test-micro", tokenizer), seed=2)
    gguf = export_gguf(model, tokenizer, tmp_path / "device-model.gguf", "f16")
    data = tmp_path / "problems.jsonl"
    data.write_text(to_jsonl(generate(GeneratorConfig(n_items=4, seed=8))))
    out = tmp_path / "report"

    for pool in ("cpu", "gpu", "edge"):  # as `prefect work-pool create POOL --type process` does (docs/usage.md)
        created = httpx.post(f"{api}/work_pools/", json={"name": pool, "type": "process"}, timeout=30)
        assert created.status_code == 201, created.text
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
