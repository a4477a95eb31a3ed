"""The LM job, in order: text data → teacher (loaded, or trained and cached) → student trained alone
(cached) → distilled student → report (perplexity, agreement, size, speed, sample generations)."""

from __future__ import annotations

import copy
import io
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from distill.checkpoints import save_model
from distill.compress.deploy import onnx_latency_ms, onnx_run, onnx_session
from distill.errors import DistillError
from distill.fingerprint import folder_fingerprint
from distill.llm.models import (
    LogitsOnly,
    check_positions,
    check_precision,
    check_pretrained_source,
    check_vocabularies,
    float32_trainable,
    trained_parameters,
)
from distill.llm.module import LMDistillationModule, teacher_choice, token_stats
from distill.measure import count_parameters, latency_ms
from distill.model_cache import cached_model, source_of
from distill.pipeline import (
    build,
    build_group,
    build_loggers,
    build_stages,
    fit_payload,
    fit_stage,
    make_trainer,
    set_resume_dir,
)
from distill.report import publish_report
from distill.resume import mark_continued
from distill.runtime import prepare_run
from distill.validate import check_lm_config

log = logging.getLogger(__name__)


def build_lm(node: DictConfig, what: str, vocab_size: int, seed: int, trained: bool = True) -> nn.Module:
    """The model of `node`; one that will train (`trained`) keeps its trainable weights in float32."""
    torch.manual_seed(seed)
    model = build(node, what, vocab_size=vocab_size)
    if not isinstance(model, nn.Module):
        raise DistillError(f"{what}: _target_ {node.get('_target_')} did not give an nn.Module")
    return float32_trainable(model) if trained else model


def check_pretrained_models(cfg: DictConfig) -> None:
    """Every pretrained model the config names can be found: checked before any text is read."""
    for group in ("lm_teacher", "lm_student"):
        node = (cfg.get(group) or {}).get("model") or {}
        if node.get("pretrained"):
            check_pretrained_source(
                str(node.pretrained), bool(node.get("local_files_only", True)), f"{group}.model.pretrained"
            )


def model_files(node: DictConfig) -> dict[str, str]:
    """For a model loaded from a local folder, a fingerprint of the folder's files (for cache keys)."""
    pretrained = node.get("pretrained")
    if pretrained and Path(str(pretrained)).expanduser().is_dir():
        return {"model_files": folder_fingerprint(Path(str(pretrained)).expanduser())}
    return {}


def lm_module(cfg: DictConfig, student: nn.Module, teachers: dict[str, nn.Module], fit: DictConfig, dm: Any,
              terms: dict[str, Any], lm_weight: float, prefix: str) -> LMDistillationModule:  # fmt: skip
    gen = cfg.generation
    return LMDistillationModule(
        student, teachers, terms, optimizer=build(fit.optimizer, f"{prefix} optimizer"), lm_weight=lm_weight,
        scheduler=build(fit.scheduler, f"{prefix} scheduler") if fit.get("scheduler") else None,
        on_policy_fraction=cfg.on_policy_fraction if teachers else 0.0,
        sequence_kd_fraction=cfg.sequence_kd_fraction if teachers else 0.0,
        prompt_len=gen.prompt_len, generation_temperature=gen.temperature, seed=cfg.seed, prefix=prefix,
        pad_token_id=dm.pad_token_id, eos_token_id=dm.eos_token_id, restore_best=fit.get("restore_best", False),
    )  # fmt: skip


def train_lm(cfg: DictConfig, module: LMDistillationModule, fit: DictConfig, dm: Any, loggers: list[Any], stage: str):
    loader = dm.train_dataloader(fit.get("batch_size"), fit.get("train_fraction"))
    module.probe(next(iter(loader)))
    trainer = make_trainer(cfg, stage, fit.epochs, loggers)
    fit_stage(cfg, trainer, module, loader, dm.val_dataloader())
    return trainer


@torch.no_grad()
def teacher_choices(teachers: dict[str, nn.Module], loader: Any) -> list[torch.Tensor] | None:
    """The teachers' next-token choice at every position of every batch of `loader`: computed once, then
    compared with each model's."""
    if not teachers:
        return None
    choices = []
    for batch in loader:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        choices.append(teacher_choice({n: t.eval()(**inputs) for n, t in teachers.items()}))
    return choices


@torch.no_grad()
def evaluate(model: Any, loader: Any, choices: list[torch.Tensor] | None = None) -> dict[str, float]:
    """Perplexity (exp of the mean next-token NLL over labelled tokens) and, given the teachers' `choices`
    for the same loader, agreement with them.

    `model` is a causal LM or an ONNX Runtime session of `LogitsOnly` (input_ids -> logits).
    """
    totals = {"nll": 0.0, "tokens": 0.0, "agree": 0.0}
    for i, batch in enumerate(loader):
        if isinstance(model, nn.Module):
            model.eval()
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        else:
            logits = torch.from_numpy(onnx_run(model, batch["input_ids"]))
        for k, v in token_stats(logits, batch["labels"], choices[i] if choices else None).items():
            totals[k] += v
    tokens = max(totals["tokens"], 1.0)
    metrics = {"perplexity": float(torch.tensor(totals["nll"] / tokens).exp()), "tokens": int(totals["tokens"])}
    if choices:
        metrics["agreement"] = totals["agree"] / tokens
    return metrics


def model_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


@torch.no_grad()
def samples(model: nn.Module, dm: Any, cfg: DictConfig) -> list[dict[str, str]]:
    """A few sampled continuations of test prompts: what the report shows of each model's text."""
    n, prompt_len, new = cfg.samples.count, cfg.samples.prompt_len, cfg.samples.max_new_tokens
    if not n:
        return []
    ids, mask = dm.prompts("test", n, prompt_len)
    torch.manual_seed(cfg.seed)
    out = model.eval().generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=True, top_k=cfg.samples.top_k,
        temperature=cfg.samples.temperature, pad_token_id=dm.pad_token_id, eos_token_id=dm.eos_token_id,
        use_cache=True,
    )  # fmt: skip
    return [{"prompt": dm.decode(ids[i]), "continuation": dm.decode(out[i, ids.shape[1] :])} for i in range(len(ids))]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the LM job; returns the report."""
    out = Path(cfg.paths.output_dir)
    check_lm_config(cfg)  # every recipe, data and generation field, before any text is read
    prepare_run(cfg.seed, out / ".hydra")

    # 1. Data, models and terms; everything checkable is checked before training.
    check_precision(cfg.trainer.get("precision"))
    check_pretrained_models(cfg)
    dm = build(cfg.lm_data, "lm_data")
    dm.prepare_data()
    dm.setup("fit")
    log.info("Text: %s", dm.describe())
    tcfg = cfg.get("lm_teacher")
    teachers = (
        {tcfg.name: build_lm(tcfg.model, "teacher", dm.vocab_size, cfg.seed, trained=bool(tcfg.get("fit")))}
        if tcfg else {}
    )  # fmt: skip
    student = build_lm(cfg.lm_student.model, "student", dm.vocab_size, cfg.seed)
    # What trains in this run, counted before teachers are frozen: a teacher used as is trains nothing.
    trained = {f"teacher:{n}": trained_parameters(t) if tcfg.get("fit") else 0 for n, t in teachers.items()}
    trained["student"] = trained_parameters(student)
    check_vocabularies(student, teachers, dm.vocab_size)
    lengths = {f"lm_data.seq_len={dm.seq_len}": dm.seq_len}
    if cfg.samples.count:
        prompt = min(cfg.samples.prompt_len or dm.seq_len, dm.seq_len)
        new = cfg.samples.max_new_tokens
        lengths[f"samples.prompt_len + samples.max_new_tokens = {prompt} + {new}"] = prompt + new
    check_positions({"student": student, **({"teacher": next(iter(teachers.values()))} if teachers else {})}, lengths)
    data_fingerprint = dm.fingerprint()
    terms = build_group(cfg, "lm_distill", "LM loss term", lambda t: hasattr(t, "weight"), "is not a LossTerm")
    stages = build_stages(cfg)
    dry = lm_module(cfg, copy.deepcopy(student), copy.deepcopy(teachers), cfg.lm_student.fit, dm, terms, cfg.lm_weight,
                    "student")  # fmt: skip
    dry.probe(next(iter(dm.train_dataloader(2))))  # a dry run: shapes and layers checked before any training
    terms = build_group(cfg, "lm_distill", "LM loss term", lambda t: hasattr(t, "weight"), "is not a LossTerm")
    set_resume_dir(cfg, out)
    loggers = build_loggers(cfg)
    sources: dict[str, str] = {}

    # 2. The teacher: pretrained as is, or trained here once and cached.
    for name, teacher in teachers.items():
        if tcfg.get("fit"):

            def train_teacher(model: nn.Module, name: str = name) -> Any:
                return train_lm(cfg, lm_module(cfg, model, {}, tcfg.fit, dm, {}, 1.0, f"teacher_{name}"), tcfg.fit, dm,
                         loggers, f"teacher_{name}")  # fmt: skip

            payload = fit_payload(cfg, "lm-teacher", tcfg.model, tcfg.fit, cfg.lm_data, vocab_size=dm.vocab_size,
                                  data_fingerprint=data_fingerprint, **model_files(tcfg.model))  # fmt: skip
            path, reused = cached_model(
                Path(cfg.paths.cache_dir), f"lm-teacher-{name}", payload, teacher, train_teacher
            )
            sources[f"teacher:{name}"] = source_of(path, reused)
        else:
            sources[f"teacher:{name}"] = f"pretrained {tcfg.model.get('pretrained')}"

    # 3. The student trained alone (language-modelling loss), same token budget: the baseline.
    baseline = build_lm(cfg.lm_student.model, "student", dm.vocab_size, cfg.seed)
    trained["baseline"] = trained_parameters(baseline)
    fit = cfg.lm_student.fit

    def train_baseline(model: nn.Module) -> Any:
        return train_lm(cfg, lm_module(cfg, model, {}, fit, dm, {}, 1.0, "baseline"), fit, dm, loggers, "baseline")

    payload = fit_payload(cfg, "lm-baseline", cfg.lm_student.model, fit, cfg.lm_data, vocab_size=dm.vocab_size,
                          data_fingerprint=data_fingerprint, **model_files(cfg.lm_student.model))  # fmt: skip
    path, reused = cached_model(Path(cfg.paths.cache_dir), "lm-baseline", payload, baseline, train_baseline)
    sources["baseline"] = source_of(path, reused)

    # 4. Distillation.
    module = lm_module(cfg, student, teachers, fit, dm, terms, cfg.lm_weight, "student")
    start = time.perf_counter()
    train_lm(cfg, module, fit, dm, loggers, "student")
    seconds = time.perf_counter() - start
    sources["student"] = "distilled in this run"
    save_model(out / "student.ckpt", student, net=OmegaConf.to_container(cfg.lm_student.model, resolve=True),
               vocab_size=dm.vocab_size)  # fmt: skip

    # 5. Compression stages on the student (ONNX export, int8), through LogitsOnly.
    compressed, infos, failure = {}, {}, None
    if stages:
        from distill.compress.base import StageContext

        example = dm.tensors["val"]["input_ids"][:4]
        calibration = [dm.tensors["train"]["input_ids"][i : i + 8] for i in range(0, 64, 8)]
        ctx = StageContext(example, calibration, out / "compressed", dm.vocab_size)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        current: Any = LogitsOnly(student).eval()
        for name, stage in stages.items():
            try:
                result = stage.apply(current, ctx)
            except DistillError as err:
                log.error("compression stage '%s' failed: %s", name, err)
                failure = {"stage": name, "error": str(err)}
                break
            current = result.model if result.model is not None else result.artifact
            compressed[f"compress:{name}"], infos[f"compress:{name}"] = current, result.info

    # 6. Every model measured the same way on the test split.
    models: dict[str, Any] = {
        **{f"teacher:{n}": t for n, t in teachers.items()},
        "baseline": baseline,
        "student": student,
    }
    ids = dm.tensors["test"]["input_ids"]
    choices = teacher_choices(teachers, dm.test_dataloader())
    rows = []
    for name, model in {**models, **compressed}.items():
        runner = model if not isinstance(model, Path) else onnx_session(model)
        if isinstance(runner, LogitsOnly):
            runner = runner.model
        row: dict[str, Any] = {
            "model": name,
            **evaluate(runner, dm.test_dataloader(), None if name.startswith("teacher:") else choices),
        }
        row["val_perplexity"] = evaluate(runner, dm.val_dataloader())["perplexity"]
        if isinstance(model, Path):
            row["bytes"] = model.stat().st_size
            row["artifact"] = str(model)
        else:
            net = model.model if isinstance(model, LogitsOnly) else model
            row["parameters"] = count_parameters(net)
            if name in trained:  # compressed copies train nothing here
                row["trainable_parameters"] = trained[name]
            row["bytes"] = model_bytes(net)
        for batch in cfg.report.latency_batch_sizes:
            repeats = cfg.report.latency_repeats
            row[f"latency_ms_batch_{batch}"] = (
                onnx_latency_ms(runner, ids, batch, repeats) if isinstance(model, Path)
                else latency_ms(LogitsOnly(runner), ids, batch, repeats)
            )  # fmt: skip
        row["source"] = sources.get(name, "")
        if name in infos:
            row["stage"] = infos[name]
        rows.append(row)

    by_name = {r["model"]: r for r in rows}
    summary: dict[str, float] = {}
    if teachers:
        t = by_name[f"teacher:{next(iter(teachers))}"]["perplexity"]
        b, s = by_name["baseline"]["perplexity"], by_name["student"]["perplexity"]
        summary = {"baseline_minus_student_perplexity": b - s}
        if b > t:
            summary["perplexity_gap_closed"] = (b - s) / (b - t)
    train_tokens = dm.num_tokens("train", fit.get("train_fraction"))
    extra = {
        "student_val_perplexity": by_name["student"]["val_perplexity"],
        "distill_seconds": seconds,
        "distill_tokens_per_second": fit.epochs * train_tokens / seconds,
        "student_train_tokens": train_tokens,
        "student_epoch_kept": module.best["epoch"] if module.restore_best else fit.epochs - 1,
        "generated_batches": dict(module.generated_batches),
        "samples": {name: samples(m, dm, cfg) for name, m in models.items()},
    }
    lines = [f"## {name}\n" + "\n".join(f"- **{s['prompt']!r}** → {s['continuation']!r}" for s in got)
             for name, got in extra["samples"].items()]  # fmt: skip
    (out / "samples.md").write_text("# Sampled continuations of test prompts\n\n" + "\n\n".join(lines) + "\n")
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_text(key="samples", columns=["model", "prompt", "continuation"],
                            data=[[n, s["prompt"], s["continuation"]] for n, got in extra["samples"].items() for s in got])  # fmt: skip
    teacher_name = next(iter(teachers), None)
    title = f"{cfg.task_name}: {'teacher:' + teacher_name if teacher_name else 'no teacher'} → student"
    report = publish_report(rows, out, loggers, title=title, failure=failure, extra=extra, summary=summary)
    mark_continued(cfg.get("resume_dir"), out)
    return report
