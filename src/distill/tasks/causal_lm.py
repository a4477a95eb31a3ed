"""Causal language models on the spine: `transformers` models (pretrained, or built from a config and
trained here), token-level and hidden-state loss terms, on-policy and sequence-level batches, and a
report of perplexity, next-token agreement with the teacher, sampled continuations and, for data
with reference answers, evaluation by generation (exact match and ROUGE-L of each model's completions).

Config (`distill-lm`, configs/lm.yaml): `lm_data`, `lm_teacher` (one; `fit: null` uses a pretrained
teacher as it is), `lm_student` (`model`, `fit`: the recipe of the student alone and distilled),
`lm_distill`, `lm_weight`, `on_policy_fraction`, `sequence_kd_fraction`, `generation`, `samples`,
`generation_eval`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from distill.assembly import build
from distill.atomic import write_text
from distill.checkpoints import save_model
from distill.compress.base import StageContext
from distill.compress.deploy import onnx_run, onnx_session
from distill.errors import DistillError
from distill.llm.generation import Generated, GenerationEval, evaluate_by_generation, side_by_side_markdown
from distill.llm.losses import IGNORE_INDEX
from distill.llm.models import (
    LogitsOnly,
    check_positions,
    check_precision,
    check_pretrained_source,
    check_teacher_dtype,
    check_vocabularies,
    export_pretrained,
    float32_trainable,
    reduce_precision,
)
from distill.llm.module import LMDistillationModule, model_inputs, position_nll, teacher_choice, token_stats
from distill.llm.teacher_cache import TeacherOutputCache
from distill.pretrained import model_files
from distill.tasks.base import ModelSpec, RunContext, StudentSpec, Task, resolve_cut
from distill.validate import check_lm_config

log = logging.getLogger(__name__)


def build_lm(node: DictConfig, what: str, vocab_size: int, seed: int, trained: bool = True) -> nn.Module:
    """The model of `node`; one that will train (`trained`) keeps its trainable weights in float32."""
    torch.manual_seed(seed)
    model = build(node, what, vocab_size=vocab_size)
    if not isinstance(model, nn.Module):
        raise DistillError(f"{what}: _target_ {node.get('_target_')} did not give an nn.Module")
    return float32_trainable(model) if trained else model


@torch.no_grad()
def teacher_choices(teachers: dict[str, nn.Module], loader: Any) -> list[Tensor] | None:
    """The teachers' next-token choice at every position of every batch of `loader`: computed once, then
    compared with each model's."""
    if not teachers:
        return None
    choices = []
    for batch in loader:
        inputs = {**model_inputs(batch), "use_cache": False}
        choices.append(teacher_choice({n: t.eval()(**inputs) for n, t in teachers.items()}))
    return choices


RARE_SHARE = 0.1  # the rarest tenth of the test tokens: `rare_perplexity`


def train_counts(dm: Any) -> Tensor:
    """How often each token is a training target (the labelled tokens of the training split)."""
    labels = dm.tensors["train"]["labels"]
    return torch.bincount(labels[labels != IGNORE_INDEX].flatten(), minlength=dm.vocab_size)


def rare_positions(targets: Tensor, counts: Tensor, share: float = RARE_SHARE) -> Tensor:
    """A mask of the `share` of `targets` (test target tokens, in order) whose tokens are rarest in training:
    sorted by training count (ties in order), the first share x n (rounded; at least one)."""
    n = len(targets)
    keep = max(1, int(share * n + 0.5)) if n else 0
    order = torch.sort(counts[targets], stable=True).indices[:keep]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order] = True
    return mask


@torch.no_grad()
def evaluate(
    model: Any, loader: Any, choices: list[Tensor] | None = None, counts: Tensor | None = None
) -> dict[str, float]:
    """Perplexity (exp of the mean next-token NLL over labelled tokens) and, given the teachers' `choices`
    for the same loader, agreement with them; given the training `counts` of each token, the perplexity on
    the rarest tenth of the test tokens (`rare_perplexity`: rare behaviour is what distillation loses first).

    `model` is a causal LM or an ONNX Runtime session of `LogitsOnly` (input_ids -> logits).
    """
    totals = {"nll": 0.0, "tokens": 0.0, "agree": 0.0}
    nlls, targets = [], []
    for i, batch in enumerate(loader):
        if isinstance(model, nn.Module):
            model.eval()
            logits = model(**model_inputs(batch), use_cache=False).logits
        else:
            logits = torch.from_numpy(onnx_run(model, batch["input_ids"]))
        nll, valid = position_nll(logits, batch["labels"])
        for k, v in token_stats(logits, batch["labels"], choices[i] if choices else None, (nll, valid)).items():
            totals[k] += v
        if counts is not None:
            nlls.append(nll[valid].cpu())
            targets.append(batch["labels"][:, 1:][valid].cpu())
    tokens = max(totals["tokens"], 1.0)
    metrics = {"perplexity": float(torch.tensor(totals["nll"] / tokens).exp()), "tokens": int(totals["tokens"])}
    if choices:
        metrics["agreement"] = totals["agree"] / tokens
    if counts is not None and targets and len(torch.cat(targets)):
        nll, target = torch.cat(nlls), torch.cat(targets)
        rare = rare_positions(target, counts.cpu())
        metrics["rare_perplexity"] = float(nll[rare].mean().exp())
    return metrics


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


def teacher_cache(cfg: DictConfig) -> TeacherOutputCache | None:
    """Where and how the teachers' next-token distributions are cached (`cache_teacher_outputs`, `teacher_top_k`,
    `teacher_tail`); None: off."""
    if not cfg.get("cache_teacher_outputs", True):
        return None
    return TeacherOutputCache(
        Path(cfg.paths.cache_dir), cfg.get("teacher_top_k", 256), cfg.get("teacher_tail", "student")
    )


class CausalLMTask(Task):
    """A causal LM teacher (trained here and cached, or pretrained) and student, distilled token by token."""

    terms_group = "lm_distill"
    monitor = ("val/ppl", "min")
    cache_prefix = "lm-"
    probe_copies_teachers = False  # no hooks: a pretrained teacher is not copied (it may be billions of weights)
    count_flops = False
    report_trainable = True
    weights_folder = None  # counted in memory: a pretrained teacher is not written into every run folder
    #: `generation_eval`, set by `check_config` (until then, off)
    generation_eval: GenerationEval = GenerationEval(examples=0)
    #: evaluation by generation, once `evaluate` ran it (None: off, or data without reference answers)
    generated: Generated | None = None
    _examples: Any = None  # the test examples to complete (None: none), once looked up
    _looked_up = False

    def check_config(self, cfg: DictConfig) -> None:
        self.cut_from = resolve_cut(cfg, "lm_student", "lm_teacher", "model")
        check_lm_config(cfg)
        teacher_cache(cfg)  # a bad teacher_top_k is refused before any training
        self.generation_eval = GenerationEval.from_config(cfg.get("generation_eval"), seed=int(cfg.get("seed") or 0))
        self._examples, self._looked_up, self.generated = None, False, None
        check_precision(cfg.trainer.get("precision"))
        check_teacher_dtype((cfg.get("lm_teacher") or {}).get("dtype"), cfg.trainer.get("strategy"))
        for group in ("lm_teacher", "lm_student"):  # every pretrained model can be found, before any text is read
            node = (cfg.get(group) or {}).get("model") or {}
            if node.get("pretrained"):
                check_pretrained_source(
                    str(node.pretrained), bool(node.get("local_files_only", True)), f"{group}.model.pretrained"
                )

    def data_config(self, cfg: DictConfig) -> DictConfig:
        return cfg.lm_data

    def build_data(self, cfg: DictConfig) -> Any:
        dm = build(cfg.lm_data, "lm_data")
        dm.prepare_data()
        dm.setup("fit")
        log.info("Text: %s", dm.describe())
        return dm

    def teachers(self, cfg: DictConfig) -> dict[str, ModelSpec]:
        tcfg = cfg.get("lm_teacher")
        if not tcfg:
            return {}
        return {tcfg.name: ModelSpec(tcfg.model, tcfg.get("fit"), source=f"pretrained {tcfg.model.get('pretrained')}")}

    def student(self, cfg: DictConfig) -> StudentSpec:
        cut = cfg.lm_student.get("cut") or None
        return StudentSpec(cfg.lm_student.model, cfg.lm_student.fit, cfg.lm_student.fit, cut, self.cut_from)

    def cut_student(self, cfg: DictConfig, node: DictConfig, teacher: nn.Module, dm: Any) -> tuple[nn.Module, dict]:
        """The teacher cut by `distill.llm.prune.cut_to` (Minitron), importance on `batches` training batches."""
        settings = OmegaConf.to_container(node, resolve=True)
        count = int(settings.pop("batches", 8))
        settings.pop("teacher", None)
        cut = build(OmegaConf.create({**settings, "_partial_": True}), "lm_student.cut")
        ids = dm.tensors["train"]["input_ids"]
        student, info = cut(teacher, [ids[i : i + 16] for i in range(0, min(len(ids), 16 * count), 16)])
        info["what"] = ", ".join(f"{k} {v}" for k, v in info["sizes_after"].items() if v != info["sizes_before"][k])
        return float32_trainable(student), info

    def reinitialised(self, model: nn.Module, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return float32_trainable(type(model)(model.config))

    def build_model(self, node: DictConfig, what: str, seed: int, dm: Any, trains: bool) -> nn.Module:
        return build_lm(node, what, dm.vocab_size, seed, trained=trains)

    def check_models(self, cfg: DictConfig, dm: Any, student: nn.Module, teachers: dict[str, nn.Module]) -> None:
        check_vocabularies(student, teachers, dm.vocab_size)
        lengths = {f"lm_data.seq_len={dm.seq_len}": dm.seq_len}
        if cfg.samples.count:
            prompt = min(cfg.samples.prompt_len or dm.seq_len, dm.seq_len)
            new = cfg.samples.max_new_tokens
            lengths[f"samples.prompt_len + samples.max_new_tokens = {prompt} + {new}"] = prompt + new
        examples = self.generation_examples(dm)
        if examples is not None:
            width, new = examples[0].shape[1], self.generation_eval.max_new_tokens
            lengths[f"the longest test prompt + generation_eval.max_new_tokens = {width} + {new}"] = width + new
        models = {"student": student, **({"teacher": next(iter(teachers.values()))} if teachers else {})}
        check_positions(models, lengths)

    def cache_extra(self, dm: Any, node: DictConfig) -> dict[str, Any]:
        return {"vocab_size": dm.vocab_size, **model_files(node.get("pretrained"))}

    def generation_examples(self, dm: Any) -> tuple[Tensor, Tensor, list[str]] | None:
        """The test examples evaluation by generation completes: (prompt ids, left-padded, attention mask,
        references); None when `generation_eval` is off or the data have no reference answers (plain
        text: one log line says so). Looked up once."""
        if not self._looked_up:
            self._looked_up = True
            settings = self.generation_eval
            if settings.enabled and not callable(getattr(dm, "generation_examples", None)):
                log.info("generation_eval skipped: the data module gives no generation_examples")
            elif settings.enabled:
                try:
                    self._examples = dm.generation_examples("test", settings.examples)
                except DistillError as err:
                    log.info("generation_eval skipped: %s", err)
        return self._examples

    def module(self, cfg, model, fit, dm, stage, teachers=None, terms=None):  # noqa: ANN001, ANN201 - see Task
        gen, teachers = cfg.generation, teachers or {}
        for teacher in teachers.values():  # the frozen teachers in the precision they teach in (lm_teacher.dtype)
            reduce_precision(teacher, (cfg.get("lm_teacher") or {}).get("dtype"))
        module = LMDistillationModule(
            model, teachers, terms or {}, optimizer=build(fit.optimizer, f"{stage} optimizer"),
            lm_weight=1.0 if terms is None else cfg.lm_weight,
            scheduler=build(fit.scheduler, f"{stage} scheduler") if fit.get("scheduler") else None,
            on_policy_fraction=cfg.on_policy_fraction if teachers else 0.0,
            sequence_kd_fraction=cfg.sequence_kd_fraction if teachers else 0.0,
            prompt_len=gen.prompt_len, generation_temperature=gen.temperature, seed=cfg.seed, prefix=stage,
            pad_token_id=dm.pad_token_id, eos_token_id=dm.eos_token_id, gradient_clip_val=fit.get("gradient_clip_val"),
            teacher_cache=teacher_cache(cfg) if teachers and terms else None,
        )  # fmt: skip
        interval = fit.get("scheduler_interval") or "epoch"
        if interval not in ("epoch", "step"):
            raise DistillError(f"{stage}: fit.scheduler_interval must be epoch or step, got {interval!r}")
        module.scheduler_interval = interval
        return module

    def train_loader(self, dm: Any, fit: DictConfig, role: str) -> Any:
        return dm.train_dataloader(fit.get("batch_size"), fit.get("train_fraction"))

    def prepare_module(self, module: Any, loader: Any) -> None:
        module.probe(next(iter(loader)))  # the terms' parameters (hidden-state projections), before the optimiser

    def save_student(self, path: Path, student: nn.Module, cfg: DictConfig, dm: Any) -> None:
        net = OmegaConf.to_container(cfg.lm_student.model, resolve=True)
        save_model(path, student, net=net, vocab_size=dm.vocab_size, cut=bool(self.cut_from))
        export = cfg.get("export") or {}
        folder = path.parent / export.get("folder", "student_hf")
        export_pretrained(student, folder, dm.tokenizer, merge_lora=export.get("merge_lora", True))
        log.info("Student written as a Hugging Face folder: %s (AutoModelForCausalLM.from_pretrained)", folder)

    def stage_context(self, dm: Any, out_dir: Path, redistill: Any) -> StageContext:
        example = dm.tensors["val"]["input_ids"][:4]
        calibration = [dm.tensors["train"]["input_ids"][i : i + 8] for i in range(0, 64, 8)]
        return StageContext(example, calibration, out_dir, dm.vocab_size, redistill)

    def stage_input(self, student: nn.Module) -> nn.Module:
        return LogitsOnly(student).eval()  # input_ids -> logits: what ONNX export and int8 take

    def evaluate(
        self, models: dict[str, nn.Module | Path], dm: Any, teacher_names: list[str], split: str = "test"
    ) -> dict[str, dict]:
        """Test perplexity, the perplexity on the rarest tenth of the test tokens (by training count) and next-token
        agreement with the teacher (its choices computed once), validation perplexity and, for data with reference answers, evaluation by generation of every PyTorch model
        (`exact_match`, `rouge_l`, greedy, and `exact_match_sampled`, `rouge_l_sampled`; not ONNX sessions)."""
        teachers = {n: m for n, m in models.items() if n in teacher_names and isinstance(m, nn.Module)}
        choices = teacher_choices(teachers, dm.test_dataloader())
        counts = train_counts(dm)
        metrics, generators = {}, {}
        for name, model in models.items():
            runner = onnx_session(model) if isinstance(model, Path) else model
            if isinstance(runner, LogitsOnly):
                runner = runner.model
            metrics[name] = evaluate(runner, dm.test_dataloader(), None if name in teacher_names else choices, counts)
            metrics[name]["val_perplexity"] = evaluate(runner, dm.val_dataloader())["perplexity"]
            if isinstance(runner, nn.Module) and callable(getattr(runner, "generate", None)):
                generators[name] = runner
        examples = self.generation_examples(dm)
        if examples is not None and generators:
            ids, mask, references = examples
            self.generated = evaluate_by_generation(
                generators, ids, mask, references, dm.tokenizer, self.generation_eval,
                eos_token_id=dm.eos_token_id, pad_token_id=dm.pad_token_id,
            )  # fmt: skip
            for name, got in self.generated.metrics.items():
                metrics[name].update(got)
        return metrics

    def example_input(self, dm: Any) -> Tensor:
        return dm.tensors["test"]["input_ids"][:1]

    def validation_figure(self, name: str, model: nn.Module | Path, row: dict[str, Any], dm: Any) -> dict[str, float]:
        return {"perplexity": row["val_perplexity"]}

    def runner(self, model: nn.Module) -> nn.Module:
        return model if isinstance(model, LogitsOnly) else LogitsOnly(model)

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        by_role = {r["role"]: r for r in rows if r["role"] in ("baseline", "student")}
        teachers = [r for r in rows if r["role"] == "teacher"]
        if not teachers or len(by_role) < 2:
            return {}
        t, b, s = teachers[0]["perplexity"], by_role["baseline"]["perplexity"], by_role["student"]["perplexity"]
        summary = {"baseline_minus_student_perplexity": b - s}
        if b > t:
            summary["perplexity_gap_closed"] = (b - s) / (b - t)
        if all("exact_match" in r for r in (teachers[0], by_role["baseline"], by_role["student"])):
            t, b, s = teachers[0]["exact_match"], by_role["baseline"]["exact_match"], by_role["student"]["exact_match"]
            summary["student_minus_baseline_exact_match"] = s - b
            if t > b:  # the share of the teacher's lead over the student alone that distillation won back
                summary["exact_match_gap_closed"] = (s - b) / (t - b)
        return summary

    def report_extra(self, context: RunContext) -> dict[str, Any]:
        cfg, dm, out = context.cfg, context.dm, context.out
        fit = cfg.lm_student.fit
        train_tokens = dm.num_tokens("train", fit.get("train_fraction"))
        student_row = next(r for r in context.rows if r["model"] == "student")
        extra = {
            "student_val_perplexity": student_row["val_perplexity"],
            "distill_tokens_per_second": fit.epochs * train_tokens / context.seconds,
            "student_train_tokens": train_tokens,
            "generated_batches": dict(context.module.generated_batches),
            "teacher_outputs": dict(context.module.teacher_cache_entries),
            "samples": {name: samples(m, dm, cfg) for name, m in context.models.items()},
        }
        lines = [f"## {name}\n" + "\n".join(f"- **{s['prompt']!r}** → {s['continuation']!r}" for s in got)
                 for name, got in extra["samples"].items()]  # fmt: skip
        text = "# Sampled continuations of test prompts\n\n" + "\n\n".join(lines) + "\n"
        side: list[dict[str, Any]] = []
        if self.generated is not None:
            extra["generation_examples"] = len(self.generated.references)
            side = self.generated.side_by_side(self.generation_eval.side_by_side)
            if side:
                extra["generation_side_by_side"] = side
                text += (f"\n# Greedy completions of test prompts, side by side\n\n"
                         f"The first {len(side)} of the {len(self.generated.references)} test prompts each model "
                         f"completed ({self.generation_eval.describe()}).\n\n{side_by_side_markdown(side)}\n")  # fmt: skip
        write_text(out / "samples.md", text)
        for logger in context.loggers:
            if type(logger).__name__ == "WandbLogger":
                rows = [[n, s["prompt"], s["continuation"]] for n, got in extra["samples"].items() for s in got]
                logger.log_text(key="samples", columns=["model", "prompt", "continuation"], data=rows)
                if side:
                    names = list(side[0]["completions"])
                    logger.log_text(
                        key="generation_side_by_side", columns=["prompt", "reference", *names],
                        data=[[e["prompt"], e["reference"], *(e["completions"][n] for n in names)] for e in side],
                    )  # fmt: skip
        return extra
