"""A student cut from its teacher (`student=pruned`, distill.cut): the cut network has the requested size and
runs, importance removes what matters least, a cut student is rebuilt from its checkpoint, and the whole job
runs with it (the baseline is the cut architecture initialised afresh)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tests.conftest import tiny_job
from tests.test_bad_input import assert_refused, run_main
from torch import nn

from distill.cut import ChannelCut, fit_shapes, prune, reinitialised, scored_copy
from distill.errors import DistillError
from distill.measure import count_parameters, flops_per_sample, weights_bytes
from distill.nets import MLP, ConvNet1d
from distill.train import main as train_main


def batches(n: int = 3, features: int = 40, classes: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    return [(torch.randn(64, features), torch.randint(0, classes, (64,))) for _ in range(n)]


def conv_teacher() -> nn.Module:
    torch.manual_seed(0)
    return ConvNet1d(input_shape=[40], num_classes=10, channels=[32, 32, 32], kernel_size=5)


@pytest.mark.parametrize("key", ["params", "flops", "bytes"])
def test_the_cut_is_the_largest_network_within_the_target(key: str) -> None:
    teacher = conv_teacher()
    example = batches(1)[0][0][:1]
    measure = {"params": count_parameters, "bytes": weights_bytes, "flops": lambda m: flops_per_sample(m, example)}
    full, weights = measure[key](teacher), [p.clone() for p in teacher.parameters()]
    target = full / 5
    student, info = ChannelCut(**{key: target}).cut(teacher, batches(), example, 10)
    got = measure[key](student)
    assert got <= target
    # One bisection step less pruning would exceed the target: the cut is as large as the target allows.
    scored = scored_copy(teacher, batches(), "taylor")
    larger = prune(scored, info["ratio"] - 0.02, example, 10, "taylor")
    assert measure[key](larger) > target
    assert student(torch.randn(7, 40)).shape == (7, 10)  # it runs, with the teacher's classes
    assert all(torch.equal(a, b) for a, b in zip(weights, teacher.parameters(), strict=True))  # teacher untouched


def test_a_ratio_removes_that_share_of_every_layer() -> None:
    teacher = MLP(input_shape=[40], num_classes=10, hidden=[100, 60])
    student, info = ChannelCut(ratio=0.5, importance="magnitude").cut(teacher, batches(), torch.randn(1, 40), 10)
    widths = [m.out_features for m in student.modules() if isinstance(m, nn.Linear)]
    assert widths == [50, 30, 10] and info["ratio"] == 0.5


@pytest.mark.parametrize("importance", ["taylor", "magnitude"])
def test_importance_removes_the_neurons_that_do_nothing(importance: str) -> None:
    """A hand-made network: half of its hidden neurons have zero weights in and out, so they contribute nothing
    (zero magnitude, zero gradient). Cutting half the neurons removes exactly those, and the cut network computes
    what the teacher computes."""
    torch.manual_seed(0)
    teacher = MLP(input_shape=[40], num_classes=10, hidden=[16])
    first, last = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    dead = torch.tensor([0, 3, 4, 7, 9, 10, 13, 15])
    with torch.no_grad():
        first.weight[dead] = 0
        first.bias[dead] = 0
        last.weight[:, dead] = 0
    student, _ = ChannelCut(ratio=0.5, importance=importance).cut(teacher, batches(), torch.randn(1, 40), 10)
    kept_first, kept_last = [m for m in student.modules() if isinstance(m, nn.Linear)]
    alive = [i for i in range(16) if i not in dead.tolist()]
    assert torch.equal(kept_first.weight, first.weight[alive]) and torch.equal(kept_last.weight, last.weight[:, alive])
    x = torch.randn(5, 40)
    assert torch.allclose(student.eval()(x), teacher.eval()(x), atol=1e-6)


def test_targets_the_teacher_meets_or_no_cut_reaches_are_refused() -> None:
    teacher = conv_teacher()
    example = torch.randn(1, 40)
    with pytest.raises(
        DistillError, match="pruning target larger than the teacher: parameters 1e\\+06 >= the teacher's"
    ):
        ChannelCut(params=1e6).cut(teacher, batches(), example, 10)
    with pytest.raises(DistillError, match="even the smallest cut of the teacher .* exceeds the target by parameters"):
        ChannelCut(params=50).cut(teacher, batches(), example, 10)
    with pytest.raises(DistillError, match="student.cut needs a size"):
        ChannelCut()
    with pytest.raises(DistillError, match="importance must be one of taylor, magnitude"):
        ChannelCut(ratio=0.5, importance="random")


def test_a_cut_network_is_rebuilt_from_the_teachers_config_and_its_weights() -> None:
    teacher = conv_teacher()
    student, _ = ChannelCut(ratio=0.6).cut(teacher, batches(), torch.randn(1, 40), 10)
    rebuilt = fit_shapes(conv_teacher(), student.state_dict())
    rebuilt.load_state_dict(student.state_dict())
    x = torch.randn(4, 40)
    assert torch.equal(rebuilt.eval()(x), student.eval()(x))
    assert count_parameters(rebuilt) == count_parameters(student) < count_parameters(teacher)
    fresh = reinitialised(student, seed=1)  # the baseline: same shapes, new weights
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in student.parameters()]
    assert not torch.equal(next(fresh.parameters()), next(student.parameters()))


def test_a_latency_target_is_met_as_the_report_measures_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cut measures latency with the report's function (here a stand-in proportional to the parameters, so
    that the test does not depend on this machine's timings)."""
    import distill.measure

    calls = []

    def fake_latency(model: nn.Module, example: torch.Tensor, batch_size: int, repeats: int = 30) -> float:
        calls.append((batch_size, repeats))
        return count_parameters(model) / 1e4

    monkeypatch.setattr(distill.measure, "latency_ms", fake_latency)
    teacher = conv_teacher()
    student, info = ChannelCut(latency_ms=0.5).cut(teacher, batches(), torch.randn(1, 40), 10, repeats=7)
    assert info["after"]["latency_ms_batch_1"] == count_parameters(student) / 1e4 <= 0.5
    assert info["before"]["latency_ms_batch_1"] == count_parameters(teacher) / 1e4
    assert set(calls) == {(1, 7)}  # batch 1, the report's repeats


@pytest.mark.slow
def test_the_job_distils_a_student_cut_to_the_budget(tmp_path: Path) -> None:
    """student=pruned on the tiny job: the student is the teacher cut to the budget's bytes, distilled; the baseline
    is the same architecture from scratch; the report says so; distill-eval rebuilds the checkpoint."""
    from tests.conftest import compose_config

    from distill.eval import evaluate
    from distill.spine import run

    overrides = tiny_job(tmp_path, "student=pruned", "student.fit.epochs=4", "student.baseline.epochs=4",
                         "budget.max_bytes=40000")  # fmt: skip
    report = run(compose_config(overrides))
    rows = {r["model"]: r for r in report["models"]}
    assert rows["student"]["bytes"] <= 40000 < rows["teacher:mlp_large"]["bytes"]
    assert rows["student"]["parameters"] == rows["baseline"]["parameters"] == report["cut"]["parameters"]["student"]
    assert report["cut"]["teacher"] == "mlp_large" and 0 < report["cut"]["ratio"] < 1
    assert rows["student"]["source"].startswith("cut from teacher 'mlp_large' (")
    assert "initialised afresh" in rows["baseline"]["source"]
    assert rows["student"]["meets_budget"] is True
    assert rows["student"]["accuracy"] > 0.5  # digits: it learnt
    saved = torch.load(tmp_path / "run" / "student.ckpt", weights_only=True)
    assert saved["cut"] is True and OmegaConf.create(saved["net"]).hidden == [512, 512]
    cfg = compose_config([f"ckpt_path={tmp_path}/run/student.ckpt", f"paths.output_dir={tmp_path}/eval",
                          f"paths.root_dir={tmp_path}"], name="eval")  # fmt: skip
    evaluated = evaluate(cfg)["models"][0]
    assert evaluated["accuracy"] == rows["student"]["accuracy"]


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["student=pruned"], "student.cut needs a size"),
        (["student=pruned", "teacher=[]", "budget.max_params=100"], "student.cut: there is no teacher to cut"),
        (["student=pruned", "student.cut.teacher=cnn", "budget.max_params=1000"],
         "student.cut.teacher: no teacher named 'cnn' (teachers: mlp_large)"),
        (["student=pruned", "student.cut.params=10000000"], "pruning target larger than the teacher"),
        (["student=pruned", "student.cut.params=50"], "even the smallest cut of the teacher"),
    ],
)  # fmt: skip
def test_bad_cuts_exit_2(extra: list[str], expect: str, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    (tmp_path / "logs" / "cache").mkdir(parents=True)
    job = [o for o in tiny_job(tmp_path) if not ("teacher=[]" in extra and o.startswith("teacher"))]
    code, out, err = run_main(train_main, [*job, *extra], capfd)
    assert_refused(code, out, err, expect, tmp_path / "logs" / "cache")


def tiny_lm_cut_job(tmp_path: Path, *extra: str) -> list[str]:
    """tiny_lm_job with lm_student=pruned: the tiny teacher (hidden 32, 2 layers, 2 heads, 64 neurons) cut."""
    from tests.test_llm_pipeline import tiny_lm_job

    kept = [o for o in tiny_lm_job(tmp_path) if not o.startswith("lm_student.model.")]
    return [*kept, "lm_student=pruned", "lm_student.fit.epochs=2", "lm_student.fit.batch_size=16", *extra]


@pytest.mark.slow
def test_distill_lm_distils_a_student_cut_from_its_teacher(tmp_path: Path) -> None:
    """lm_student=pruned: the teacher cut to the given sizes (a layer, a head, half the neurons and channels),
    distilled; the student alone is that architecture from scratch; the exported folder has the cut sizes."""
    from tests.conftest import compose_config
    from transformers import AutoConfig

    from distill.spine import run

    sizes = ["hidden_size=16", "num_hidden_layers=1", "num_attention_heads=1", "num_key_value_heads=1",
             "intermediate_size=32"]  # fmt: skip
    overrides = tiny_lm_cut_job(tmp_path, *[f"lm_student.cut.sizes.{s}" for s in sizes])
    report = run(compose_config(overrides, name="lm"))
    rows = {r["model"]: r for r in report["models"]}
    assert report["cut"]["sizes_after"] == {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 1,
                                            "num_key_value_heads": 1, "intermediate_size": 32}  # fmt: skip
    assert len(report["cut"]["layers_kept"]) == 1
    assert rows["student"]["parameters"] == rows["baseline"]["parameters"] == report["cut"]["parameters_after"]
    assert rows["student"]["source"].startswith("cut from teacher 'tiny_llama' (num_hidden_layers 1, hidden_size 16")
    assert rows["student"]["perplexity"] < 280  # it learnt something of the 280-token vocabulary
    exported = AutoConfig.from_pretrained(tmp_path / "run" / "student_hf")
    assert (exported.hidden_size, exported.num_hidden_layers, exported.intermediate_size) == (16, 1, 32)
    assert report["search"]["perplexity"] == rows["student"]["val_perplexity"]


def test_an_lm_cut_larger_than_the_teacher_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from distill.llm.train import main as lm_main

    (tmp_path / "logs" / "cache").mkdir(parents=True)
    code, out, err = run_main(lm_main, tiny_lm_cut_job(tmp_path, "lm_student.cut.sizes.hidden_size=64"), capfd)
    assert_refused(code, out, err, "pruning target larger than the teacher", tmp_path / "logs" / "cache")


@pytest.mark.slow
def test_a_cut_student_with_dropout_is_the_same_whether_the_teacher_came_from_the_cache(tmp_path: Path) -> None:
    """The cut of mlp_large keeps its dropout, which draws from torch's global generator; a teacher trained in the
    run draws from it too, a cached one does not. Every stage is seeded, so both runs distil the same student
    (what lets a search rerun its best trial as the same model)."""
    from tests.conftest import compose_config

    from distill.spine import run

    job = ["student=pruned", "student.cut.ratio=0.8", "student.fit.epochs=2", "student.baseline=null"]
    first = run(compose_config(tiny_job(tmp_path, *job)))
    second = run(compose_config(tiny_job(tmp_path, *job, f"paths.output_dir={tmp_path}/run2")))
    assert {r["model"]: r["source"] for r in second["models"]}["teacher:mlp_large"].startswith("cache")
    a = torch.load(tmp_path / "run" / "student.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "run2" / "student.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first["search"]["accuracy"] == second["search"]["accuracy"]
