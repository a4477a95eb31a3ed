"""LM distillation end to end on a tiny pair, and its pieces: vocabulary check, LoRA, hidden states, generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tests.builders import step_view  # noqa: E402
from tests.conftest import compose_config, run_cli  # noqa: E402

from distill.errors import DistillError  # noqa: E402
from distill.llm.models import causal_lm, check_vocabularies  # noqa: E402
from distill.llm.module import HiddenStateLoss, LMDistillationModule  # noqa: E402

TINY = {"model_type": "llama", "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}


def tiny_lm_job(tmp: Path, *extra: str) -> list[str]:
    return [
        "lm_data.max_chars=40000",
        "lm_data.vocab_size=280",
        "lm_data.seq_len=32",
        "lm_data.batch_size=16",
        "lm_teacher.model.hidden_size=32",
        "lm_teacher.model.num_hidden_layers=2",
        "lm_teacher.model.intermediate_size=64",
        "lm_teacher.model.num_attention_heads=2",
        "lm_teacher.model.num_key_value_heads=2",
        "lm_teacher.fit.epochs=1",
        "lm_teacher.fit.batch_size=16",
        "lm_student.model.hidden_size=16",
        "lm_student.model.num_hidden_layers=1",
        "lm_student.model.intermediate_size=32",
        "lm_student.model.num_attention_heads=2",
        "lm_student.model.num_key_value_heads=2",
        "lm_student.fit.epochs=2",
        "lm_student.fit.batch_size=16",
        "lm_student.fit.train_fraction=0.5",
        "samples.count=2",
        "samples.max_new_tokens=8",
        "report.latency_repeats=2",
        f"paths.root_dir={tmp}",
        f"paths.output_dir={tmp}/run",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]


@pytest.fixture(scope="module")
def lm_report(tmp_path_factory) -> tuple[Path, dict]:
    from distill.spine import run

    tmp = tmp_path_factory.mktemp("lm")
    overrides = tiny_lm_job(
        tmp, "lm_distill=[forward_kl,hidden]", "lm_distill.hidden.layer_map=[[1,1],[1,2]]",
        "on_policy_fraction=0.3", "sequence_kd_fraction=0.3", "compress=[onnx,int8]",
    )  # fmt: skip
    return tmp, run(compose_config(overrides, name="lm"))


@pytest.mark.slow
def test_a_tiny_pair_is_distilled_and_measured(lm_report) -> None:
    tmp, report = lm_report
    rows = {r["model"]: r for r in report["models"]}
    assert list(rows) == ["teacher:tiny_llama", "baseline", "student", "compress:onnx", "compress:int8"]
    for name, row in rows.items():
        assert 1.0 < row["perplexity"] < 280 * 2, name  # finite, and no worse than about uniform over the vocabulary
        assert row["tokens"] > 0
        assert row["rare_perplexity"] > row["perplexity"], name  # the rarest tenth of the tokens is the hardest
    assert 0.0 <= rows["student"]["agreement"] <= 1.0
    assert rows["student"]["parameters"] < rows["teacher:tiny_llama"]["parameters"] / 3
    # ONNX: the same perplexity as PyTorch; int8: smaller on disk
    assert rows["compress:onnx"]["perplexity"] == pytest.approx(rows["student"]["perplexity"], rel=1e-3)
    assert rows["compress:int8"]["bytes"] < rows["compress:onnx"]["bytes"]
    assert report["generated_batches"]["on_policy"] > 0 and report["generated_batches"]["sequence_kd"] > 0
    # The students learn from half the training sequences and keep their best validation epoch.
    dm_tokens = report["student_train_tokens"]
    assert 0 < dm_tokens and report["distill_tokens_per_second"] * report["distill_seconds"] == pytest.approx(
        2 * dm_tokens
    )
    assert report["student_epoch_kept"] in (0, 1)
    assert set(report["samples"]) == {"teacher:tiny_llama", "baseline", "student"}
    assert (tmp / "run" / "samples.md").read_text().startswith("# Sampled continuations")
    assert json.loads((tmp / "run" / "report.json").read_text())["student_val_perplexity"] > 1
    logged = (tmp / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    for column in ("student/train/forward_kl", "student/train/hidden", "student/val/ppl", "student/val/agreement"):
        assert column in logged


@pytest.mark.slow
def test_the_student_is_written_as_a_hugging_face_folder(lm_report) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, _ = lm_report
    folder = tmp / "run" / "student_hf"
    loaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    saved = torch.load(tmp / "run" / "student.ckpt", weights_only=True)["state_dict"]
    weights = loaded.state_dict()
    assert set(saved) == set(weights)
    for name, tensor in saved.items():
        assert torch.equal(weights[name], tensor), name  # the distilled student's weights, as measured
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert len(tokenizer) == loaded.config.vocab_size
    assert tokenizer.decode(tokenizer("def f(x):\n    return x")["input_ids"]) == "def f(x):\n    return x"


@pytest.mark.slow
def test_vocabulary_mismatch_is_refused_before_training(tmp_path: Path) -> None:
    model = causal_lm(500, hidden_size=16, num_hidden_layers=1, intermediate_size=32, **TINY)
    model.save_pretrained(tmp_path / "teacher")
    args = tiny_lm_job(tmp_path, "lm_teacher=pretrained", f"lm_teacher.model.pretrained={tmp_path}/teacher",
                       "lm_teacher.model.torch_dtype=float32")  # fmt: skip
    args = [a for a in args if not a.startswith("lm_teacher.model.") or "pretrained" in a or "dtype" in a]
    args = [a for a in args if not a.startswith("lm_teacher.fit")]
    result = run_cli(args, tmp_path, module="distill.llm.train")
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: teacher and student vocabularies differ (student 280, teacher 'pretrained' 500)")
    assert not (tmp_path / "logs" / "cache").exists() or not list((tmp_path / "logs" / "cache").glob("lm-*"))


def test_check_vocabularies_and_pretrained_errors(tmp_path: Path) -> None:
    a = causal_lm(100, hidden_size=16, num_hidden_layers=1, intermediate_size=32, **TINY)
    b = causal_lm(120, hidden_size=16, num_hidden_layers=1, intermediate_size=32, **TINY)
    check_vocabularies(a, {"t": causal_lm(100, hidden_size=32, num_hidden_layers=1, intermediate_size=32, **TINY)}, 100)
    with pytest.raises(DistillError, match="vocabularies differ"):
        check_vocabularies(a, {"t": b}, 100)
    with pytest.raises(DistillError, match="the models predict 100 tokens but the tokenizer has 120"):
        check_vocabularies(a, {}, 120)
    with pytest.raises(DistillError, match="pretrained=.*nothing: folder not found"):
        causal_lm(100, pretrained=str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="cannot load the pretrained model"):
        causal_lm(100, pretrained=str(tmp_path / "empty"))


def test_lora_student_trains_only_its_adapters() -> None:
    model = causal_lm(100, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                      lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, **TINY)  # fmt: skip
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # A and B, for q and v, in both layers
    ids = torch.randint(0, 100, (2, 8))
    assert model(input_ids=ids).logits.shape == (2, 8, 100)


def test_hidden_state_loss_projects_and_masks() -> None:
    term = HiddenStateLoss([[1, 2]], weight=1.0)
    s = {"hidden.1": torch.randn(2, 5, 8)}
    t = {"t": {"hidden.2": torch.randn(2, 5, 12)}}
    mask = torch.ones(2, 5)
    view = step_view(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), teachers={}, student_features=s, teacher_features=t,
                     targets=torch.zeros(2, 4), index=None, attention_mask=mask)  # fmt: skip
    term.build(view)
    assert isinstance(term.projections[0], torch.nn.Linear) and term.projections[0].weight.shape == (12, 8)
    value = term(view)
    projected = term.projections[0](s["hidden.1"])
    assert value.item() == pytest.approx((projected - t["t"]["hidden.2"]).pow(2).mean().item(), rel=1e-5)
    # masked positions do not count
    mask2 = mask.clone()
    mask2[:, -1] = 0
    t2 = {"t": {"hidden.2": t["t"]["hidden.2"].clone()}}
    t2["t"]["hidden.2"][:, -1] += 100.0
    view2 = step_view(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), teachers={}, student_features=s, teacher_features=t2,
                      targets=torch.zeros(2, 4), index=None, attention_mask=mask2)  # fmt: skip
    expected = (projected[:, :-1] - t["t"]["hidden.2"][:, :-1]).pow(2).mean().item()
    assert term(view2).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(DistillError, match="layer_map"):
        HiddenStateLoss([[1]])


def test_generated_batches_keep_the_prompt_and_mask_it() -> None:
    student = causal_lm(50, hidden_size=16, num_hidden_layers=1, intermediate_size=32, **TINY)
    module = LMDistillationModule(student, {}, {}, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), prompt_len=4)
    batch = {"input_ids": torch.randint(1, 50, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    out = module.generate_batch(student, batch)
    assert out["input_ids"].shape == (3, 12)
    assert torch.equal(out["input_ids"][:, :4], batch["input_ids"][:, :4])
    assert (out["labels"][:, :4] == -100).all() and torch.equal(out["labels"][:, 4:], out["input_ids"][:, 4:])
    with pytest.raises(DistillError, match="need a teacher"):
        LMDistillationModule(student, {}, {}, optimizer=lambda p: None, sequence_kd_fraction=0.5)
    with pytest.raises(DistillError, match="at most 1"):
        LMDistillationModule(student, {"t": student}, {}, optimizer=lambda p: None, on_policy_fraction=0.6,
                             sequence_kd_fraction=0.6)  # fmt: skip


def test_restore_best_puts_back_the_lowest_validation_perplexity_epoch() -> None:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from distill.llm.data import SequenceBatches

    g = torch.Generator().manual_seed(0)
    # Training: one sequence repeated (memorised quickly); validation: random tokens, which that memorising makes worse.
    train_ids = torch.randint(0, 40, (1, 16), generator=g).repeat(8, 1)
    val_ids = torch.randint(0, 40, (8, 16), generator=g)

    def split(ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}

    class Snapshots(Callback):
        def __init__(self) -> None:
            self.weights: list[dict[str, torch.Tensor]] = []
            self.ppl: list[float] = []

        def on_train_epoch_end(self, trainer, module) -> None:  # after the epoch's validation
            self.weights.append({n: p.detach().clone() for n, p in module.student.named_parameters()})
            self.ppl.append(float(trainer.callback_metrics["student/val/ppl"]))

    from distill.callbacks import BestWeights, kept_epoch

    results = {}
    for restore in (True, False):
        torch.manual_seed(0)
        student = causal_lm(40, hidden_size=16, num_hidden_layers=1, intermediate_size=32, **TINY)
        module = LMDistillationModule(student, {}, {}, optimizer=lambda p: torch.optim.Adam(p, lr=0.02))
        snaps = Snapshots()
        keep = [BestWeights("student/val/ppl", "min", "student")] if restore else []
        trainer = L.Trainer(accelerator="cpu", max_epochs=6, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[snaps, *keep])  # fmt: skip
        trainer.fit(module, SequenceBatches(split(train_ids), 4, shuffle=True), SequenceBatches(split(val_ids), 8))
        results[restore] = (module, snaps, trainer)
    module, snaps, trainer = results[True]
    best = min(range(len(snaps.ppl)), key=snaps.ppl.__getitem__)
    assert best < len(snaps.ppl) - 1 and snaps.ppl[-1] > snaps.ppl[best]  # the test needs a worse last epoch
    (keeper,) = [c for c in trainer.callbacks if isinstance(c, BestWeights)]
    assert keeper.best_epoch == best == kept_epoch(trainer)
    assert keeper.best["value"] == pytest.approx(snaps.ppl[best], rel=1e-5)
    for name, value in module.student.named_parameters():
        assert torch.equal(value, snaps.weights[best][name]), name
    # Without it, the last epoch's weights stay; with it, the best weights travel in checkpoints.
    module_last, snaps_last, trainer_last = results[False]
    assert snaps_last.ppl == pytest.approx(snaps.ppl) and kept_epoch(trainer_last) == 5
    assert all(torch.equal(p, snaps_last.weights[-1][n]) for n, p in module_last.student.named_parameters())
    checkpoint = trainer._checkpoint_connector.dump_checkpoint()
    fresh = BestWeights("student/val/ppl", "min")
    fresh.load_state_dict(checkpoint["callbacks"][keeper.state_key])
    assert fresh.best_epoch == best and set(fresh.best["weights"]) == set(snaps.weights[best])


def test_token_stats_and_teacher_choice_by_hand() -> None:
    import math
    from types import SimpleNamespace

    from distill.llm.module import teacher_choice, token_stats

    student = torch.tensor([[[2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 0]]])
    labels = torch.tensor([[5, 0, -100]])  # position 0 predicts token 0; position 1 is masked
    t1 = SimpleNamespace(logits=torch.tensor([[[0.0, 4, 0, 0], [0, 0, 9, 0], [0, 0, 0, 0]]]))
    t2 = SimpleNamespace(logits=torch.tensor([[[3.0, 0, 0, 0], [0, 0, 9, 0], [0, 0, 0, 0]]]))
    # mean logits at position 0: [1.5, 2, 0, 0] -> token 1, though t2 alone picks token 0 as the student does
    assert teacher_choice({"a": t1, "b": t2}).tolist() == [[1, 2]]
    assert teacher_choice({"b": t2}).tolist() == [[0, 2]]
    nll = -(2.0 - math.log(math.exp(2.0) + 3))
    stats = token_stats(student, labels, teacher_choice({"a": t1, "b": t2}))
    assert stats["tokens"] == 1.0 and stats["nll"] == pytest.approx(nll, rel=1e-6)
    assert stats["agree"] == 0.0  # the masked position agrees, but does not count
    assert token_stats(student, labels, teacher_choice({"b": t2}))["agree"] == 1.0
    assert token_stats(student, labels)["agree"] == 0.0


def test_lm_cache_keys_follow_the_recipe_and_trainer_not_file_locations(tmp_path: Path) -> None:
    from distill.assembly import fit_payload
    from distill.model_cache import cache_key

    def key(*overrides: str) -> str:
        cfg = compose_config([f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run", *overrides], name="lm")
        t = cfg.lm_teacher
        return cache_key(fit_payload(cfg, "lm-teacher", t.model, t.fit, cfg.lm_data, vocab_size=1024))

    base = key()
    assert key(f"lm_data.cache_dir={tmp_path}/elsewhere") == base
    assert key("lm_data.eval_batch_size=7") == base
    assert key("trainer.precision=bf16-mixed") != base
    assert key("lm_data.max_chars=1000") != base
    assert key("lm_teacher.fit.epochs=5") != base
    assert key("seed=3") != base
