"""Sequence classifiers of `transformers` for the text classification task: BERT-family models built from
a config or loaded from a local folder, wrapped to take one integer tensor (see `SequenceClassifier`),
and a student initialised from its teacher's layers (DistilBERT).

Nothing is downloaded: a pretrained model is read from a local folder (`local_files_only`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.validate import integer

log = logging.getLogger("distill.textcls")


class SequenceClassifier(nn.Module):
    """A `transformers` sequence-classification model taking `[batch, 3, length]` integers: token ids,
    attention mask, token types (`distill.textcls.data.pack`), and giving the logits `[batch, classes]`.

    One tensor in, one out: what every classification model of `distill` takes, so the distillation
    modules, the report's latency and FLOPs, ONNX export and int8 quantisation run on it unchanged. The
    `transformers` model is `model`: its modules are tapped as `model.<backbone>...` (e.g.
    `model.bert.encoder.layer.3`). Token types are passed only to a model that takes them (BERT does;
    DistilBERT and RoBERTa, whose `type_vocab_size` is 1, do not).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        takes = "token_type_ids" in inspect.signature(model.forward).parameters
        self.token_types = takes and int(getattr(model.config, "type_vocab_size", 0) or 0) >= 2

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def backbone_path(self) -> str:
        """The module path of the encoder backbone inside this wrapper (`model.bert`, `model.roberta`, ...)."""
        return f"model.{self.model.base_model_prefix}"

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def num_labels(self) -> int:
        return int(self.config.num_labels)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[1] != 3:
            raise DistillError(
                f"a sequence classifier takes [batch, 3, length] inputs (ids, mask, token types), got {list(x.shape)}"
            )
        inputs = {"input_ids": x[:, 0], "attention_mask": x[:, 1]}
        if self.token_types:
            inputs["token_type_ids"] = x[:, 2]
        return self.model(**inputs).logits


def bert_classifier(
    vocab_size: int,
    num_labels: int,
    pad_token_id: int = 0,
    hidden_size: int = 256,
    num_layers: int = 4,
    heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    dropout: float = 0.1,
    attention_dropout: float = 0.1,
    attn_implementation: str = "sdpa",
    trains: bool = True,
) -> SequenceClassifier:
    """A `BertForSequenceClassification` built from these sizes (randomly initialised), e.g. BERT-base:
    hidden 768, 12 layers, 12 heads, intermediate 3072. `intermediate_size` defaults to 4 x hidden."""
    from transformers import BertConfig, BertForSequenceClassification  # noqa: PLC0415 (heavy import)

    hidden = integer(hidden_size, "hidden_size", minimum=1)
    n_heads = integer(heads, "heads", minimum=1)
    if hidden % n_heads:
        raise DistillError(f"hidden_size {hidden} is not divisible by heads {n_heads}")
    config = BertConfig(
        vocab_size=integer(vocab_size, "vocab_size", minimum=1),
        hidden_size=hidden,
        num_hidden_layers=integer(num_layers, "num_layers", minimum=1),
        num_attention_heads=n_heads,
        intermediate_size=integer(intermediate_size or 4 * hidden, "intermediate_size", minimum=1),
        max_position_embeddings=integer(max_positions, "max_positions", minimum=1),
        hidden_dropout_prob=float(dropout),
        attention_probs_dropout_prob=float(attention_dropout),
        num_labels=integer(num_labels, "num_labels", minimum=2),
        pad_token_id=int(pad_token_id),
    )
    config._attn_implementation = attn_implementation
    return SequenceClassifier(BertForSequenceClassification(config))


def sequence_classification_types() -> set[str]:
    """The `model_type`s `AutoModelForSequenceClassification` can build."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES  # noqa: PLC0415

    return set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)


def check_pretrained_folder(path: str, num_labels: int | None, trains: bool, what: str) -> Any:
    """The `transformers` config of the local folder `path`, after checking it is a sequence classifier:
    a model type with a sequence-classification head, and, for a model used as it is (`trains` false),
    a trained head (`*ForSequenceClassification`) predicting `num_labels` classes. One line otherwise."""
    from transformers import AutoConfig  # noqa: PLC0415

    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise DistillError(f"{what}: pretrained folder not found: {path} (a local folder written by save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise DistillError(f"{what}: cannot read a model config from {folder}: {str(err).splitlines()[0]}") from None
    if config.model_type not in sequence_classification_types():
        raise DistillError(
            f"{what}: {folder} holds a '{config.model_type}' model, which has no sequence-classification head "
            "(use a BERT-family encoder: bert, distilbert, roberta, electra, ...)"
        )
    heads = [a for a in (config.architectures or []) if a.endswith("ForSequenceClassification")]
    if not trains:
        if not heads:
            found = ", ".join(config.architectures or []) or "no architecture"
            raise DistillError(
                f"{what}: {folder} is not a sequence-classification model ({found}) and is used as it is "
                "(fit: null): give a fine-tuned *ForSequenceClassification folder, or a fit to fine-tune it"
            )
        if num_labels is not None and int(config.num_labels) != int(num_labels):
            raise DistillError(f"{what}: {folder} predicts {config.num_labels} classes but the data have {num_labels}")
    return config


def pretrained_classifier(
    path: str,
    vocab_size: int | None = None,
    num_labels: int | None = None,
    pad_token_id: int | None = None,
    attn_implementation: str | None = None,
    trains: bool = True,
) -> SequenceClassifier:
    """A sequence classifier loaded from the local folder `path` (`save_pretrained`; nothing is downloaded).

    A model that trains here gets a classification head for the data's `num_labels` classes (a new one
    when the folder's head predicts another number, or has none: a pretrained encoder such as
    BERT-base's masked-LM checkpoint, the usual starting point of fine-tuning); a model used as it is
    must be a fine-tuned sequence classifier of the data's classes (`check_pretrained_folder`).
    """
    from transformers import AutoModelForSequenceClassification  # noqa: PLC0415

    what = f"pretrained model {path}"
    config = check_pretrained_folder(path, num_labels, trains, what)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if trains and num_labels is not None and int(config.num_labels) != int(num_labels):
        kwargs.update(num_labels=int(num_labels), ignore_mismatched_sizes=True)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(Path(path).expanduser()), **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise DistillError(f"{what}: cannot load it: {str(err).splitlines()[0]}") from None
    if vocab_size is not None and model.config.vocab_size < int(vocab_size):
        raise DistillError(
            f"{what}: its vocabulary has {model.config.vocab_size} entries but the tokenizer has {vocab_size}: "
            "use the model's own tokenizer (data.tokenizer=<its folder>)"
        )
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = int(pad_token_id)
    return SequenceClassifier(model.float())


# -- a student initialised from its teacher (DistilBERT) -------------------------------------------------


def teacher_layers(
    student_layers: int, teacher_layers: int, every: int | None, layers: Sequence[int] | None
) -> list[int]:
    """The teacher layers (0-based) the student's layers start from: `layers` as given, or every `every`-th
    one from the first (DistilBERT: one layer out of two, `every=2` -> 0, 2, 4, ...)."""
    if layers is not None:
        chosen = [integer(i, "init_from_teacher.layers[]", minimum=0) for i in layers]
        if len(chosen) != student_layers:
            raise DistillError(
                f"init_from_teacher.layers names {len(chosen)} teacher layers but the student has {student_layers}"
            )
    else:
        k = integer(every, "init_from_teacher.every", minimum=1)
        chosen = [i * k for i in range(student_layers)]
    if max(chosen) >= teacher_layers:
        raise DistillError(
            f"init_from_teacher: teacher layer {max(chosen)} (0-based) does not exist: the teacher has {teacher_layers} "
            f"layers (a {student_layers}-layer student takes every k-th with k <= {max(1, teacher_layers // student_layers)})"
        )
    return chosen


def _layer_list(model: nn.Module) -> nn.ModuleList:
    backbone = model.base_model
    encoder = getattr(backbone, "encoder", None) or getattr(backbone, "transformer", None)
    for name in ("layer", "layers"):
        found = getattr(encoder, name, None)
        if isinstance(found, nn.ModuleList):
            return found
    raise DistillError(f"init_from_teacher: cannot find the transformer layers of a {type(model).__name__}")


@torch.no_grad()
def init_from_teacher(
    student: SequenceClassifier, teacher: SequenceClassifier, every: int | None = 2, layers: Sequence[int] | None = None
) -> list[int]:
    """Copy the teacher's weights into the student (DistilBERT, Sanh et al. 2019, §3): the embeddings, the
    chosen teacher layers into the student's layers in order, and every other weight of the same name
    (pooler, classifier). Both must be of one architecture with the same widths and heads; only the
    number of layers may differ. Returns the teacher layers used."""
    s_model, t_model = student.model, teacher.model
    if type(s_model) is not type(t_model):
        raise DistillError(
            f"init_from_teacher: the student is a {type(s_model).__name__} but the teacher a {type(t_model).__name__}"
        )
    for key in (
        "hidden_size",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "num_labels",
    ):
        s, t = getattr(s_model.config, key, None), getattr(t_model.config, key, None)
        if s != t:
            raise DistillError(f"init_from_teacher: student and teacher differ in {key} ({s} and {t}); only depth may")
    s_layers, t_layers = _layer_list(s_model), _layer_list(t_model)
    chosen = teacher_layers(len(s_layers), len(t_layers), every, layers)
    prefix = {id(m): n for n, m in s_model.named_modules()}[id(s_layers)] + "."
    t_prefix = {id(m): n for n, m in t_model.named_modules()}[id(t_layers)] + "."
    t_state = t_model.state_dict()
    copied = 0
    for name, tensor in s_model.state_dict().items():
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            source = f"{t_prefix}{chosen[int(index)]}.{rest}"
        else:
            source = name
        if source not in t_state or t_state[source].shape != tensor.shape:
            raise DistillError(f"init_from_teacher: the teacher has no weight {source} of shape {list(tensor.shape)}")
        tensor.copy_(t_state[source])
        copied += 1
    log.info("Student initialised from the teacher: %d tensors, teacher layers %s", copied, chosen)
    return chosen
