"""distill-lm as a user with local save_pretrained models meets it: generated batches answer each row's own
prompt, trainable weights stay in float32, pretrained models train in train mode, context lengths, the
report's trainable counts, errors in the right order, and cache keys that follow the content."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

pytest.importorskip("transformers")

from tests.builders import quiet_trainer, sentences  # noqa: E402
from tests.conftest import compose_config  # noqa: E402

from distill.errors import DistillError  # noqa: E402
from distill.fingerprint import folder_fingerprint  # noqa: E402
from distill.llm.data import IGNORE_INDEX, SequenceBatches, TextDataModule  # noqa: E402
from distill.llm.models import causal_lm, check_positions, check_precision  # noqa: E402
from distill.llm.module import LMDistillationModule  # noqa: E402

TINY = {"model_type": "llama", "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
SMALL = {"hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32, **TINY}


def sums(path: Path, n: int = 40) -> list[dict]:
    """Instruction pairs of the kind the issue shows: '11+76=' -> '87'."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"prompt": f"{a}+{b}=", "completion": str(a + b)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def pair_data(tmp_path: Path, **kwargs) -> TextDataModule:
    sums(tmp_path / "sums.jsonl")
    settings = dict(source="jsonl", paths=[str(tmp_path / "sums.jsonl")], prompt_field="prompt",
                    completion_field="completion", vocab_size=280, seq_len=16, cache_dir=str(tmp_path / "cache"),
                    batch_size=8, val_fraction=0.1, test_fraction=0.1)  # fmt: skip
    dm = TextDataModule(**{**settings, **kwargs})
    dm.setup()
    return dm


trainer = functools.partial(quiet_trainer, num_sanity_val_steps=0)


def saved_llama(folder: Path, vocab: int, dtype: torch.dtype = torch.float32, **config) -> Path:
    torch.manual_seed(0)
    causal_lm(vocab, **{**SMALL, "hidden_size": 32, **config}).to(dtype).save_pretrained(folder)
    return folder


# -- 1. on-policy and sequence-level batches --------------------------------------------------------


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_generated_batches_answer_each_rows_own_prompt(tmp_path: Path, pad_is_eos: bool) -> None:
    dm = pair_data(tmp_path)
    eos = dm.eos_token_id
    pad = eos if pad_is_eos else dm.pad_token_id
    torch.manual_seed(0)
    student = causal_lm(dm.vocab_size, **SMALL)
    # Make the end-of-text token likely, so that completions end at it well before the row does.
    bias = torch.zeros(dm.vocab_size)
    bias[eos] = 3.0
    student.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    module = LMDistillationModule(student, {}, {}, optimizer=lambda p: None, pad_token_id=pad, eos_token_id=eos,
                                  prompt_len=4)  # fmt: skip
    batch = next(iter(dm.train_dataloader(16)))
    prompts = dm.prompt_lengths["train"][batch["index"]]
    torch.manual_seed(1)
    out = module.generate_batch(student, batch)

    ids, mask, labels = out["input_ids"], out["attention_mask"], out["labels"]
    assert ids.shape == batch["input_ids"].shape
    positions = torch.arange(ids.shape[1])
    ended_early = 0
    for i, p in enumerate(prompts.tolist()):
        # exactly the row's own prompt, then the completion: never the reference answer or its eos
        assert torch.equal(ids[i, :p], batch["input_ids"][i, :p])
        assert dm.decode(ids[i, :p]).endswith("=") and "<|endoftext|>" not in dm.decode(ids[i, :p])
        real = int(mask[i].sum())
        assert bool(mask[i, :real].all()) and not bool(mask[i, real:].any())  # right-padded
        scored = labels[i] != IGNORE_INDEX
        assert torch.equal(scored, (positions >= p) & (positions < real))  # -100 exactly on prompt and padding
        completion = ids[i, p:real]
        assert int(scored.sum()) == len(completion) > 0
        assert torch.equal(labels[i, p:real], completion)
        eos_at = (completion == eos).nonzero().flatten().tolist()
        assert eos_at in ([], [len(completion) - 1])  # it ends at its first eos, or where the row ends
        if eos_at:
            ended_early += real < ids.shape[1]
        else:
            assert real == ids.shape[1]
        assert bool((ids[i, real:] == pad).all())
    assert ended_early >= len(prompts) // 2

    # The completions are what the model samples from the left-padded prompts.
    width = int(prompts.max())
    left = torch.full((len(prompts), width), pad)
    left_mask = torch.zeros_like(left)
    for i, p in enumerate(prompts.tolist()):
        left[i, width - p :], left_mask[i, width - p :] = batch["input_ids"][i, :p], 1
    torch.manual_seed(1)
    direct = student.eval().generate(input_ids=left, attention_mask=left_mask, do_sample=True, top_k=0, top_p=1.0,
                                     max_new_tokens=ids.shape[1] - int(prompts.min()), pad_token_id=pad,
                                     eos_token_id=eos)  # fmt: skip
    for i, p in enumerate(prompts.tolist()):
        real = int(mask[i].sum())
        assert torch.equal(ids[i, p:real], direct[i, width : width + real - p])


def test_plain_text_rows_take_their_first_prompt_len_real_tokens(tmp_path: Path) -> None:
    texts = [sentences(i, 60 + 40 * i) for i in range(6)]
    for i, text in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(text)
    dm = TextDataModule(source="text", paths=[str(tmp_path)], vocab_size=280, seq_len=48, mode="pad",
                        cache_dir=str(tmp_path / "cache"), val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    dm.setup()
    student = causal_lm(dm.vocab_size, **SMALL)
    module = LMDistillationModule(student, {}, {}, optimizer=lambda p: None, pad_token_id=dm.pad_token_id,
                                  eos_token_id=dm.eos_token_id, prompt_len=5)  # fmt: skip
    batch = next(iter(dm.train_dataloader(4)))
    assert module.prompt_lengths(batch).tolist() == [5] * len(batch["input_ids"])
    out = module.generate_batch(student, batch)
    assert torch.equal(out["input_ids"][:, :5], batch["input_ids"][:, :5])
    assert bool((out["labels"][:, :5] == IGNORE_INDEX).all())
    assert int((out["labels"] != IGNORE_INDEX).sum()) == int(out["attention_mask"].sum()) - 5 * len(batch["index"])


# -- 2. float32 trainable weights, no 16-bit-weight precisions -----------------------------------


def test_pretrained_student_keeps_float32_weights_and_learns_under_bf16_mixed(tmp_path: Path) -> None:
    from distill.tasks.causal_lm import build_lm

    folder = saved_llama(tmp_path / "bf16", 64, torch.bfloat16)
    node = OmegaConf.create({"_target_": "distill.llm.models.causal_lm", "pretrained": str(folder),
                             "torch_dtype": "bfloat16"})  # fmt: skip
    assert causal_lm(64, pretrained=str(folder), torch_dtype="bfloat16").model.norm.weight.dtype == torch.bfloat16
    student = build_lm(node, "student", 64, 0)
    assert {p.dtype for p in student.parameters() if p.requires_grad} == {torch.float32}

    norms = {n: m.weight.detach().clone() for n, m in student.named_modules() if type(m).__name__ == "LlamaRMSNorm"}
    assert len(norms) == 3  # input and post-attention norms of the layer, and the final norm
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (16, 12), generator=g)
    loader = SequenceBatches({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}, 4)
    module = LMDistillationModule(student, {}, {}, optimizer=lambda p: torch.optim.AdamW(p, lr=2e-5))
    trainer(max_steps=5, precision="bf16-mixed", limit_val_batches=0).fit(module, loader)
    assert module.global_step == 5
    modules = dict(student.named_modules())
    for name, before in norms.items():
        after = modules[name].weight.detach()
        assert after.dtype == torch.float32 and bool((after != before).all()), name

    lora = OmegaConf.merge(node, {"lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}})
    adapted = build_lm(lora, "student", 64, 0)
    trainable = {p.dtype for p in adapted.parameters() if p.requires_grad}
    frozen = {p.dtype for p in adapted.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "BF16-TRUE", "transformer-engine-float16"])
def test_sixteen_bit_weights_are_refused(tmp_path: Path, precision: str) -> None:
    with pytest.raises(DistillError) as err:
        check_precision(precision)
    assert str(err.value) == (
        f"trainer.precision={precision} would store the trained weights in 16 bits, where small updates round "
        "away; use bf16-mixed (or 16-mixed): 16-bit compute, float32 weights"
    )
    for fine in ("bf16-mixed", "16-mixed", "32-true", 32, "bf16"):
        check_precision(fine)


def test_the_pipeline_refuses_bf16_true_before_reading_data(tmp_path: Path) -> None:
    from distill.spine import run

    cfg = compose_config([f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run", "lm_data=text",
                          f"lm_data.paths=[{tmp_path}/missing.txt]", "trainer.precision=bf16-true"], name="lm")  # fmt: skip
    with pytest.raises(DistillError, match=r"^trainer.precision=bf16-true would store the trained weights in 16"):
        run(cfg)
    qwen = compose_config(["lm_experiment=qwen2.5_1.5b_to_0.5b"], name="lm")
    assert qwen.trainer.precision == "bf16-mixed"


# -- 3. train mode -------------------------------------------------------------------------------


def test_pretrained_models_train_in_train_mode_and_teachers_stay_in_eval(tmp_path: Path) -> None:
    folder = saved_llama(tmp_path / "dropout", 40, attention_dropout=0.3)
    student = causal_lm(40, pretrained=str(folder))
    teacher = causal_lm(40, pretrained=str(folder))
    assert not student.training and student.config.attention_dropout == 0.3  # from_pretrained gives eval mode
    seen: list[tuple[bool, bool, bool]] = []

    class Spy(LMDistillationModule):
        def training_step(self, batch, batch_idx):
            seen.append((self.student.training, self.student.model.layers[0].self_attn.training, teacher.training))
            return super().training_step(batch, batch_idx)

    ids = torch.randint(0, 40, (8, 10), generator=torch.Generator().manual_seed(0))
    split = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    from distill.llm.losses import ForwardKL

    module = Spy(student, {"t": teacher}, {"kl": ForwardKL()},
                 optimizer=lambda p: torch.optim.SGD(p, lr=0.01))  # fmt: skip
    trainer(max_epochs=2, num_sanity_val_steps=2).fit(module, SequenceBatches(split, 4), SequenceBatches(split, 4))
    assert seen == [(True, True, False)] * 4  # after every validation too


def test_classification_nets_built_in_eval_mode_train_in_train_mode() -> None:
    from distill.data import TensorBatches
    from distill.losses import KDLoss
    from distill.modules import DistillationModule, SupervisedModule

    seen: list[tuple[str, bool, bool]] = []

    def spy(cls: type) -> type:
        class Spy(cls):
            def training_step(self, batch, batch_idx):
                teachers = getattr(self, "teachers", {})
                seen.append((cls.__name__, self.net[1].training, any(t.training for t in teachers.values())))
                return super().training_step(batch, batch_idx)

        return Spy

    g = torch.Generator().manual_seed(0)
    loader = TensorBatches(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g), batch_size=16)

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3)).eval()

    adam = lambda params: torch.optim.Adam(params, lr=1e-2)  # noqa: E731
    trainer(max_epochs=1).fit(spy(SupervisedModule)(net(), adam, num_classes=3), loader)
    teacher = net()
    module = spy(DistillationModule)(net(), {"t": teacher}, {"kd": KDLoss(1.0)}, adam, num_classes=3,
                                     example_input=torch.randn(2, 6))  # fmt: skip
    trainer(max_epochs=1).fit(module, loader)
    assert seen == [("SupervisedModule", True, False)] * 2 + [("DistillationModule", True, False)] * 2
    assert not teacher.training


# -- 4. context length ---------------------------------------------------------------------------


def test_lengths_beyond_the_models_positions_are_refused() -> None:
    gpt2 = causal_lm(50, model_type="gpt2", n_embd=16, n_layer=1, n_head=2, n_positions=24)
    llama = causal_lm(50, **{**SMALL, "max_position_embeddings": 32})
    check_positions({"student": gpt2, "teacher": llama}, {"lm_data.seq_len=24": 24})
    with pytest.raises(DistillError) as err:
        check_positions({"student": gpt2}, {"lm_data.seq_len=25": 25})
    assert str(err.value) == "lm_data.seq_len=25 exceeds the student's max_position_embeddings (24)"
    with pytest.raises(DistillError) as err:
        check_positions({"student": gpt2, "teacher": llama}, {"x (20 + 13)": 33})
    assert str(err.value) == "x (20 + 13) exceeds the student's max_position_embeddings (24)"
    with pytest.raises(DistillError) as err:
        check_positions({"student": llama, "teacher": llama}, {"lm_data.seq_len=33": 33})
    assert str(err.value) == "lm_data.seq_len=33 exceeds the student's max_position_embeddings (32)"
    with pytest.raises(IndexError):  # what GPT-2 does without the check
        gpt2(input_ids=torch.zeros(1, 25, dtype=torch.long))


def text_job(tmp: Path, *extra: str) -> list[str]:
    return [
        "lm_data=text", f"lm_data.paths=[{tmp}/corpus]", "lm_data.vocab_size=280", "lm_data.seq_len=32",
        "lm_data.batch_size=16", "lm_data.val_fraction=0.2", "lm_data.test_fraction=0.2",
        "lm_teacher.model.hidden_size=32", "lm_teacher.model.num_hidden_layers=1",
        "lm_teacher.model.intermediate_size=64", "lm_teacher.model.num_attention_heads=2",
        "lm_teacher.model.num_key_value_heads=2", "lm_teacher.fit.epochs=1", "lm_teacher.fit.batch_size=16",
        "lm_student.model.hidden_size=16", "lm_student.model.num_hidden_layers=1",
        "lm_student.model.intermediate_size=32", "lm_student.model.num_attention_heads=2",
        "lm_student.model.num_key_value_heads=2", "lm_student.fit.epochs=1", "lm_student.fit.batch_size=16",
        "lm_student.fit.train_fraction=null", "samples.count=1", "samples.prompt_len=8", "samples.max_new_tokens=8",
        "report.latency_repeats=1", "report.latency_batch_sizes=[1]", f"paths.root_dir={tmp}",
        f"paths.output_dir={tmp}/run", "callbacks.progress_bar.refresh_rate=0", *extra,
    ]  # fmt: skip


def write_corpus(tmp: Path, seed: int = 0) -> None:
    folder = tmp / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(5):
        (folder / f"doc{i}.txt").write_text(sentences(seed * 10 + i, 1500))


def test_the_pipeline_checks_lengths_against_teacher_and_student(tmp_path: Path) -> None:
    from distill.spine import run

    write_corpus(tmp_path)
    cases = [
        (["lm_teacher.model.max_position_embeddings=24"],
         "lm_data.seq_len=32 exceeds the teacher's max_position_embeddings (24)"),
        (["lm_student.model.max_position_embeddings=24"],
         "lm_data.seq_len=32 exceeds the student's max_position_embeddings (24)"),
        (["lm_student.model.max_position_embeddings=32", "samples.max_new_tokens=40"],
         "samples.prompt_len + samples.max_new_tokens = 8 + 40 exceeds the student's max_position_embeddings (32)"),
    ]  # fmt: skip
    for overrides, message in cases:
        with pytest.raises(DistillError) as err:
            run(compose_config(text_job(tmp_path, *overrides), name="lm"))
        assert str(err.value) == message
    assert not (tmp_path / "logs" / "cache").exists() or not list((tmp_path / "logs" / "cache").glob("lm-*.pt"))


# -- 5. the report's trainable parameters; 7. cache keys for pretrained folders ------------------


@pytest.mark.slow
def test_report_counts_what_trained_in_this_run(tmp_path: Path) -> None:
    from distill.spine import run

    write_corpus(tmp_path)
    probe = compose_config(text_job(tmp_path), name="lm")
    dm = TextDataModule(**{k: v for k, v in OmegaConf.to_container(probe.lm_data, resolve=True).items()
                           if k != "_target_"})  # fmt: skip
    dm.setup()
    saved_llama(tmp_path / "teacher", dm.vocab_size)
    saved_llama(tmp_path / "student", dm.vocab_size)
    overrides = [a for a in text_job(tmp_path) if not a.startswith(("lm_teacher.", "lm_student."))]
    overrides += [
        "lm_teacher=pretrained", f"lm_teacher.model.pretrained={tmp_path}/teacher",
        "lm_student=lora", f"lm_student.model.pretrained={tmp_path}/student",
        "lm_student.model.lora.target_modules=[q_proj,v_proj]", "lm_student.model.lora.r=2",
    ]  # fmt: skip
    report = run(compose_config(overrides, name="lm"))
    rows = {r["model"]: r for r in report["models"]}
    adapters = 1 * 2 * 2 * (32 + 32)  # one layer; q and v; A (32 x 2) and B (2 x 32)
    assert rows["teacher:pretrained"]["trainable_parameters"] == 0
    assert rows["baseline"]["trainable_parameters"] == rows["student"]["trainable_parameters"] == adapters
    assert rows["student"]["parameters"] > 10 * adapters
    payloads = [
        json.loads(p.with_suffix(".json").read_text()) for p in (tmp_path / "logs" / "cache").glob("lm-baseline-*.pt")
    ]
    assert [p["model_files"] for p in payloads] == [folder_fingerprint(tmp_path / "student")]


# -- 6. errors in the right order and words ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "local", "message"),
    [
        ("{tmp}/no_such_model", True, "lm_teacher.model.pretrained={tmp}/no_such_model: folder not found"),
        ("{tmp}/no_such_model", False, "lm_teacher.model.pretrained={tmp}/no_such_model: folder not found"),
        ("someone/no-such-model", True, "lm_teacher.model.pretrained=someone/no-such-model: folder not found, nor "
         "in the local Hugging Face cache (lm_teacher.model.local_files_only=false to download it)"),
    ],
)  # fmt: skip
def test_missing_pretrained_folders_are_refused_before_the_data(
    tmp_path: Path, value: str, local: bool, message: str
) -> None:
    from distill.spine import run

    value, message = value.format(tmp=tmp_path), message.format(tmp=tmp_path)
    cfg = compose_config([f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run", "lm_data=text",
                          f"lm_data.paths=[{tmp_path}/missing.txt]", "lm_teacher=pretrained",
                          f"lm_teacher.model.pretrained={value}", f"lm_teacher.model.local_files_only={local}"],
                         name="lm")  # fmt: skip
    with pytest.raises(DistillError) as err:
        run(cfg)
    assert str(err.value) == message  # the folder, not the missing data file read after it


def test_folders_in_paths_are_read(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / ".hidden").mkdir()
    for name, seed in (("b.md", 1), ("a.txt", 2), ("sub/c.txt", 3), (".skip.txt", 4), (".hidden/d.txt", 5)):
        (docs / name).write_text(sentences(seed, 400))
    dm = TextDataModule(source="text", paths=[str(docs)], cache_dir=str(tmp_path / "cache"), vocab_size=280)
    assert [p.relative_to(docs).as_posix() for p in dm._existing_files()] == ["a.txt", "b.md", "sub/c.txt"]

    lines = tmp_path / "lines"
    lines.mkdir()
    for name in ("x.jsonl", "y.json", "z.txt"):
        (lines / name).write_text(json.dumps({"text": name}) + "\n")
    for source, fmt, expected in (("jsonl", None, ["x.jsonl", "y.json"]), ("hf", "json", ["x.jsonl", "y.json"]),
                                  ("hf", "text", ["z.txt"])):  # fmt: skip
        dm = TextDataModule(source=source, hf_format=fmt, paths=[str(lines)], cache_dir=str(tmp_path / "cache"))
        assert [p.name for p in dm._existing_files()] == expected, (source, fmt)
    items = TextDataModule(source="jsonl", paths=[str(lines)], cache_dir=str(tmp_path / "c"))._load_splits()
    assert "".join(d.text for split in ("train", "val", "test") for d in items[split]) == "x.jsonly.json"

    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError) as err:
        TextDataModule(source="text", paths=[str(tmp_path / "empty")]).setup()
    assert str(err.value) == f"text data folder {tmp_path / 'empty'} holds no file"
    with pytest.raises(DistillError) as err:
        TextDataModule(source="jsonl", paths=[str(docs)]).setup()
    assert str(err.value) == f"jsonl data folder {docs} holds no *.jsonl or *.json file"
    with pytest.raises(DistillError) as err:
        TextDataModule(source="hf", hf_format="parquet", paths=[str(lines)]).setup()
    assert str(err.value) == f"hf data folder {lines} holds no *.parquet file"


def test_extra_options_reach_a_pretrained_model_or_are_refused(tmp_path: Path) -> None:
    folder = saved_llama(tmp_path / "model", 40)
    plain = causal_lm(40, pretrained=str(folder))
    model = causal_lm(40, pretrained=str(folder), attn_implementation="eager", attention_dropout=0.25,
                      rms_norm_eps=1e-3)  # fmt: skip
    assert (plain.config._attn_implementation, plain.config.attention_dropout) == ("sdpa", 0.0)
    assert model.config._attn_implementation == "eager"
    assert (model.config.attention_dropout, model.config.rms_norm_eps) == (0.25, 1e-3)
    with pytest.raises(DistillError) as err:
        causal_lm(40, pretrained=str(folder), attn_implementation="eager", no_such_option=1, also_unknown=2)
    assert str(err.value) == (
        f"pretrained model '{folder}': unknown option(s) also_unknown, no_such_option "
        "(neither attributes of its config nor from_pretrained options)"
    )


# -- 7. cache keys follow the content ------------------------------------------------------------


@pytest.mark.slow
def test_other_text_under_the_same_path_gives_another_tokenizer_and_teacher(tmp_path: Path) -> None:
    from distill.spine import run

    def job() -> dict:
        return run(compose_config(text_job(tmp_path, "compress=[]"), name="lm"))

    def state(report: dict) -> tuple[set[str], str, int, int]:
        rows = {r["model"]: r for r in report["models"]}
        tokenizers = {p.name for p in (tmp_path / "data" / "lm").glob("tokenizer-*.json")}
        teacher = rows["teacher:tiny_llama"]
        return tokenizers, teacher["source"], teacher["trainable_parameters"], teacher["parameters"]

    write_corpus(tmp_path, seed=0)
    tokens_a, source, trainable, total = state(job())
    assert len(tokens_a) == 1 and source.startswith("trained, cached as lm-teacher-tiny_llama-")
    assert trainable == total  # a teacher trained here trains all of its parameters
    tokens, again, _, _ = state(job())
    assert tokens == tokens_a and again == "cache " + source.removeprefix("trained, cached as ")
    write_corpus(tmp_path, seed=1)  # other text under the same paths
    tokens_b, retrained, _, _ = state(job())
    assert len(tokens_b) == 2 and tokens_b > tokens_a
    assert retrained.startswith("trained, cached as ") and retrained != source


def test_fingerprint_covers_tokens_and_tokenizer(tmp_path: Path) -> None:
    write_corpus(tmp_path, seed=0)

    def data(**kwargs) -> TextDataModule:
        settings = dict(source="text", paths=[str(tmp_path / "corpus")], vocab_size=280, seq_len=32,
                        cache_dir=str(tmp_path / "cache"))  # fmt: skip
        dm = TextDataModule(**{**settings, **kwargs})
        dm.setup()
        return dm

    first = data()
    assert data().fingerprint() == first.fingerprint()
    first.tokenizer.save_pretrained(tmp_path / "tok")
    same_tokens = data(tokenizer=str(tmp_path / "tok"))
    assert torch.equal(same_tokens.tensors["train"]["input_ids"], first.tensors["train"]["input_ids"])
    assert same_tokens.fingerprint() == first.fingerprint()  # the same tokens from the same vocabulary
    assert data(seq_len=16).fingerprint() != first.fingerprint()
    assert data(vocab_size=300).fingerprint() != first.fingerprint()
    write_corpus(tmp_path, seed=1)
    assert data().fingerprint() != first.fingerprint()
