"""Memory for big teacher/student pairs: gradient checkpointing, teachers held in 16 bits or int8, and teachers
in the module tree under FSDP (sharded like the student, yet frozen, unsaved and out of the optimiser)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")

from tests.conftest import compose_config, run_cli  # noqa: E402

from distill.errors import DistillError  # noqa: E402
from distill.llm.losses import ForwardKL  # noqa: E402
from distill.llm.models import (  # noqa: E402
    causal_lm,
    check_teacher_dtype,
    held_bytes,
    reduce_precision,
)
from distill.llm.module import LMDistillationModule  # noqa: E402
from distill.modules.base import FrozenModules, fsdp_units_for  # noqa: E402

TINY = {"model_type": "llama", "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
SGD = functools.partial(torch.optim.SGD, lr=0.1)


def tiny(vocab: int = 96, **kwargs) -> torch.nn.Module:
    return causal_lm(vocab, **{"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64, **TINY, **kwargs})


def checkpointing(model: torch.nn.Module) -> bool:
    """transformers' own flag (renamed is_activation_checkpointing in transformers 5)."""
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else None
    if flag is None and hasattr(model, "get_base_model"):
        return checkpointing(model.get_base_model())
    return bool(getattr(model, flag or "is_gradient_checkpointing"))


def gradients(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}])
def test_gradient_checkpointing_gives_the_same_gradients(tmp_path: Path, lora: dict | None) -> None:
    torch.manual_seed(0)
    tiny().save_pretrained(tmp_path / "base")
    ids = torch.randint(0, 96, (3, 16), generator=torch.Generator().manual_seed(1))

    def build(**kwargs) -> torch.nn.Module:
        torch.manual_seed(2)  # the same LoRA adapters
        return causal_lm(96, pretrained=str(tmp_path / "base"), torch_dtype="float32", lora=lora, **kwargs)

    plain, checkpointed = build(), build(gradient_checkpointing=True)
    assert not checkpointing(plain) and checkpointing(checkpointed)
    if lora:  # peft's frozen base needs the embeddings' output to carry gradients
        out = checkpointed.train().get_input_embeddings()(ids)
        assert out.requires_grad
    a, b = gradients(plain, ids), gradients(checkpointed, ids)
    assert a.keys() == b.keys() and len(a) == (8 if lora else 21)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert not checkpointing(tiny()) and checkpointing(tiny(gradient_checkpointing=True))  # built from a config too
    with pytest.raises(DistillError, match="^gradient_checkpointing must be true or false, got 'yes'$"):
        tiny(gradient_checkpointing="yes")


# dtype, the largest logit difference from float32 allowed (as a share of the largest logit), memory ratio bounds.
# Measured on this tiny llama (initializer_range 0.1, so that logits reach a few units): bfloat16 about 1%,
# float16 0.2%, int8 2.4-3.3% of the largest logit; memory 0.50, 0.50 and 0.29 of float32's.
PRECISIONS = [("bfloat16", 0.02, (0.5, 0.5)), ("float16", 0.005, (0.5, 0.5)), ("int8", 0.06, (0.25, 0.3))]


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(("dtype", "tolerance", "ratio"), PRECISIONS)
def test_a_teacher_held_in_reduced_precision(dtype: str, tolerance: float, ratio: tuple, tied: bool) -> None:
    torch.manual_seed(0)
    teacher = tiny(256, initializer_range=0.1, tie_word_embeddings=tied).eval()
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = teacher(input_ids=ids).logits
    full = held_bytes(teacher)
    reduce_precision(teacher, dtype)
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits.float()
    difference = (logits - reference).abs().max().item()
    assert difference <= tolerance * reference.abs().max().item()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
    assert ratio[0] <= held_bytes(teacher) / full <= ratio[1] + 1e-9
    linears = [m for m in teacher.modules() if isinstance(m, torch.nn.Linear | torch.nn.Embedding)]
    if dtype == "int8":
        assert all(m.weight.qdata.dtype == torch.int8 for m in linears)
        assert (teacher.lm_head.weight is teacher.model.embed_tokens.weight) == tied  # tied weights stay one tensor
    else:
        assert {p.dtype for p in teacher.parameters()} == {getattr(torch, dtype)}
    weights = [m.weight for m in linears]
    reduce_precision(teacher, dtype)  # asked again: nothing changes
    assert all(m.weight is w for m, w in zip(linears, weights, strict=True))
    assert reduce_precision(teacher, None) is teacher


def test_a_reduced_teacher_teaches_a_student() -> None:
    torch.manual_seed(0)
    teacher, student = reduce_precision(tiny(), "int8"), tiny()
    module = LMDistillationModule(student, {"t": teacher}, {"kd": ForwardKL(1.0)}, optimizer=SGD)
    module.log = lambda *args, **kwargs: None
    batch = {"input_ids": torch.randint(0, 96, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    batch["labels"] = batch["input_ids"].clone()
    module.to("cpu").train()
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in student.parameters())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_teacher_dtypes_are_refused_in_one_line() -> None:
    with pytest.raises(DistillError, match=r"^lm_teacher\.dtype=int4: one of null, float32, bfloat16, float16, int8$"):
        check_teacher_dtype("int4")
    fsdp = {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}
    with pytest.raises(DistillError, match="^lm_teacher.dtype=int8: FSDP cannot shard int8 weights"):
        check_teacher_dtype("int8", fsdp)
    with pytest.raises(DistillError, match="FSDP cannot shard"):
        check_teacher_dtype("int8", "fsdp")
    for dtype in (None, "bfloat16", "float16"):
        check_teacher_dtype(dtype, fsdp)
    check_teacher_dtype("int8", {"_target_": "lightning.pytorch.strategies.DDPStrategy"})
    with pytest.raises(DistillError, match="one of null"):
        reduce_precision(tiny(), "fp8")
    with pytest.raises(DistillError, match="already quantised"):
        reduce_precision(reduce_precision(tiny(), "int8"), "bfloat16")


# -- FSDP -------------------------------------------------------------------------------------------------


def distiller() -> tuple[LMDistillationModule, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = tiny(hidden_size=48)
    module = LMDistillationModule(tiny(), {"big": teacher}, {"kd": ForwardKL(1.0)}, optimizer=SGD)
    module.log = lambda *args, **kwargs: None
    return module, teacher


def under(module: LMDistillationModule, strategy: object) -> None:
    module.trainer = SimpleNamespace(strategy=strategy, global_step=0, current_epoch=0)


def test_teachers_join_the_module_tree_under_fsdp_only() -> None:
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    module, teacher = distiller()
    under(module, DDPStrategy())
    module.configure_model()
    assert isinstance(module.teachers, dict) and not any(m is teacher for m in module.modules())

    module, teacher = distiller()
    strategy = FSDPStrategy()
    under(module, strategy)
    module.configure_model()
    module.configure_model()  # called again (another stage of the same Trainer): nothing changes
    assert isinstance(module.teachers, FrozenModules) and module.teachers["big"] is teacher
    names = {name for name, m in module.named_modules() if m is teacher}
    assert names == {"teachers.big"}  # FSDP's auto-wrap policy walks named_modules: it reaches the teacher
    own = {id(p) for p in teacher.parameters()}
    assert own <= {id(p) for p in module.parameters()}
    assert not any(p.requires_grad for p in teacher.parameters())
    optimised = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.student.parameters()}
    state = module.state_dict()
    assert state and all(k.startswith(("net.", "terms.")) for k in state)
    module.load_state_dict(state, strict=True)  # a checkpoint without the teacher loads strictly
    module.train()
    assert module.student.training and not teacher.training and not module.teachers.training
    module.double()  # registered teachers follow the module (once)
    assert {p.dtype for p in teacher.parameters()} == {torch.float64}
    policy = strategy.kwargs["auto_wrap_policy"]
    chosen = policy._run_policy(module, set(), {})
    assert set(chosen) == {teacher}


def test_a_policy_function_keeps_its_choices_and_adds_the_teachers() -> None:
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    teacher, other = tiny(), tiny()
    policy = fsdp_units_for(functools.partial(size_based_auto_wrap_policy, min_num_params=1000), [teacher])
    assert policy(module=teacher, recurse=False, nonwrapped_numel=10)  # the teacher, whatever its size
    assert policy(module=other, recurse=False, nonwrapped_numel=10**6)  # what the policy itself wraps
    assert not policy(module=other, recurse=False, nonwrapped_numel=10)
    assert policy(module=other, recurse=True, nonwrapped_numel=10)  # the walk goes on to find the teachers


def test_an_int8_teacher_is_refused_under_fsdp() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    module, teacher = distiller()
    reduce_precision(teacher, "int8")
    under(module, FSDPStrategy())
    with pytest.raises(DistillError, match="^teacher 'big' has quantised weights, which FSDP cannot shard"):
        module.configure_model()


def test_fsdp_wraps_the_teacher_as_its_own_unit_on_a_cpu_process_group(tmp_path: Path, monkeypatch) -> None:
    """Lightning's own FSDPStrategy._setup_model on a one-process gloo group (FSDP refuses the CPU unless given
    device_id=cpu, which Lightning leaves None there: the class FSDP is built from gets it)."""
    import torch.distributed as dist
    import torch.distributed.fsdp as fsdp
    from lightning.fabric.strategies.model_parallel import _load_raw_module_state
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    FSDP = fsdp.FullyShardedDataParallel

    class OnCpu(FSDP):
        def __init__(self, *args, device_id=None, **kwargs) -> None:
            super().__init__(*args, device_id=torch.device("cpu"), **kwargs)

    monkeypatch.setattr(fsdp, "FullyShardedDataParallel", OnCpu)
    module, teacher = distiller()
    batch = {"input_ids": torch.randint(0, 96, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    batch["labels"] = batch["input_ids"].clone()
    reference = copy.deepcopy(module)
    under(reference, None)
    expected = reference.training_step(batch, 0).item()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/group", rank=0, world_size=1)
    try:
        strategy = FSDPStrategy(auto_wrap_policy={LlamaDecoderLayer})
        strategy.parallel_devices = [torch.device("cpu")]
        under(module, strategy)
        module.configure_model()
        wrapped = strategy._setup_model(module)
        strategy.model = wrapped
        unit = module.teachers["big"]
        assert isinstance(unit, FSDP) and unit.module is teacher
        layers = [m for m in wrapped.modules() if isinstance(m, FSDP)]
        assert len(layers) == 1 + 1 + 4  # the root, the teacher, and each model's two decoder layers
        module.train()
        loss = strategy._forward_redirection(wrapped, module, "training_step", batch, 0)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        loss.backward()
        assert all(p.grad is not None for p in module.student.parameters())
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        module.optimizer_factory = functools.partial(torch.optim.Adam, lr=1e-3)  # with a state to save
        optimizer = module.configure_optimizers()
        optimizer.step()
        state = strategy.lightning_module_state_dict()
        assert state and all(k.startswith(("net.", "terms.")) for k in state)
        assert set(state) == set(reference.state_dict())
        saved = strategy.optimizer_state(optimizer)  # gathered as Lightning saves it: the student's moments only
        assert len(saved["state"]) == len(list(module.student.parameters()))
        _load_raw_module_state(state, wrapped, world_size=1, strict=True)  # a resume loads it strictly
        with FSDP.summon_full_params(unit):
            for key, value in teacher.state_dict().items():
                assert torch.equal(value, teacher_state[key]), key
    finally:
        dist.destroy_process_group()


def test_the_fsdp_trainer_composes_for_distill_lm(tmp_path: Path) -> None:
    import hydra
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = compose_config(["trainer=fsdp", f"paths.root_dir={tmp_path}"], name="lm")
    assert isinstance(hydra.utils.instantiate(cfg.trainer.strategy), FSDPStrategy)
    assert cfg.lm_teacher.dtype is None and cfg.lm_student.model.gradient_checkpointing is False
    result = run_cli(["trainer=fsdp", "lm_teacher.dtype=bfloat16", "--cfg", "job"], tmp_path, "distill.llm.train", 120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lightning.pytorch.strategies.FSDPStrategy" in result.stdout and "dtype: bfloat16" in result.stdout
