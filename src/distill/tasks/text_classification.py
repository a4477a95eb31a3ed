"""Encoder text classification on the spine: BERT-family `transformers` sequence classifiers (built from a
config or loaded from a local folder) distilled by the `distill` terms (logit KD, TinyBERT hidden states
and attention, MiniLM), with a report of accuracy, macro-F1, agreement with the teacher, size, latency at
the task's sequence length and tokens per second.

It is classification (`ClassificationTask`) with text data (`distill.textcls.TextClassificationData`) and
models that take one `[batch, 3, length]` integer tensor (`distill.textcls.models.SequenceClassifier`), so
the same LightningModules, compression stages and report run on it. What it adds:

- the models get the data's vocabulary, class count and pad token; a teacher used as it is must predict
  the data's classes; the tokenizer must fit every model's vocabulary and `data.max_length` its positions;
- the transformer terms' settings left null (backbone path, layer counts, heads) are read from the models;
- `student.init_from_teacher` (DistilBERT): the distilled student starts from the teacher's embeddings,
  every k-th layer (or the layers listed) and head;
- ONNX models run on batches padded to `data.max_length` (the width they were exported at); the student is
  also written as a Hugging Face folder with its tokenizer (`student_hf/`).

Config (`distill-train task=text_classification`): `data` (text_stdlib, text_files), `teacher`
(bert_*), `student` (bert_*, `init_from_teacher`), `distill`.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn
from torchmetrics.classification import MulticlassF1Score

from distill.assembly import build
from distill.checkpoints import save_model
from distill.compress.base import StageContext
from distill.errors import DistillError
from distill.measure import classification_metrics, per_class_accuracy, predict
from distill.pretrained import model_files
from distill.tasks.base import ModelSpec, RunContext
from distill.tasks.classification import ClassificationTask
from distill.textcls.data import padded
from distill.textcls.models import SequenceClassifier, init_from_teacher
from distill.validate import check_train_config, integer

log = logging.getLogger(__name__)

TRANSFORMER_TERMS = "distill.losses.transformer."


def macro_f1(logits: Tensor, targets: Tensor) -> float:
    """The unweighted mean over classes of each class's F1 score."""
    metric = MulticlassF1Score(num_classes=logits.shape[-1], average="macro")
    return float(metric(logits, targets))


class TextClassificationTask(ClassificationTask):
    """BERT-family sequence classifiers: a teacher trained here (cached) or loaded, the student distilled."""

    def check_config(self, cfg: DictConfig) -> None:
        if (cfg.get("student") or {}).get("cut"):
            raise DistillError(
                "student.cut: text classification students are not cut from the teacher; start one from the "
                "teacher's layers instead (student.init_from_teacher={every: 2})"
            )
        # A teacher with `fit: null` is a fine-tuned classifier used as it is (checked where it is loaded).
        used = [n for n, t in (cfg.get("teacher") or {}).items() if isinstance(t, DictConfig) and t.get("fit") is None]
        checked = cfg
        if used:
            checked = cfg.copy()
            with open_dict(checked):
                for name in used:
                    del checked.teacher[name]
        check_train_config(checked)
        init = (cfg.get("student") or {}).get("init_from_teacher")
        if init is not None:
            if not isinstance(init, DictConfig):
                raise DistillError(
                    f"student.init_from_teacher must be null or {{every, layers, teacher}}, got {init!r}"
                )
            if init.get("layers") is None:
                integer(init.get("every"), "student.init_from_teacher.every", minimum=1)
            teachers = list(cfg.get("teacher") or {})
            if init.get("teacher") is not None and init.teacher not in teachers:
                raise DistillError(
                    f"student.init_from_teacher.teacher '{init.teacher}' is not a teacher of this run "
                    f"({', '.join(teachers) or 'none'})"
                )
            if not teachers:
                raise DistillError("student.init_from_teacher needs a teacher (teacher=[...])")

    def build_data(self, cfg: DictConfig) -> Any:
        dm = build(cfg.data, "data")
        for name in ("tokenizer", "class_names", "max_length", "model_inputs", "pad_token_id"):
            if not hasattr(dm, name):
                raise DistillError(
                    f"data: {type(dm).__name__} is not text classification data (it has no {name}); "
                    "use data=text_stdlib or data=text_files"
                )
        dm.setup("fit")
        log.info("Data: %s", dm.describe())
        return dm

    def teachers(self, cfg: DictConfig) -> dict[str, ModelSpec]:
        specs = super().teachers(cfg)
        for spec in specs.values():
            if not spec.trains and not spec.ckpt_path:
                spec.source = f"pretrained {spec.model.get('path')}, used as it is"
        return specs

    def build_model(self, node: DictConfig, what: str, seed: int, dm: Any, trains: bool) -> nn.Module:
        torch.manual_seed(seed)
        model = build(
            node, what, vocab_size=dm.vocab_size, num_labels=dm.num_classes, pad_token_id=dm.pad_token_id, trains=trains
        )  # fmt: skip
        if not isinstance(model, SequenceClassifier):
            raise DistillError(
                f"{what}: _target_ {node.get('_target_')} did not give a distill.textcls.models.SequenceClassifier "
                "(use bert_classifier or pretrained_classifier)"
            )
        return model

    def check_models(self, cfg: DictConfig, dm: Any, student: nn.Module, teachers: dict[str, nn.Module]) -> None:
        models = {"student": student, **{f"teacher '{n}'": t for n, t in teachers.items()}}
        labels = {who: m.num_labels for who, m in models.items()}
        if len(set(labels.values())) > 1 or dm.num_classes not in labels.values():
            found = ", ".join(f"{who} predicts {n}" for who, n in labels.items())
            raise DistillError(f"teacher and student must predict the data's {dm.num_classes} classes: {found}")
        for who, model in models.items():
            if model.config.vocab_size < dm.vocab_size:
                raise DistillError(
                    f"{who} has a vocabulary of {model.config.vocab_size} but the tokenizer has {dm.vocab_size}: "
                    "teacher and student must use the data's tokenizer"
                )
            positions = getattr(model.config, "max_position_embeddings", None)
            if positions is not None and positions < dm.max_length:
                raise DistillError(
                    f"{who} has {positions} positions but data.max_length is {dm.max_length}: lower data.max_length"
                )
        self.fill_term_settings(cfg, student, teachers)

    @staticmethod
    def fill_term_settings(cfg: DictConfig, student: SequenceClassifier, teachers: dict[str, nn.Module]) -> None:
        """The transformer terms' settings left null, read from the models: the backbone paths, the layer
        counts of the uniform maps, the heads, MiniLM's last layers."""
        for name, node in (cfg.get("distill") or {}).items():
            if not isinstance(node, DictConfig) or not str(node.get("_target_", "")).startswith(TRANSFORMER_TERMS):
                continue
            owner = node.get("teacher") or next(iter(teachers), None)
            teacher = teachers.get(owner) if owner else None
            if teacher is None:
                raise DistillError(f"distill.{name} needs a teacher (teacher=[...])")
            values = {
                "student_prefix": student.backbone_path, "teacher_prefix": teacher.backbone_path,
                "student_num_layers": student.num_layers, "teacher_num_layers": teacher.num_layers,
                "student_heads": student.num_heads, "teacher_heads": teacher.num_heads,
                "student_layer": student.num_layers, "teacher_layer": teacher.num_layers,
            }  # fmt: skip
            with open_dict(node):
                for key, value in values.items():
                    if key in node and node[key] is None:
                        node[key] = value

    def cache_extra(self, dm: Any, node: DictConfig) -> dict[str, Any]:
        return {"vocab_size": dm.vocab_size, "num_labels": dm.num_classes, **model_files(node.get("path"))}

    def module(self, cfg, model, fit, dm, stage, teachers=None, terms=None):  # noqa: ANN001, ANN201 - see Task
        init = (cfg.get("student") or {}).get("init_from_teacher")
        if init is not None and terms is not None and stage == "student" and teachers:
            name = init.get("teacher") or next(iter(teachers))
            init_from_teacher(model, teachers[name], init.get("every"), init.get("layers"))
        return super().module(cfg, model, fit, dm, stage, teachers, terms)

    def save_student(self, path: Path, student: nn.Module, cfg: DictConfig, dm: Any) -> None:
        save_model(
            path, student,
            net=OmegaConf.to_container(cfg.student.net, resolve=True),
            data=OmegaConf.to_container(cfg.data, resolve=True),
            num_classes=dm.num_classes, class_names=dm.class_names,
        )  # fmt: skip
        folder = path.parent / "student_hf"
        model = student.model
        model.config.id2label = dict(enumerate(dm.class_names))
        model.config.label2id = {name: i for i, name in enumerate(dm.class_names)}
        model.save_pretrained(str(folder))
        dm.tokenizer.save_pretrained(str(folder))
        log.info("Student written as a Hugging Face folder: %s (AutoModelForSequenceClassification)", folder)

    def stage_context(self, dm: Any, out_dir: Path, redistill: Any) -> StageContext:
        example = dm.model_inputs("val", 32, width=dm.max_length)
        train = dm.train_dataloader(32)
        calibration = [padded(b["x"], dm.max_length, dm.pad_token_id) for b in itertools.islice(train, 8)]
        return StageContext(example, calibration, out_dir, dm.num_classes, redistill)

    def evaluate(
        self, models: dict[str, nn.Module | Path], dm: Any, teacher_names: list[str], split: str = "test"
    ) -> dict[str, dict]:
        """Test (or `split`) accuracy, macro-F1, calibration error, top-1 agreement with the teachers' mean logits and the
        accuracy of each class (with the worst)."""
        from distill.compress import deploy

        loader = dm.test_dataloader if split == "test" else dm.val_dataloader

        def run(model: nn.Module | Path) -> tuple[Tensor, Tensor]:
            if isinstance(model, nn.Module):
                return predict(model, loader())
            width = dm.max_length  # an exported model takes the width it was exported at
            batches = ({**b, "x": padded(b["x"], width, dm.pad_token_id)} for b in loader())
            return deploy.onnx_predict(model, batches)

        logits = {name: run(model) for name, model in models.items()}
        targets = next(iter(logits.values()))[1]
        names = [n for n in teacher_names if n in logits]
        reference = torch.stack([logits[n][0] for n in names]).mean(0) if names else None
        metrics = {}
        for name, (z, _) in logits.items():
            metrics[name] = classification_metrics(z, targets, reference)
            metrics[name]["macro_f1"] = macro_f1(z, targets)
            metrics[name].update(per_class_accuracy(z, targets, dm.class_names))
        return metrics

    def example_input(self, dm: Any) -> Tensor:
        """A test text padded to `data.max_length`: latency and FLOPs at the task's sequence length."""
        return dm.model_inputs("test", 1, width=dm.max_length)

    def report_extra(self, context: RunContext) -> dict[str, Any]:
        """As classification's, and each row's tokens per second at the largest latency batch (batch x
        `data.max_length` tokens over that batch's measured latency)."""
        extra = super().report_extra(context)
        sizes = [int(b) for b in context.cfg.report.latency_batch_sizes]
        length = int(context.dm.max_length)
        for row in context.rows:
            latency = row.get(f"latency_ms_batch_{max(sizes)}")
            if latency:
                row["tokens_per_second"] = max(sizes) * length / (latency / 1000)
        extra["sequence_length"] = length
        return extra
