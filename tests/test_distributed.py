"""Data parallelism: the Hydra relaunch, per-job cleanup, effective batch, eval shards, and end to end
on the CPU with gloo: 2-process DDP runs (single run and multirun), one step of 2-rank DDP == one step of
one process with the whole batch, bf16-mixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from lightning_nmt import distributed
from lightning_nmt.app import build_datamodule, build_module
from lightning_nmt.data import DataError, TokenBatchSampler, collate
from lightning_nmt.module import TranslationModule
from tests.conftest import ROOT, compose_config

TINY = [
    "data.sample_sizes={train:1500,val:40,test:40}", "data.tokenizer.vocab_size=300",
    "model.embedding_dim=32", "model.encoder_hidden=32", "model.decoder_hidden=64",
    "trainer.enable_progress_bar=false", "decoding.beam_size=2",
]


def run_train(module: str, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m <module> args` in `cwd` (so any stray `outputs/` would land there, not in the repo)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    for name in distributed.RANK_VARIABLES:
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# ---- unit tests -------------------------------------------------------------------------------------

def test_child_overrides_keep_the_job_and_drop_what_belongs_to_the_sweep():
    task = ["trainer=ddp_cpu", "seed=2", "data.sample_sizes={train:10,val:2,test:2}"]
    hydra = ["hydra.mode=MULTIRUN", "hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2",
             "hydra.sweep.dir=/x", "hydra.run.dir=/y", "hydra.job.chdir=true", "+hydra.verbose=true"]
    assert distributed.child_overrides(task, hydra) == [*task, "hydra.job.chdir=true", "+hydra.verbose=true"]


def test_relaunched_rank_reads_the_same_config_directories(tmp_path):
    user_dir = tmp_path / "my_configs"
    cfg = compose_config("train", [f"hydra.searchpath=[file://{user_dir}]"])
    sources = [*cfg.hydra.runtime.config_sources, {"path": str(user_dir), "schema": "file", "provider": "command-line"}]
    flags = distributed.config_dir_flags(OmegaConf.create(sources))
    assert flags == [f"--config-path={ROOT / 'conf'}", f"--config-dir={user_dir}"]


@pytest.mark.parametrize("directory", ["/tmp/multi/seed=1,trainer.strategy=ddp", "/tmp/it's here/0"])
def test_quoted_run_dir_parses_back_to_the_same_single_string(directory):
    override = OverridesParser.create().parse_overrides([f"hydra.run.dir={distributed._quote(directory)}"])[0]
    assert not override.is_sweep_override()
    assert override.value() == directory


def test_end_job_destroys_the_group_and_forgets_rank_variables(monkeypatch, tmp_path):
    for name in distributed.RANK_VARIABLES:
        monkeypatch.setenv(name, "1")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    distributed.end_job()
    assert not dist.is_initialized()
    assert not set(distributed.RANK_VARIABLES) & set(os.environ)


def test_effective_batch_multiplies_tokens_ranks_and_accumulation():
    cfg = OmegaConf.create({"data": {"max_tokens": 2048}, "trainer": {"accumulate_grad_batches": 4},
                            "optim": {"lr": 5e-4}})
    assert distributed.effective_batch(cfg, 8) == {
        "max_tokens_per_rank": 2048, "world_size": 8, "accumulate_grad_batches": 4,
        "max_tokens_per_step": 2048 * 8 * 4, "lr": 5e-4,
    }


def test_eval_set_in_one_batch_is_split_so_every_rank_gets_some():
    lengths = [5, 3, 8, 2, 7]
    shards = [list(TokenBatchSampler(lengths, lengths, max_tokens=10_000, shuffle=False, even=False,
                                     num_replicas=2, rank=r)) for r in range(2)]
    assert all(shards)  # Lightning refuses a rank with no evaluation batch
    assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(5))


def test_eval_set_smaller_than_world_is_a_clear_error(tmp_path):
    cfg = compose_config("train", [*TINY, "data.sample_sizes={train:300,val:1,test:5}"], tmp_path)
    datamodule = build_datamodule(cfg.data, cfg.seed)
    datamodule.prepare_data()
    datamodule.trainer = type("FakeTrainer", (), {"global_rank": 0, "world_size": 2})()
    datamodule.setup("fit")
    with pytest.raises(DataError, match="the val set has 1 examples, fewer than the 2 processes"):
        datamodule.val_dataloader()


def test_slurm_launcher_starts_one_task_per_device_on_each_node():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the sweeps extra (submitit launcher)")
    cfg = compose_config("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    launcher = cfg.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher._target_.endswith("SlurmLauncher")


# ---- end to end: 2-process DDP on the CPU --------------------------------------------------------------

@pytest.mark.slow
def test_ddp_cpu_run_scores_whole_sets_shards_disjointly_and_writes_one_run(tmp_path):
    run = tmp_path / "run"
    run_train("tests.ddp_probe", [
        "trainer=ddp_cpu", *TINY, "trainer.max_steps=4", "trainer.val_check_interval=2",
        "callbacks.num_heatmaps=2", "logger=wandb", f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path}/cache",
    ], cwd=tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["effective_batch"]["world_size"] == 2
    assert metrics["effective_batch"]["max_tokens_per_step"] == 2 * metrics["effective_batch"]["max_tokens_per_rank"]

    # one run: one directory, one metrics.json, one .hydra, one wandb offline run, no outputs/ tree
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("metrics.json")] == [Path("run/metrics.json")]
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob(".hydra")] == [Path("run/.hydra")]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log", "train_rank1.log"]
    # sentencepiece trained once: rank 1 found the cache rank 0 built
    assert "training sentencepiece" in (run / "train.log").read_text()
    assert "using the binarized corpus cached" in (run / "train_rank1.log").read_text()

    # each rank trained on its own examples (4 steps stay inside epoch 0's unpadded batches)
    seen = [json.loads((run / f"train_ids.rank{r}.json").read_text()) for r in range(2)]
    ids = [{i for _, batch in rank_batches for i in batch} for rank_batches in seen]
    assert [len(b) for b in seen] == [4, 4] and all(epoch == 0 for b in seen for epoch, _ in b)
    assert ids[0] and ids[1] and not ids[0] & ids[1]

    # the metrics the 2 ranks recorded == one process scoring the whole sets with the same checkpoints
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    datamodule = build_datamodule(cfg.data, cfg.seed)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    val = trainer.validate(TranslationModule.load(run / "checkpoints" / "last.ckpt"), datamodule=datamodule,
                           verbose=False)[0]
    last_val = metrics["val_history"][-1]
    assert last_val["step"] == 4
    for key in ("loss", "bleu", "chrf"):
        assert last_val[key] == pytest.approx(val[f"val/{key}"], rel=1e-4, abs=1e-6), key
    module = TranslationModule.load(metrics["best_checkpoint"])
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    for key in ("loss", "bleu", "chrf"):
        assert metrics["test"][key] == pytest.approx(test[f"test/{key}"], rel=1e-4, abs=1e-6), key
    hypotheses = (run / "test.hyp.txt").read_text().splitlines()
    assert len(hypotheses) == 40 and hypotheses == module.translations["test"].hypotheses


@pytest.mark.slow
def test_ddp_multirun_runs_each_job_once(tmp_path):
    """Two DDP jobs in one `-m` sweep, with a trainer config from the user's own `--config-dir`: each rank 1
    runs only its own job, with the same configs, and job 2 does not inherit job 1's process group (without the
    relaunch patch and `end_job` job 2 fails with a gloo error)."""
    sweep = tmp_path / "multi"
    user_trainer = tmp_path / "my_configs" / "trainer" / "two_ranks_two_steps.yaml"  # rank 1 must find it too
    user_trainer.parent.mkdir(parents=True)
    user_trainer.write_text("defaults: [ddp_cpu]\nmax_steps: 2\n")
    proc = run_train("lightning_nmt.train", [
        "-m", f"--config-dir={user_trainer.parents[1]}", "trainer=two_ranks_two_steps", "seed=1,2", *TINY,
        "trainer.val_check_interval=2",
        "test_after_training=false", "logger=csv", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path}/cache",
    ], cwd=tmp_path)
    assert (proc.stdout + proc.stderr).count("Launching 2 jobs") == 1  # rank 1 did not start the sweep again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "multi", "my_configs"]
    assert sorted(p.relative_to(sweep).as_posix() for p in sweep.rglob("metrics.json")) == \
        ["0/metrics.json", "1/metrics.json"]
    assert sorted(p.relative_to(sweep).as_posix() for p in sweep.rglob("multirun.yaml")) == ["multirun.yaml"]
    for job, seed in (("0", 1), ("1", 2)):
        assert OmegaConf.load(sweep / job / ".hydra" / "config.yaml").seed == seed
        assert json.loads((sweep / job / "metrics.json").read_text())["steps"] == 2
        assert len(list((sweep / job).rglob("metrics.csv"))) == 1


@pytest.mark.slow
def test_bf16_mixed_precision_on_cpu_end_to_end(tmp_path):
    run = tmp_path / "run"
    run_train("lightning_nmt.train", [
        *TINY, "trainer.precision=bf16-mixed", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "test_after_training=false", "logger=none", f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path}/cache",
    ], cwd=tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and [v["step"] for v in metrics["val_history"]] == [3]
    assert 0 < metrics["val"]["loss"] < 20 and 0 <= metrics["val"]["chrf"] <= 100
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {t.dtype for t in state.values()} == {torch.float32}  # mixed precision keeps fp32 master weights


# ---- one DDP step == one step of one process with the union of the ranks' batches ----------------------

STEP_OVERRIDES = [*TINY, "model.dropout=0.0", "optim.name=sgd", "optim.lr=0.5", "scheduler.name=none",
                  "trainer.gradient_clip_val=null", "data.max_tokens=600"]
STEPS = 3
TOLERANCE = 1e-5  # max |difference| of any parameter after STEPS SGD steps (float32 summation order)


class UnionBatches:
    """Batch sampler: step k is the union of the batches ranks 0 and 1 take at step k under DDP."""

    def __init__(self, sampler: TokenBatchSampler, steps: int) -> None:
        batches = sampler.batches()
        self.steps = [[*batches[2 * k].tolist(), *batches[2 * k + 1].tolist()] for k in range(steps)]

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def _setup(tmp_path: Path) -> tuple:
    cfg = compose_config("train", STEP_OVERRIDES, tmp_path)
    datamodule = build_datamodule(cfg.data, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    L.seed_everything(0)
    return cfg, datamodule, build_module(cfg, datamodule)


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=STEPS, limit_val_batches=0, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     use_distributed_sampler=False, **kwargs)


def _flat_grad(module: TranslationModule, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True, retain_graph=True)
    return torch.cat([g.flatten() for g in grads if g is not None])


@pytest.mark.slow
def test_ddp_step_equals_one_process_step_on_the_whole_batch(tmp_path):
    """Ranks hold different token counts; with the loss normalised by the global token count the 2-rank
    DDP step equals the 1-process step on the union (here a per-rank mean would differ by far more)."""
    cfg, datamodule, module = _setup(tmp_path)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    whole = TokenBatchSampler(datamodule.dataset("train").src_lengths(), datamodule.dataset("train").tgt_lengths(),
                              cfg.data.max_tokens, seed=cfg.seed)
    union = UnionBatches(whole, STEPS)

    # the test discriminates: per-rank means averaged (the naive DDP loss) give another gradient
    train = datamodule.dataset("train")
    halves = [collate([train[i] for i in whole.batches()[r]]) for r in range(2)]
    sums = [module.token_loss(b, cfg.label_smoothing) for b in halves]
    assert sums[0][1] != sums[1][1]  # unequal token counts per rank
    naive = _flat_grad(module, (sums[0][0] / sums[0][1] + sums[1][0] / sums[1][1]) / 2)
    exact = _flat_grad(module, (sums[0][0] + sums[1][0]) / (sums[0][1] + sums[1][1]))
    assert cfg.optim.lr * (naive - exact).abs().max() > 10 * TOLERANCE  # one naive SGD step: 10x off already

    reference = build_module(cfg, datamodule)
    reference.load_state_dict(initial)
    loader = DataLoader(train, batch_sampler=union, collate_fn=collate)
    _trainer(devices=1).fit(reference, train_dataloaders=loader)

    _trainer(devices=2, strategy="ddp_spawn").fit(module, datamodule=datamodule)

    moved = max((reference.state_dict()[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 100 * TOLERANCE  # the parameters did change
    diff = max((module.state_dict()[k] - reference.state_dict()[k]).abs().max().item() for k in initial)
    assert diff < TOLERANCE


def test_a_rank_torchrun_started_writes_only_its_own_log(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert distributed.torchrun_rank_overrides(["trainer=ddp"]) == ["hydra.output_subdir=null",
                                                                     "hydra.job.name=train_rank1"]
    assert distributed.torchrun_rank_overrides(["hydra.job.name=train_rank1"]) == []  # Lightning relaunched it
    monkeypatch.setenv("RANK", "0")
    assert distributed.torchrun_rank_overrides([]) == []


@pytest.mark.slow
def test_two_nodes_under_torchrun_train_as_one_node_with_two_processes(tmp_path):
    """Two "nodes" on 127.0.0.1 (torchrun --nnodes 2, one process each, gloo) write one run directory, rank 1 only
    its log, and end with the weights and validation loss of one node running two processes."""
    args = ["trainer=ddp_cpu", *TINY, "trainer.max_steps=4", "trainer.val_check_interval=2", "logger=csv",
            "test_after_training=false", f"paths.cache_dir={tmp_path}/cache"]
    run_train("lightning_nmt.train", [*args, f"hydra.run.dir={tmp_path}/one_node"], cwd=tmp_path)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    for name in distributed.RANK_VARIABLES:
        env.pop(name, None)
    port = 29000 + os.getpid() % 1000
    nodes = []
    for node in range(2):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "lightning_nmt.train",
             *args, "trainer.devices=1", "trainer.num_nodes=2", f"hydra.run.dir={tmp_path}/two_nodes"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    run = tmp_path / "two_nodes"
    assert [list(p.iterdir()) for p in (tmp_path / "node0", tmp_path / "node1")] == [[], []]
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log", "train_rank1.log"]
    assert [p.relative_to(run).as_posix() for p in run.rglob(".hydra")] == [".hydra"]
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("two_nodes", "one_node")]
    assert [m["effective_batch"]["world_size"] for m in metrics] == [2, 2]
    assert [h["step"] for m in metrics for h in m["val_history"]] == [2, 4, 2, 4]
    losses = [[h["loss"] for h in m["val_history"]] for m in metrics]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    weights = [torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for d in ("two_nodes", "one_node")]
    for key, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][key], rtol=1e-5, atol=1e-6)
