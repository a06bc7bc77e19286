"""Checkpoint averaging: the mean of the weights, refusing different models, choosing the last / best k of a
run, the lnmt-average CLI, and `average_checkpoints=k` of lnmt-train end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_nmt.average import average_best, average_checkpoints, check_average_option, main
from lightning_nmt.cli import to_dict
from lightning_nmt.data.sample import generate_pairs
from lightning_nmt.data.tokenizer import Tokenizer
from lightning_nmt.errors import CheckpointError, ConfigError
from lightning_nmt.module import TranslationModule
from lightning_nmt.translate import translate_lines
from tests.conftest import compose_config, compose_many
from tests.test_app import TINY, run_cli

SMALL_MODEL = ["model.embedding_dim=16", "model.encoder_hidden=16", "model.decoder_hidden=32"]


def tiny_module(overrides: list[str], tmp_path: Path, seed: int = 0) -> TranslationModule:
    """An untrained attention model with a real (small) sentencepiece tokenizer of the embedded corpus."""
    pairs = generate_pairs(300, seed=seed)
    tokenizer = Tokenizer.train([en for en, _ in pairs], [fr for _, fr in pairs], vocab_size=300)
    cfg = compose_config("train", overrides, tmp_path)
    return TranslationModule(
        model=to_dict(cfg.model), src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
        optim=to_dict(cfg.optim), scheduler=to_dict(cfg.scheduler), decoding=to_dict(cfg.decoding),
        data=to_dict(cfg.data), tokenizer=tokenizer,
    )


@pytest.fixture(scope="module")
def module(tmp_path_factory) -> TranslationModule:
    return tiny_module(SMALL_MODEL, tmp_path_factory.mktemp("module"))


def write_checkpoint(path: Path, module: TranslationModule, step: int, seed: int, bleu: float | None = None,
                     extra: dict[str, torch.Tensor] | None = None) -> Path:
    """A checkpoint as lnmt-train writes it (optimizer state included), with the module's weights perturbed
    by `seed`; `bleu`: the val/bleu recorded in its ModelCheckpoint state."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in module.state_dict().items()}
    callbacks: dict[str, Any] = {}
    if bleu is not None:
        callbacks["ModelCheckpoint{'monitor': 'val/bleu', 'mode': 'max'}"] = {
            "monitor": "val/bleu", "best_k_models": {f"/elsewhere/checkpoints/{path.name}": torch.tensor(bleu)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": step, "pytorch-lightning_version": "2.6.6",
                "state_dict": {**state, **(extra or {})}, "hyper_parameters": dict(module.hparams),
                "tokenizer": module.tokenizer.to_state(), "callbacks": callbacks,
                "optimizer_states": [{"state": {}, "param_groups": []}]}, path)
    return path


def test_average_is_the_elementwise_mean(module: TranslationModule, tmp_path: Path) -> None:
    paths = [write_checkpoint(tmp_path / f"c{i}.ckpt", module, step=2 * i, seed=i,
                              extra={"counter": torch.tensor([i]), "mask": torch.tensor([i % 2 == 0])})
             for i in range(1, 4)]
    output = average_checkpoints(paths, tmp_path / "out" / "averaged.ckpt")
    inputs = [torch.load(p, weights_only=True) for p in paths]
    averaged = torch.load(output, weights_only=True)
    for key in module.state_dict():
        expected = sum(c["state_dict"][key].double() for c in inputs) / 3
        assert averaged["state_dict"][key].dtype == torch.float32
        assert torch.allclose(averaged["state_dict"][key].double(), expected, atol=1e-7), key
        assert not torch.equal(averaged["state_dict"][key], inputs[-1]["state_dict"][key])
    assert averaged["state_dict"]["counter"].tolist() == [3] and averaged["state_dict"]["mask"].tolist() == [False]
    assert averaged["averaged_from"] == [str(p) for p in paths]
    assert averaged["global_step"] == 6 and averaged["hyper_parameters"] == inputs[-1]["hyper_parameters"]
    assert averaged["tokenizer"] == inputs[-1]["tokenizer"]
    assert "optimizer_states" not in averaged and "callbacks" not in averaged
    assert sorted(p.name for p in output.parent.iterdir()) == ["averaged.ckpt"]  # no temporary file left


def test_averaged_checkpoint_loads_and_translates(module: TranslationModule, tmp_path: Path) -> None:
    paths = [write_checkpoint(tmp_path / f"c{i}.ckpt", module, step=i, seed=i) for i in range(2)]
    output = average_checkpoints(paths, tmp_path / "averaged.ckpt")
    loaded = TranslationModule.load(output)
    expected = (torch.load(paths[0], weights_only=True)["state_dict"]["model.output.weight"]
                + torch.load(paths[1], weights_only=True)["state_dict"]["model.output.weight"]) / 2
    assert torch.allclose(loaded.model.output.weight, expected, atol=1e-7)
    lines = ["the small cat sees the dog .", "", "we have two houses ."]
    results = translate_lines(loaded, lines, beam_size=2)
    assert len(results) == 3 and results[1] == [("", 0.0)] and all(isinstance(r[0][0], str) for r in results)


def test_bfloat16_output_is_the_rounded_mean_and_loads_as_float32(module: TranslationModule, tmp_path: Path) -> None:
    """`lnmt-average --dtype bfloat16`: half the file; the model loads in float32 with the rounded weights."""
    paths = [write_checkpoint(tmp_path / f"c{i}.ckpt", module, step=i, seed=i) for i in range(2)]
    full = average_checkpoints(paths, tmp_path / "full.ckpt")
    main([*map(str, paths), "--output", str(tmp_path / "half.ckpt"), "--dtype", "bfloat16"])
    half = torch.load(tmp_path / "half.ckpt", weights_only=True)["state_dict"]
    exact = torch.load(full, weights_only=True)["state_dict"]
    assert all(half[k].dtype == torch.bfloat16 for k in exact if exact[k].is_floating_point())
    assert all(torch.equal(half[k], exact[k].to(torch.bfloat16)) for k in exact)
    assert (tmp_path / "half.ckpt").stat().st_size < 0.6 * full.stat().st_size
    loaded = TranslationModule.load(tmp_path / "half.ckpt")
    assert loaded.model.output.weight.dtype == torch.float32
    assert torch.equal(loaded.model.output.weight, exact["model.output.weight"].to(torch.bfloat16).float())
    assert len(translate_lines(loaded, ["the small cat sees the dog ."], beam_size=2)) == 1


@pytest.mark.parametrize("other, message", [
    ([*SMALL_MODEL[:2], "model.decoder_hidden=48"], "model.decoder_hidden 32 vs 48"),
    (SMALL_MODEL, "their tokenizers differ"),  # a tokenizer trained on other sentences (seed 7), same sizes
])
def test_different_models_are_refused(module: TranslationModule, tmp_path: Path, other: list[str],
                                      message: str) -> None:
    a = write_checkpoint(tmp_path / "a.ckpt", module, step=1, seed=1)
    b = write_checkpoint(tmp_path / "b.ckpt", tiny_module(other, tmp_path, seed=7), step=2, seed=2)
    with pytest.raises(CheckpointError, match=message) as err:
        average_checkpoints([a, b], tmp_path / "averaged.ckpt")
    assert len(str(err.value).splitlines()) == 1 and str(a) in str(err.value) and str(b) in str(err.value)
    assert not (tmp_path / "averaged.ckpt").exists()


@pytest.fixture
def run_dir(module: TranslationModule, tmp_path: Path) -> Path:
    """A run's checkpoints: three best ones, last.ckpt (the same step as the newest best one), and an earlier
    average (of a later step). The file names round to 2 decimals; the callback states of steps 6 and 8 tell
    them apart."""
    ckpts = tmp_path / "run" / "checkpoints"
    write_checkpoint(ckpts / "best-step000002-bleu9.00.ckpt", module, step=2, seed=2)  # no state: the name
    write_checkpoint(ckpts / "best-step000006-bleu8.00.ckpt", module, step=6, seed=6, bleu=8.004)
    write_checkpoint(ckpts / "best-step000008-bleu8.00.ckpt", module, step=8, seed=8, bleu=7.996)
    write_checkpoint(ckpts / "last.ckpt", module, step=8, seed=8)
    later = write_checkpoint(tmp_path / "elsewhere" / "step10.ckpt", module, step=10, seed=10)
    average_checkpoints([later], ckpts / "older-average.ckpt")  # never a candidate
    return tmp_path / "run"


def averaged_from(path: Path) -> list[str]:
    return [Path(p).name for p in torch.load(path, weights_only=True)["averaged_from"]]


@pytest.mark.parametrize("args, expected", [
    (["--last", "2"], ["best-step000006-bleu8.00.ckpt", "best-step000008-bleu8.00.ckpt"]),  # last.ckpt = step 8
    (["--last", "3"], ["best-step000002-bleu9.00.ckpt", "best-step000006-bleu8.00.ckpt",
                       "best-step000008-bleu8.00.ckpt"]),
    (["--best", "2"], ["best-step000002-bleu9.00.ckpt", "best-step000006-bleu8.00.ckpt"]),  # 8.004 > 7.996
    (["--best", "1"], ["best-step000002-bleu9.00.ckpt"]),
])
def test_cli_selects_last_or_best(run_dir: Path, args: list[str], expected: list[str], capsys) -> None:
    main([str(run_dir), *args])
    output = run_dir / "checkpoints" / "averaged.ckpt"
    assert capsys.readouterr().out == f"{output}\n"
    assert averaged_from(output) == expected
    main([str(run_dir), *args])  # the previous output is not a candidate: same choice again
    assert averaged_from(output) == expected


def test_cli_files_in_given_order_to_output(run_dir: Path, tmp_path: Path) -> None:
    ckpts = run_dir / "checkpoints"
    files = [ckpts / "best-step000008-bleu8.00.ckpt", ckpts / "best-step000002-bleu9.00.ckpt"]
    main([*map(str, files), "--output", str(tmp_path / "mine.ckpt")])
    assert averaged_from(tmp_path / "mine.ckpt") == [f.name for f in files]
    assert torch.load(tmp_path / "mine.ckpt", weights_only=True)["global_step"] == 2  # the last one given


@pytest.mark.parametrize("args, message", [
    (["--last", "4"], "error: --last 4: there are 3 checkpoints of distinct steps"),
    (["--best", "4"], "error: --best 4: there are 3 checkpoints with a validation BLEU"),
    (["--best", "0"], "error: --best 0: there are 3 checkpoints with a validation BLEU (K: 1 to 3;"),
    ([], "error: a directory needs --last K or --best K"),
    (["--last", "2", "--output", "{run}/checkpoints/last.ckpt"], "error: {run}/checkpoints/last.ckpt is a training "
                                                                 "checkpoint, not an average"),
])
def test_cli_errors_are_one_line(run_dir: Path, args: list[str], message: str, capsys) -> None:
    last = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main([str(run_dir), *(a.format(run=run_dir) for a in args)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(message.format(run=run_dir)) and len(err.strip().splitlines()) == 1
    assert not (run_dir / "checkpoints" / "averaged.ckpt").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == last


def test_cli_empty_directory_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "empty"), "--last", "1"])
    assert exc.value.code == 2 and capsys.readouterr().err == f"error: no checkpoints in {tmp_path / 'empty'}\n"


def test_cli_mismatch_exits_2_without_traceback(module: TranslationModule, tmp_path: Path) -> None:
    other = tiny_module([*SMALL_MODEL[:2], "model.decoder_hidden=48"], tmp_path)
    a = write_checkpoint(tmp_path / "a.ckpt", module, step=1, seed=1)
    b = write_checkpoint(tmp_path / "b.ckpt", other, step=2, seed=2)
    proc = subprocess.run([sys.executable, "-m", "lightning_nmt.average", str(a), str(b)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: cannot average") and len(proc.stderr.strip().splitlines()) == 1


def test_average_best_ranks_by_the_monitor(module: TranslationModule, tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    scores = {2: 3.0, 4: 1.0, 6: 2.0}  # val/loss: lower is better
    callback = ModelCheckpoint(dirpath=str(ckpts), monitor="val/loss", mode="min", save_top_k=3)
    callback.best_k_models = {str(write_checkpoint(ckpts / f"best-step{s:06d}.ckpt", module, step=s, seed=s)):
                              torch.tensor(v) for s, v in scores.items()}
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda: None))
    result = average_best(trainer, callback, 2)
    assert result == {"averaged_checkpoint": str(ckpts / "averaged.ckpt"),
                      "averaged_from": [str(ckpts / "best-step000004.ckpt"), str(ckpts / "best-step000006.ckpt")]}
    assert averaged_from(ckpts / "averaged.ckpt") == ["best-step000004.ckpt", "best-step000006.ckpt"]
    assert average_best(trainer, callback, 0) == {}


def test_average_option_needs_enough_kept_checkpoints(tmp_path: Path) -> None:
    enough, all_kept, too_few = compose_many("train", [
        ["average_checkpoints=2", "callbacks.model_checkpoint.save_top_k=2"],
        ["average_checkpoints=5", "callbacks.model_checkpoint.save_top_k=-1"],
        ["average_checkpoints=3"],
    ], tmp_path)
    check_average_option(enough)
    check_average_option(all_kept)
    with pytest.raises(ConfigError, match="average_checkpoints=3 needs .*save_top_k \\(= 1"):
        check_average_option(too_few)


@pytest.mark.slow
def test_train_tests_the_average_and_tools_take_it(tmp_path: Path) -> None:
    proc = run_cli("lightning_nmt.train", [*TINY, "average_checkpoints=2", "callbacks.model_checkpoint.save_top_k=2",
                                           f"hydra.run.dir={tmp_path}/run", f"paths.cache_dir={tmp_path}/cache"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    averaged = tmp_path / "run" / "checkpoints" / "averaged.ckpt"
    assert metrics["averaged_checkpoint"] == str(averaged)
    assert [Path(p).name for p in metrics["averaged_from"]] == [
        f"best-step{s:06d}-bleu{b['bleu']:.2f}.ckpt" for s, b in ((6, metrics["val_history"][0]),
                                                                    (12, metrics["val_history"][1]))]
    assert averaged_from(averaged) == [Path(p).name for p in metrics["averaged_from"]]
    assert 0.0 <= metrics["test"]["bleu_tok_lc"] <= 100.0 and "bleu" in metrics["test"]
    out = tmp_path / "eval.json"
    proc = run_cli("lightning_nmt.eval", [f"ckpt_path={averaged}", "beam_size=1", f"output={out}",
                                          f"hydra.run.dir={tmp_path}/ev"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())["results"]["test"]
    assert result["sentences"] == 40 and result["signature_tok_lc"].startswith("nrefs:1|case:lc|eff:no|tok:none|")
    assert result["signature_tok_lc"].endswith("|moses:fr")
    assert all({"bleu", "bleu_tok_lc"} <= set(group) for group in result["by_source_length"])
    proc = run_cli("lightning_nmt.translate", [f"ckpt_path={averaged}", "input=-", "output=-"],
                   stdin="the cat sees the dog .\n\nwe have two small houses .\n")
    assert proc.returncode == 0 and len(proc.stdout.split("\n")) == 4  # 3 lines, newline-terminated


def test_a_key_a_checkpoint_predates_is_compared_at_its_default(tmp_path: Path) -> None:
    """A run resumed on newer code keeps checkpoints with and without a newer model key (`norm_first`): at the
    key's default they average; a checkpoint with another value is refused."""
    module = tiny_module(["model=transformer", "model.d_model=16", "model.ffn_dim=32"], tmp_path)
    old = write_checkpoint(tmp_path / "old.ckpt", module, step=1, seed=1)
    saved = torch.load(old, weights_only=False)
    del saved["hyper_parameters"]["model"]["norm_first"]
    torch.save(saved, old)
    new = write_checkpoint(tmp_path / "new.ckpt", module, step=2, seed=2)
    assert module.hparams["model"]["norm_first"] is True
    averaged = torch.load(average_checkpoints([old, new], tmp_path / "averaged.ckpt"), weights_only=False)
    assert averaged["averaged_from"] == [str(old), str(new)]
    module.hparams["model"]["norm_first"] = False
    post_norm = write_checkpoint(tmp_path / "post.ckpt", module, step=3, seed=3)
    with pytest.raises(CheckpointError, match="model.norm_first True vs False"):
        average_checkpoints([old, post_norm], tmp_path / "refused.ckpt")
