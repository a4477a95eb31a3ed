"""Checks of recipe and data fields when the config is built, before any data is read or model trained.

Every check raises `DistillError` with one line naming the key and the value it got, e.g.
`student.fit.epochs must be an integer >= 1, got -1`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from distill.budget import limits_of
from distill.errors import DistillError


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _get(node: Any, key: str) -> Any:
    """`node[key]` resolved; a missing key or a null node gives None."""
    if node is None:
        return None
    try:
        return node.get(key) if isinstance(node, Mapping | DictConfig) else None
    except Exception as err:  # noqa: BLE001 - an interpolation that cannot resolve
        raise DistillError(f"{key}: {' '.join(str(err).split())[:200]}") from None


def integer(value: Any, key: str, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """An integer (not a bool, not 1.5) at least `minimum`."""
    if value is None and allow_none:
        return None
    at_least = f" >= {minimum}" if minimum is not None else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DistillError(f"{key} must be an integer{at_least}, got {_shown(value)}")
    if minimum is not None and value < minimum:
        raise DistillError(f"{key} must be an integer{at_least}, got {value}")
    return value


def number(
    value: Any,
    key: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> float | None:
    """A finite number in the interval given by `low`/`high` (open ends where `*_open`)."""
    if value is None and allow_none:
        return None
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    if lo and hi:
        wanted = f"a number in {lo}, {hi}"
    elif lo and low == 0 and low_open:
        wanted = "a positive number"
    elif lo:
        wanted = f"a number {'>' if low_open else '>='} {low:g}"
    elif hi:
        wanted = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        wanted = "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DistillError(f"{key} must be {wanted}, got {_shown(value)}")
    if low is not None and (value < low or (low_open and value == low)):
        raise DistillError(f"{key} must be {wanted}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise DistillError(f"{key} must be {wanted}, got {value}")
    return float(value)


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise DistillError(f"{key} must be true or false, got {_shown(value)}")
    return value


def check_optimizer(node: Any, key: str) -> None:
    """The usual hyper-parameters of a `torch.optim` config, where present."""
    if node is None:
        raise DistillError(f"{key} is missing: a fit recipe needs an optimizer")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise DistillError(f"{key} must be an optimizer config with a _target_, got {_shown(node)}")
    if "lr" in node:
        number(_get(node, "lr"), f"{key}.lr", low=0, low_open=True)
    if "weight_decay" in node:
        number(_get(node, "weight_decay"), f"{key}.weight_decay", low=0)
    if "momentum" in node:
        number(_get(node, "momentum"), f"{key}.momentum", low=0, high=1, high_open=True)
    if "eps" in node:
        number(_get(node, "eps"), f"{key}.eps", low=0, low_open=True)
    betas = _get(node, "betas")
    if betas is not None:
        if not isinstance(betas, ListConfig | list | tuple) or len(betas) != 2:
            raise DistillError(f"{key}.betas must be two numbers in [0, 1), got {_shown(betas)}")
        for i, b in enumerate(betas):
            number(b, f"{key}.betas[{i}]", low=0, high=1, high_open=True)


def check_fit(fit: Any, key: str) -> None:
    """A training recipe: epochs, batch size, optimizer, and the optional fields every recipe may set."""
    if not isinstance(fit, DictConfig):
        raise DistillError(f"{key} must be a fit recipe (epochs, batch_size, optimizer), got {_shown(fit)}")
    integer(_get(fit, "epochs"), f"{key}.epochs", minimum=1)
    integer(_get(fit, "batch_size"), f"{key}.batch_size", minimum=1, allow_none=True)
    check_optimizer(_get(fit, "optimizer"), f"{key}.optimizer")
    scheduler = _get(fit, "scheduler")
    if scheduler is not None and (not isinstance(scheduler, DictConfig) or "_target_" not in scheduler):
        raise DistillError(
            f"{key}.scheduler must be null or a scheduler config with a _target_, got {_shown(scheduler)}"
        )
    number(_get(fit, "gradient_clip_val"), f"{key}.gradient_clip_val", low=0, low_open=True, allow_none=True)
    number(_get(fit, "train_fraction"), f"{key}.train_fraction", low=0, high=1, low_open=True, allow_none=True)
    if "restore_best" in fit:
        boolean(_get(fit, "restore_best"), f"{key}.restore_best")
    stopping = _get(fit, "early_stopping")
    if stopping is not None:
        if not isinstance(stopping, DictConfig):
            raise DistillError(f"{key}.early_stopping must be null or {{patience, min_delta}}, got {_shown(stopping)}")
        integer(_get(stopping, "patience"), f"{key}.early_stopping.patience", minimum=1)
        number(_get(stopping, "min_delta"), f"{key}.early_stopping.min_delta", low=0, allow_none=True)


def check_fractions(node: Any, key: str) -> None:
    """`val_fraction` and `test_fraction` of a data config: each in [0, 1), together below 1."""
    fractions = {}
    for name in ("val_fraction", "test_fraction"):
        if name in node:
            fractions[name] = number(_get(node, name), f"{key}.{name}", low=0, high=1, high_open=True)
    if len(fractions) == 2 and sum(fractions.values()) >= 1:
        v, t = (_get(node, n) for n in ("val_fraction", "test_fraction"))
        raise DistillError(f"{key}.val_fraction + {key}.test_fraction must be below 1, got {v} + {t}")


def check_data(node: Any, key: str) -> None:
    """Fields every data config may carry."""
    if not isinstance(node, DictConfig):
        return
    for name in ("batch_size", "eval_batch_size"):
        if name in node:
            integer(_get(node, name), f"{key}.{name}", minimum=1)
    check_fractions(node, key)
    for name in ("num_train", "num_val", "num_test"):
        if name in node:
            integer(_get(node, name), f"{key}.{name}", minimum=1)
    for name in ("num_transfer", "val_size"):
        if name in node:
            integer(_get(node, name), f"{key}.{name}", minimum=0)
    if _get(node, "num_classes") is not None:
        integer(_get(node, "num_classes"), f"{key}.num_classes", minimum=2)
    if "seq_len" in node:
        integer(_get(node, "seq_len"), f"{key}.seq_len", minimum=2)
    if _get(node, "max_chars") is not None:
        integer(_get(node, "max_chars"), f"{key}.max_chars", minimum=1)
    if "vocab_size" in node:
        integer(_get(node, "vocab_size"), f"{key}.vocab_size", minimum=1)


def check_report(node: Any, key: str = "report") -> None:
    if not isinstance(node, DictConfig):
        return
    sizes = _get(node, "latency_batch_sizes")
    if not isinstance(sizes, ListConfig | list) or not sizes:
        raise DistillError(f"{key}.latency_batch_sizes must be a list of batch sizes, got {_shown(sizes)}")
    for i, size in enumerate(sizes):
        integer(size, f"{key}.latency_batch_sizes[{i}]", minimum=1)
    integer(_get(node, "latency_repeats"), f"{key}.latency_repeats", minimum=1)


# Trainer strategies that start fresh processes at every fit; the main job fits several models.
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "spawn", "fork", "notebook")


def check_trainer(node: Any, key: str = "trainer") -> None:
    """Refuse settings that cannot work here, before any data is read: a spawning strategy, a missing GPU."""
    if not isinstance(node, DictConfig):
        return
    strategy = _get(node, "strategy")
    if isinstance(strategy, str) and any(s in strategy for s in SPAWNING_STRATEGIES):
        raise DistillError(
            f"{key}.strategy={strategy} starts fresh processes for every fit, and the job fits several models: "
            "use strategy=ddp (trainer=ddp or trainer=ddp_cpu), which starts them once"
        )
    if isinstance(strategy, DictConfig) and "start_method" in strategy and _get(strategy, "start_method") != "popen":
        raise DistillError(
            f"{key}.strategy.start_method={_get(strategy, 'start_method')} starts fresh processes for every fit: "
            "use the default (popen)"
        )
    accelerator = str(_get(node, "accelerator") or "auto")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DistillError(
                f"{key}.accelerator={accelerator}: no CUDA GPU is visible on this machine "
                "(torch.cuda.is_available() is False); use trainer=cpu, or run where a GPU is"
            )
        devices = _get(node, "devices")
        if isinstance(devices, int) and not isinstance(devices, bool) and devices > torch.cuda.device_count():
            raise DistillError(
                f"{key}.devices={devices}: only {torch.cuda.device_count()} CUDA GPU(s) visible on this machine"
            )
    if accelerator == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise DistillError(f"{key}.accelerator=mps: Apple's MPS backend is not available on this machine")
    if "max_epochs" in node and _get(node, "max_epochs") is not None:
        raise DistillError(f"{key}.max_epochs is not used: each stage's epochs come from its fit recipe (fit.epochs)")


def check_seed(cfg: DictConfig) -> None:
    integer(_get(cfg, "seed"), "seed", minimum=0)


def check_train_config(cfg: DictConfig) -> None:
    """`distill-train`: every recipe and data field, before the data are read."""
    check_seed(cfg)
    check_trainer(cfg.get("trainer"))
    for name, tcfg in (cfg.get("teacher") or {}).items():
        if isinstance(tcfg, DictConfig) and not tcfg.get("ckpt_path"):
            check_fit(_get(tcfg, "fit"), f"teacher.{name}.fit")
    student = cfg.get("student")
    if isinstance(student, DictConfig):
        check_fit(_get(student, "fit"), "student.fit")
        if _get(student, "baseline") is not None:  # null: no baseline (a search needs none)
            check_fit(_get(student, "baseline"), "student.baseline")
    check_data(cfg.get("data"), "data")
    born = cfg.get("born_again")
    if isinstance(born, DictConfig):
        integer(_get(born, "generations"), "born_again.generations", minimum=0)
        boolean(_get(born, "ensemble"), "born_again.ensemble")
    check_report(cfg.get("report"))
    limits_of(cfg.get("budget"))


def check_lm_config(cfg: DictConfig) -> None:
    """`distill-lm`: every recipe, data and generation field, before the text is read."""
    check_seed(cfg)
    check_trainer(cfg.get("trainer"))
    teacher = cfg.get("lm_teacher")
    if isinstance(teacher, DictConfig) and _get(teacher, "fit") is not None:
        check_fit(_get(teacher, "fit"), "lm_teacher.fit")
    student = cfg.get("lm_student")
    if isinstance(student, DictConfig):
        check_fit(_get(student, "fit"), "lm_student.fit")
    check_data(cfg.get("lm_data"), "lm_data")
    number(_get(cfg, "lm_weight"), "lm_weight", low=0)
    for name in ("on_policy_fraction", "sequence_kd_fraction"):
        number(_get(cfg, name), name, low=0, high=1)
    data = cfg.get("lm_data")
    if isinstance(data, DictConfig) and _get(data, "mode") == "pack_documents":
        # Rows holding several documents have no single prompt to generate from, and an exported model
        # (ONNX) takes input_ids alone, without the position ids that keep the documents apart.
        for name in ("on_policy_fraction", "sequence_kd_fraction"):
            if _get(cfg, name):
                raise DistillError(
                    f"{name}={_get(cfg, name)} generates from each row's prompt, but lm_data.mode=pack_documents "
                    "rows hold several documents: use lm_data.mode=pad"
                )
        terms = cfg.get("lm_distill")
        for name, node in terms.items() if isinstance(terms, DictConfig) else []:
            if str(_get(node, "_target_") or "").startswith("distill.llm.minillm."):
                raise DistillError(
                    f"lm_distill.{name} (MiniLLM) samples responses to each row's prompt, but "
                    "lm_data.mode=pack_documents rows hold several documents: use lm_data.mode=pad"
                )
        compress = cfg.get("compress")
        stages = compress.items() if isinstance(compress, DictConfig) else []
        for stage, node in stages:
            if str(_get(node, "_target_") or "").startswith("distill.compress.deploy."):
                raise DistillError(
                    f"compress stage '{stage}' runs the student on input_ids alone, which cannot keep "
                    "lm_data.mode=pack_documents rows' documents apart: use lm_data.mode=pad"
                )
    generation = cfg.get("generation")
    if isinstance(generation, DictConfig):
        integer(_get(generation, "prompt_len"), "generation.prompt_len", minimum=1)
        number(_get(generation, "temperature"), "generation.temperature", low=0, low_open=True)
    samples = cfg.get("samples")
    if isinstance(samples, DictConfig):
        integer(_get(samples, "count"), "samples.count", minimum=0)
        integer(_get(samples, "prompt_len"), "samples.prompt_len", minimum=1)
        integer(_get(samples, "max_new_tokens"), "samples.max_new_tokens", minimum=1)
        number(_get(samples, "temperature"), "samples.temperature", low=0, low_open=True)
        integer(_get(samples, "top_k"), "samples.top_k", minimum=0)
    check_report(cfg.get("report"))
    limits_of(cfg.get("budget"))


def plain(node: Any) -> Any:
    """A resolved plain container of a config node (for messages and digests)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
