"""logger=mlflow: a local store in the run (or sweep) directory, hyperparameters MLflow accepts, a resumed run
continuing its MLflow run, and logging to a real `mlflow server` (read back with MlflowClient, no network)."""

from __future__ import annotations

import csv
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightning_nmt.loggers import MLFLOW_ID_FILE, build_logger
from tests.conftest import compose_config

mlflow_tracking = pytest.importorskip("mlflow.tracking")

TINY = [
    "data.sample_sizes={train:1500,val:40,test:40}", "data.tokenizer.vocab_size=300",
    "model.embedding_dim=32", "model.encoder_hidden=32", "model.decoder_hidden=64",
    "trainer.max_epochs=null", "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "decoding.beam_size=1",
    "callbacks.num_heatmaps=0", "callbacks.num_examples=0", "test_after_training=false",
]


def client(uri: str) -> mlflow_tracking.MlflowClient:
    return mlflow_tracking.MlflowClient(uri)


def train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "lightning_nmt.train", *args, *TINY], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def history(mlflow: mlflow_tracking.MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow.get_metric_history(run_id, key)]


# ---- the logger alone ------------------------------------------------------------------------------------------

def test_params_are_cut_at_mlflows_limit_and_a_continued_run_keeps_their_first_values(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config("train", ["logger=mlflow"], tmp_path)
    run_dir = tmp_path / "run"
    (first,) = build_logger(cfg, run_dir, {})
    first.log_hyperparams({"config": {"resume": "never", "long": "x" * 7000}, "none": None})
    first.log_metrics({"val/bleu": 1.0}, step=2)
    first.finalize("success")
    run_id = (run_dir / MLFLOW_ID_FILE).read_text().strip()

    (again,) = build_logger(cfg, run_dir, {}, resume_step=2)
    with caplog.at_level(logging.INFO, logger="lightning_nmt"):
        again.log_hyperparams({"config": {"resume": "auto", "long": "x" * 7000, "new": 3}})
    again.log_metrics({"val/bleu": 2.0}, step=4)
    again.finalize("success")

    store = client(f"sqlite:///{run_dir / 'mlflow.db'}")
    run = store.get_run(run_id)
    assert again.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params == {"config/resume": "never", "config/long": "x" * 6000, "none": "None", "config/new": "3"}
    assert "config/resume=never logged before, different now" in caplog.text
    assert history(store, run_id, "val/bleu") == [(2, 1.0), (4, 2.0)]
    assert store.get_experiment(run.info.experiment_id).artifact_location == str(run_dir / "mlruns")


def test_a_sweep_job_logs_to_the_sweeps_store_and_an_unknown_run_id_starts_a_new_run(tmp_path: Path) -> None:
    cfg = compose_config("train", ["logger=mlflow", "seed=2"], tmp_path)
    sweep = tmp_path / "sweep"
    runtime = {"multirun": True, "sweep_dir": str(sweep), "overrides": ["seed=2", "model=basic"],
               "swept_keys": ["seed"]}
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / MLFLOW_ID_FILE).write_text("0123456789abcdef\n")
    (logger,) = build_logger(cfg, sweep / "0", runtime)
    run = logger.experiment.get_run(logger.run_id)
    assert logger.run_id != "0123456789abcdef"
    assert (sweep / "0" / MLFLOW_ID_FILE).read_text().strip() == logger.run_id
    assert (sweep / "mlflow.db").is_file() and not (sweep / "0" / "mlflow.db").exists()
    assert run.info.run_name == "seed=2"
    assert {k: run.data.tags[k] for k in ("seed", "sweep", "group")} == {
        "seed": "2", "sweep": "train-sweep", "group": "train:model=basic"}


def test_mlflow_tracking_uri_in_the_environment_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    (logger,) = build_logger(compose_config("train", ["logger=mlflow"], tmp_path), tmp_path / "run", {})
    assert logger._tracking_uri == "http://127.0.0.1:1"


# ---- real runs ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_logs_params_metrics_and_tags_and_resume_continues_the_same_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    base = ["logger=[csv,mlflow]", f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"]
    train(*base, "trainer.max_steps=6", cwd=tmp_path)
    run_id = (run_dir / MLFLOW_ID_FILE).read_text().strip()
    store = client(f"sqlite:///{run_dir / 'mlflow.db'}")
    assert [(m.step, m.value) for m in store.get_metric_history(run_id, "val/bleu")]
    proc = train(*base, "trainer.max_steps=9", "resume=auto", cwd=tmp_path)

    assert (run_dir / MLFLOW_ID_FILE).read_text().strip() == run_id
    (run,) = store.search_runs([store.get_experiment_by_name("train").experiment_id])  # the experiment: task_name
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert "trainer.max_steps=6" in run.info.run_name and "resume" not in run.info.run_name
    params = run.data.params
    assert (params["config/model/type"], params["config/seed"], params["config/logger/mlflow/enabled"]) == (
        "attention", "42", "True")
    assert params["config/trainer/max_steps"] == "6" and params["config/resume"] == "never"  # MLflow keeps the first
    assert "config/trainer/max_steps=6 logged before, different now" in proc.stdout + proc.stderr
    assert run.data.tags["seed"] == "42" and run.data.tags["group"].startswith("train:callbacks.num_examples=0,")
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for key in ("val/bleu", "val/loss"):  # the CSV log of the same run, resumed (ResumedCSVLogger)
        logged = [(int(r["step"]), float(r[key])) for r in rows if r[key]]
        assert len(logged) == 3 and history(store, run_id, key) == [(s, pytest.approx(v)) for s, v in logged]
    assert len(history(store, run_id, "train/loss")) == 9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on a free local port with a sqlite backend; stopped (its process group) at the end."""
    port, log = free_port(), open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'db'}", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _answers(f"{url}/health"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_a_sweep_logs_to_a_running_mlflow_server(tmp_path: Path, mlflow_server: str) -> None:
    sweep = tmp_path / "sweep"
    train("-m", "seed=1,2", "logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_server}", "trainer.max_steps=3",
          f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    server = client(mlflow_server)
    experiment = server.get_experiment_by_name("train")
    runs = {run.info.run_name: run for run in server.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["seed=1", "seed=2"] and not (sweep / "mlflow.db").exists()
    for job, seed in (("0", "1"), ("1", "2")):
        run = runs[f"seed={seed}"]
        assert (sweep / job / MLFLOW_ID_FILE).read_text().strip() == run.info.run_id
        assert (run.data.tags["seed"], run.data.tags["sweep"], run.info.status) == (seed, "train-sweep", "FINISHED")
        assert run.data.params["config/seed"] == seed and len(history(server, run.info.run_id, "val/bleu")) == 1
    assert runs["seed=1"].data.tags["group"] == runs["seed=2"].data.tags["group"]
