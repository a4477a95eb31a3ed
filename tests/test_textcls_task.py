"""Text classification on the spine (`distill-train task=text_classification`): the whole job on small
files, the loss terms and the teacher-initialised student in it, the report's columns, the Hugging Face
folder of the student, ONNX and int8 stages, and each bad input refused in one line before training."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import compose_config
from tests.test_bad_input import assert_refused, run_main

from distill.errors import DistillError
from distill.train import main as train_main

WORDS = {
    "sport": "ball goal team match score coach league player win field".split(),
    "food": "bread cheese soup salt sugar bake cook taste fruit meal".split(),
    "music": "song band drum guitar tune chord sing piano album beat".split(),
}
COMMON = "the a of and to in is it on with".split()


def write_rows(path: Path, n: int, seed: int, pairs: bool = False) -> Path:
    """`n` CSV rows of short texts whose words say their class (and a second text, with `pairs`)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "other", "label"] if pairs else ["text", "label"])
        for i in range(n):
            label = list(WORDS)[i % 3]
            words = [
                str(rng.choice(WORDS[label] if rng.random() < 0.6 else COMMON)) for _ in range(rng.integers(4, 10))
            ]
            row = [" ".join(words)] + ([" ".join(rng.choice(COMMON, 3))] if pairs else []) + [label]
            writer.writerow(row)
    return path


TINY_MODELS = [
    "teacher.bert_small.net.hidden_size=32", "teacher.bert_small.net.num_layers=2", "teacher.bert_small.net.heads=2",
    "teacher.bert_small.net.intermediate_size=64", "teacher.bert_small.fit.epochs=8",
    "teacher.bert_small.fit.optimizer.lr=0.003",
    "student.net.hidden_size=16", "student.net.num_layers=1", "student.net.heads=2", "student.net.intermediate_size=32",
    "student.fit.epochs=2",
]  # fmt: skip


def text_job(tmp_path: Path, *extra: str, rows: int = 200) -> list[str]:
    """Overrides for a seconds-long text classification run on a small CSV file."""
    train = write_rows(tmp_path / "train.csv", rows, seed=0)
    return [
        "task=text_classification", "data=text_files", f"data.train={train}", "data.vocab_size=200",
        "data.max_length=16", "data.val_fraction=0.2", "data.test_fraction=0.2", *TINY_MODELS,
        "report.latency_repeats=2", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run",
        "callbacks.progress_bar.refresh_rate=0", *extra,
    ]  # fmt: skip


def run_job(overrides: list[str]) -> dict:
    from distill.spine import run

    return run(compose_config(overrides))


def test_the_task_option_selects_text_data_and_models() -> None:
    cfg = compose_config(["task=text_classification"])
    assert cfg.task._target_ == "distill.tasks.TextClassificationTask"
    assert cfg.data.source == "stdlib_docstrings" and list(cfg.teacher) == ["bert_small"]
    assert cfg.student.net._target_ == "distill.textcls.models.bert_classifier"
    assert list(cfg.report.latency_batch_sizes) == [1, 32]
    assert compose_config([]).task._target_ == "distill.tasks.ClassificationTask"  # the default is unchanged


@pytest.mark.slow
def test_whole_job_with_transformer_terms_onnx_and_int8(tmp_path: Path) -> None:
    report = run_job(
        text_job(tmp_path, "distill=[hard,kd,tinybert_hidden,tinybert_attention,minilm]", "compress=[onnx,int8]")
    )
    rows = {r["model"]: r for r in report["models"]}
    assert list(rows) == ["teacher:bert_small", "baseline", "student", "compress:onnx", "compress:int8"]
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1
        assert row["latency_ms_batch_1"] > 0 and row["latency_ms_batch_32"] > 0
        assert row["tokens_per_second"] == pytest.approx(32 * 16 / (row["latency_ms_batch_32"] / 1000))
    assert rows["teacher:bert_small"]["accuracy"] > 0.6  # the words say the class: the teacher learns it
    assert rows["compress:onnx"]["accuracy"] == pytest.approx(rows["student"]["accuracy"])  # parity
    assert rows["compress:onnx"]["stage"]["max_abs_diff"] < 1e-4
    assert rows["compress:int8"]["bytes"] < rows["compress:onnx"]["bytes"]
    assert report["sequence_length"] == 16
    # every term trained: each logged a finite value every epoch
    with open(tmp_path / "run" / "csv" / "metrics.csv", encoding="utf-8") as f:
        logged = list(csv.DictReader(f))
    for name in ("hard", "kd", "tinybert_hidden", "tinybert_attention", "minilm"):
        values = [float(r[f"student/train/{name}"]) for r in logged if r.get(f"student/train/{name}")]
        assert len(values) == 2 and all(np.isfinite(values)), name
    # The student as a Hugging Face folder, with its tokenizer and class names.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "run" / "student_hf"
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert model.config.id2label == {0: "food", 1: "music", 2: "sport"}
    saved = torch.load(tmp_path / "run" / "student.ckpt", weights_only=True)
    assert saved["class_names"] == ["food", "music", "sport"]
    encoded = tokenizer(["ball goal team"], return_tensors="pt")
    assert model(**encoded).logits.shape == (1, 3)


@pytest.mark.slow
def test_teacher_initialised_student_starts_from_the_teachers_layers(tmp_path: Path, monkeypatch) -> None:
    from distill.tasks import text_classification

    seen = {}
    original = text_classification.init_from_teacher

    def spy(student, teacher, every, layers):
        chosen = original(student, teacher, every, layers)
        s, t = student.model.bert, teacher.model.bert
        seen["chosen"] = chosen
        seen["equal"] = all(
            torch.equal(s.encoder.layer[i].output.dense.weight, t.encoder.layer[j].output.dense.weight)
            for i, j in enumerate(chosen)
        ) and torch.equal(s.embeddings.word_embeddings.weight, t.embeddings.word_embeddings.weight)
        return chosen

    monkeypatch.setattr(text_classification, "init_from_teacher", spy)
    same_width = ["student.net.hidden_size=32", "student.net.intermediate_size=64", "student.net.num_layers=1"]
    report = run_job(text_job(tmp_path, *same_width, "student.init_from_teacher={every: 2}"))
    assert seen == {"chosen": [0], "equal": True}
    assert {r["model"] for r in report["models"]} >= {"student", "baseline"}


@pytest.mark.slow
def test_a_whole_job_on_sentence_pairs(tmp_path: Path) -> None:
    train = write_rows(tmp_path / "pairs.csv", 90, seed=1, pairs=True)
    report = run_job(text_job(tmp_path, f"data.train={train}", "data.text_pair_field=other", "student.fit.epochs=1"))
    assert {r["model"] for r in report["models"]} == {"teacher:bert_small", "baseline", "student"}


# -- bad input: one line, exit 2, before training ------------------------------------------------------


def cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    from transformers import BertConfig, BertForMaskedLM

    from distill.textcls.models import bert_classifier

    good = write_rows(tmp_path / "good.csv", 60, seed=2)
    missing_text = tmp_path / "missing_text.jsonl"
    missing_text.write_text('{"text": "ball goal", "label": "sport"}\n{"label": "food"}\n')
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    two_labels = bert_classifier(vocab_size=200, num_labels=2, hidden_size=8, heads=2, num_layers=1)
    two_labels.model.save_pretrained(str(tmp_path / "two_labels"))
    small = BertConfig(vocab_size=200, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    BertForMaskedLM(small).save_pretrained(str(tmp_path / "mlm"))
    pretrained = "teacher=[bert_base] teacher.bert_base.net.path=%s teacher.bert_base.fit=null"
    return [
        ([f"data.train={good}", f"data.tokenizer={tmp_path}/no_such_tokenizer"], "tokenizer directory not found"),
        ([f"data.train={missing_text}"], "line 2: no field 'text'"),
        ([f"data.train={empty}"], "no examples (the file has no rows)"),
        ([f"data.train={good}", *(pretrained % (tmp_path / "two_labels")).split()],
         "predicts 2 classes but the data have 3"),
        ([f"data.train={good}", *(pretrained % (tmp_path / "mlm")).split()],
         "is not a sequence-classification model (BertForMaskedLM)"),
        ([f"data.train={good}", "student.init_from_teacher={every: 2}"], "differ in hidden_size"),
        ([f"data.train={good}", "data.max_length=600"], "has 512 positions but data.max_length is 600"),
        ([f"data.train={good}", "student=pruned", "student.cut.ratio=0.5"], "text classification students are not cut"),
    ]  # fmt: skip


@pytest.mark.slow
def test_bad_text_input_is_refused_in_one_line(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    (tmp_path / "run_root" / "logs" / "cache").mkdir(parents=True)
    for extra, expect in cases(tmp_path):
        args = [a for a in text_job(tmp_path / "run_root", rows=60) if not a.startswith("data.train=")]
        if any(e.startswith("teacher=") for e in extra):  # another teacher: not the tiny bert_small's settings
            args = [a for a in args if not a.startswith("teacher.bert_small.")]
        if "student=pruned" in extra:  # no network of its own: the tiny bert_tiny's settings do not apply
            args = [a for a in args if not a.startswith("student.net.")]
        code, out, err = run_main(train_main, [*args, *extra], capfd)
        assert_refused(code, out, err, expect, tmp_path / "run_root" / "logs" / "cache")


def test_transformer_terms_read_their_settings_from_the_models() -> None:
    from omegaconf import OmegaConf

    from distill.tasks.text_classification import TextClassificationTask
    from distill.textcls.models import bert_classifier

    cfg = compose_config(["task=text_classification", "distill=[hard,kd,tinybert_hidden,minilm]"])
    student = bert_classifier(vocab_size=50, num_labels=3, hidden_size=8, heads=2, num_layers=1)
    teacher = bert_classifier(vocab_size=50, num_labels=3, hidden_size=16, heads=2, num_layers=3)
    TextClassificationTask.fill_term_settings(cfg, student, {"bert_small": teacher})
    hidden, minilm = OmegaConf.to_container(cfg.distill.tinybert_hidden), OmegaConf.to_container(cfg.distill.minilm)
    assert (hidden["student_num_layers"], hidden["teacher_num_layers"]) == (1, 3)
    assert hidden["student_prefix"] == hidden["teacher_prefix"] == "model.bert"
    assert (minilm["student_layer"], minilm["teacher_layer"], minilm["student_heads"], minilm["teacher_heads"]) == (
        1,
        3,
        2,
        2,
    )
    cfg.distill.minilm.student_layer = 1
    with pytest.raises(DistillError, match="needs a teacher"):
        TextClassificationTask.fill_term_settings(cfg, student, {})


@pytest.mark.slow
def test_glue_recipe_runs_on_local_files_in_the_hub_layout(tmp_path: Path, monkeypatch) -> None:
    """experiment=glue_sst2 with a tiny BERT-base stand-in and a few parquet rows where the recipe looks."""
    import pandas as pd
    from transformers import BertConfig, BertForMaskedLM

    from distill.textcls.tokenizer import trained_tokenizer

    rng = np.random.default_rng(3)
    frames = {}
    for split, n in (("train", 80), ("validation", 30)):
        labels = rng.integers(0, 2, n)
        words = [WORDS["sport"], WORDS["food"]]
        text = [" ".join(rng.choice(words[y], 5)) for y in labels]
        frames[split] = pd.DataFrame({"sentence": text, "label": labels, "idx": np.arange(n)})
    glue = tmp_path / "glue" / "sst2"
    glue.mkdir(parents=True)
    for split, frame in frames.items():
        frame.to_parquet(glue / f"{split}-00000-of-00001.parquet")
    tokenizer, _ = trained_tokenizer("wordpiece", list(frames["train"].sentence), 100, True, tmp_path / "tok")
    bert = tmp_path / "bert-base"
    small = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    BertForMaskedLM(small).save_pretrained(str(bert))
    tokenizer.save_pretrained(str(bert))
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "glue"))
    monkeypatch.setenv("BERT_BASE_DIR", str(bert))
    report = run_job([
        "experiment=glue_sst2", "data.max_length=16", "data.val_fraction=0.2", "teacher.bert_base.fit.epochs=1",
        "teacher.bert_base.fit.optimizer.lr=0.001", "student.net.hidden_size=16", "student.net.num_layers=1",
        "student.net.heads=2", "student.net.intermediate_size=32", "student.net.max_positions=64", "student.fit.epochs=1", "report.latency_repeats=2",
        f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run", "callbacks.progress_bar.refresh_rate=0",
    ])  # fmt: skip
    rows = {r["model"]: r for r in report["models"]}
    assert set(rows) == {"teacher:bert_base", "baseline", "student"}
    assert (
        report["class_names"] == ["0", "1"] and rows["student"]["parameters"] < rows["teacher:bert_base"]["parameters"]
    )


@pytest.mark.slow
def test_the_student_is_the_same_whether_the_teacher_came_from_the_cache(tmp_path: Path) -> None:
    """Dropout draws from torch's global generator: a teacher and baseline trained in the run draw from it, cached
    ones do not; each stage is seeded, so both runs distil the very same student."""
    first = run_job(text_job(tmp_path, "student.fit.epochs=1"))
    second = run_job(text_job(tmp_path, "student.fit.epochs=1", f"paths.output_dir={tmp_path}/run2"))
    sources = {r["model"]: r["source"] for r in second["models"]}
    assert sources["teacher:bert_small"].startswith("cache") and sources["baseline"].startswith("cache")
    a = torch.load(tmp_path / "run" / "student.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "run2" / "student.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["accuracy"] for r in first["models"]] == [r["accuracy"] for r in second["models"]]
