"""Evaluation by generation: scoring by hand, greedy and sampled completions of a model whose choices are
known, a LoRA model, the config checks, and a tiny `distill-lm` job on prompt/completion pairs."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tests.builders import sentences  # noqa: E402
from tests.conftest import compose_config  # noqa: E402

from distill.errors import DistillError  # noqa: E402
from distill.llm.generation import (  # noqa: E402
    GenerationEval,
    complete,
    evaluate_by_generation,
    exact_match,
    normalize,
    rouge_l,
    scores,
    side_by_side_markdown,
)
from distill.tasks import CausalLMTask  # noqa: E402

# A word-level vocabulary; the chain model below continues each word with a fixed next one.
WORDS = ["<pad>", "<eos>", "the", "cat", "sat", "down", "a", "dog", "ran", "away", "and", "then", "home", "on", "x"]
ID = {w: i for i, w in enumerate(WORDS)}
NEXT = {"cat": "sat", "sat": "down", "down": "<eos>", "dog": "ran", "ran": "away", "away": "and", "and": "then",
        "then": "home", "home": "dog", "<eos>": "x"}  # fmt: skip


def word_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(ID, unk_token="x"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # words joined by spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def chain_model() -> torch.nn.Module:
    """A real Llama whose greedy next token depends on the last token alone: NEXT[word] (else "x").

    Embeddings are one-hot, attention and MLP outputs are zero (the residual stream is the last
    token's embedding), and the output layer maps each one-hot to its successor with a large logit.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    v, hidden = len(WORDS), 16
    config = LlamaConfig(vocab_size=v, hidden_size=hidden, num_hidden_layers=1, intermediate_size=8,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(v, hidden))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(v, hidden)
        for word, i in ID.items():
            head[ID[NEXT.get(word, "x")], i] = 10.0
        model.lm_head.weight.copy_(head)
    return model


def left_padded(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [[ID[w] for w in p.split()] for p in prompts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), ID["<pad>"])
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


GREEDY = {"eos_token_id": ID["<eos>"], "pad_token_id": ID["<pad>"]}


# -- scoring by hand --------------------------------------------------------------------------------


def test_exact_match_compares_after_collapsing_whitespace() -> None:
    assert normalize("  the  cat\n\tsat ") == "the cat sat"
    assert exact_match([" the  cat\nsat "], ["the cat sat"]) == 1.0
    assert exact_match(["The cat sat", "the cat sat.", "the cat sat"], ["the cat sat"] * 3) == pytest.approx(1 / 3)
    with pytest.raises(DistillError, match="2 completions for 1 references"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(DistillError, match="no completions to score"):
        rouge_l([], [])


def test_rouge_l_is_the_f_measure_of_the_longest_common_subsequence_of_words() -> None:
    # LCS 3: precision 3/3, recall 3/4, F = 2PR / (P + R) = 6/7
    assert rouge_l(["the cat sat"], ["the cat sat down"]) == pytest.approx(6 / 7, abs=1e-6)
    assert rouge_l(["The CAT, sat!"], ["the cat sat down"]) == pytest.approx(6 / 7, abs=1e-6)  # case, punctuation
    # "sat the" against "the cat sat": LCS 1 (the order counts), P 1/2, R 1/3 -> F 2/5
    assert rouge_l(["sat the"], ["the cat sat"]) == pytest.approx(2 / 5, abs=1e-6)
    # words of any alphabet: LCS 2, P 1, R 2/3 -> F 4/5
    assert rouge_l(["кот сидел"], ["кот сидел тут"]) == pytest.approx(4 / 5, abs=1e-6)
    assert rouge_l(["!!"], ["a"]) == 0.0 and rouge_l([""], ["a"]) == 0.0
    # averaged over examples: (1 + 0) / 2
    got = scores(["the cat", "dog"], ["the cat", "cat"])
    assert got == {"exact_match": 0.5, "rouge_l": pytest.approx(0.5, abs=1e-6)}


def test_side_by_side_markdown_escapes_bars_and_line_breaks() -> None:
    table = side_by_side_markdown(
        [{"prompt": "a|b", "reference": "c\nd", "completions": {"teacher": "e", "student": ""}}]
    )
    assert table.splitlines() == [
        "| prompt | reference | teacher | student |",
        "|---|---|---|---|",
        "| a\\|b | c<br>d | e | *(empty)* |",
    ]
    assert side_by_side_markdown([]) == ""


# -- completing prompts ---------------------------------------------------------------------------


def test_greedy_completion_stops_at_eos_and_decodes_only_the_new_tokens() -> None:
    model, tokenizer = chain_model(), word_tokenizer()
    ids, mask = left_padded(["the cat", "a dog", "on the cat sat"])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, **GREEDY)
    # the chain itself: "cat" -> sat down <eos>, then the finished row is padded; "dog" -> ran away and then
    assert out[0, ids.shape[1] :].tolist() == [ID["sat"], ID["down"], ID["<eos>"], ID["<pad>"]]
    got = complete(model, ids, mask, tokenizer, max_new_tokens=4, batch_size=2, **GREEDY)
    assert got == ["sat down", "ran away and then", "down"]
    # one prompt at a time gives the same; max_new_tokens cuts a completion short
    assert complete(model, ids, mask, tokenizer, max_new_tokens=4, batch_size=1, **GREEDY) == got
    assert complete(model, ids, mask, tokenizer, max_new_tokens=2, **GREEDY) == ["sat down", "ran away", "down"]
    assert model.training  # left as it was (a freshly built model trains)
    with pytest.raises(DistillError, match="left-padded"):
        complete(model, ids.flip(1), mask.flip(1), tokenizer, max_new_tokens=2, **GREEDY)
    with pytest.raises(DistillError, match="max_new_tokens and batch_size must be >= 1"):
        complete(model, ids, mask, tokenizer, max_new_tokens=0, **GREEDY)


def test_sampled_completions_are_seeded_and_leave_the_random_state_alone() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, intermediate_size=32,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model, tokenizer = LlamaForCausalLM(config), word_tokenizer()
    ids, mask = left_padded(["the cat", "a dog ran", "home"])
    state = torch.get_rng_state()
    sampled = [complete(model, ids, mask, tokenizer, max_new_tokens=6, temperature=2.0, top_k=0, seed=s, **GREEDY)
               for s in (1, 1, 2)]  # fmt: skip
    assert torch.equal(torch.get_rng_state(), state)
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    # sampling from the single likeliest token is greedy decoding
    greedy = complete(model, ids, mask, tokenizer, max_new_tokens=6, **GREEDY)
    assert complete(model, ids, mask, tokenizer, max_new_tokens=6, temperature=0.5, top_k=1, **GREEDY) == greedy


def test_a_model_that_gives_the_references_scores_exact_match_one_also_with_lora() -> None:
    from peft import LoraConfig, get_peft_model

    tokenizer = word_tokenizer()
    ids, mask = left_padded(["the cat", "a dog"])
    settings = GenerationEval(examples=2, max_new_tokens=3, batch_size=8, temperature=0.7, top_k=1, side_by_side=1)
    chain = chain_model()
    lora = get_peft_model(chain_model(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    got = evaluate_by_generation({"chain": chain, "lora": lora}, ids, mask, [" sat  down", "ran away"], tokenizer,
                                 settings, **GREEDY)  # fmt: skip
    # "the cat" -> "sat down" (exact); "a dog" -> "ran away and" (LCS 2, P 2/3, R 1: F 4/5)
    expected = {"exact_match": 0.5, "rouge_l": pytest.approx((1 + 4 / 5) / 2, abs=1e-6)}
    for name in ("chain", "lora"):  # LoRA's B starts at zero: the base model's completions
        assert got.completions[name] == ["sat down", "ran away and"]
        assert got.metrics[name] == {**expected, **{f"{k}_sampled": v for k, v in expected.items()}}
    assert got.prompts == ["the cat", "a dog"]
    assert got.side_by_side(1) == [
        {"prompt": "the cat", "reference": " sat  down", "completions": {"chain": "sat down", "lora": "sat down"}}
    ]
    right = evaluate_by_generation({"chain": chain}, ids, mask, ["sat down", "ran away and"], tokenizer,
                                   GenerationEval(max_new_tokens=3, temperature=None), **GREEDY)  # fmt: skip
    assert right.metrics["chain"] == {"exact_match": 1.0, "rouge_l": pytest.approx(1.0)}  # greedy only


# -- settings and their checks ------------------------------------------------------------------------


def test_generation_eval_settings_from_the_config() -> None:
    cfg = compose_config([], name="lm")
    task = CausalLMTask()
    task.check_config(cfg)
    assert task.generation_eval == GenerationEval(examples=200, max_new_tokens=32, batch_size=64, temperature=0.8,
                                                  top_k=50, side_by_side=5, seed=42)  # fmt: skip
    assert task.generation_eval.enabled
    off = GenerationEval.from_config({"examples": 0})
    assert not off.enabled and off.temperature is None
    assert GenerationEval.from_config({"examples": None, "sampled": None}) == GenerationEval(
        examples=None, temperature=None, top_k=0
    )
    assert not GenerationEval.from_config(None).enabled


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generation_eval.examples=-1", "generation_eval.examples must be an integer >= 0, got -1"),
        ("generation_eval.side_by_side=-2", "generation_eval.side_by_side must be an integer >= 0, got -2"),
        ("generation_eval.max_new_tokens=0", "generation_eval.max_new_tokens must be an integer >= 1, got 0"),
        ("generation_eval.batch_size=0", "generation_eval.batch_size must be an integer >= 1, got 0"),
        ("generation_eval.sampled.temperature=0", "generation_eval.sampled.temperature must be a positive number, got 0"),
        ("generation_eval.sampled.top_k=-1", "generation_eval.sampled.top_k must be an integer >= 0, got -1"),
        ("+generation_eval.beams=2", "generation_eval: unknown key(s) beams; use batch_size, examples, max_new_tokens"),
    ],
)  # fmt: skip
def test_bad_generation_settings_are_refused_in_one_line(override: str, message: str) -> None:
    with pytest.raises(DistillError) as err:
        CausalLMTask().check_config(compose_config([override], name="lm"))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def pairs_file(path: Path, n: int = 240) -> Path:
    """Prompt/completion pairs of sums: {"prompt": "3 plus 4 is", "completion": " 7"}."""
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        lines.append(json.dumps({"prompt": f"{a} plus {b} is", "completion": f" {a + b}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def pairs_job(tmp: Path, *extra: str) -> list[str]:
    from tests.test_llm_pipeline import tiny_lm_job

    data = pairs_file(tmp / "pairs.jsonl")
    return tiny_lm_job(tmp, "lm_data=jsonl", f"lm_data.paths=[{data}]", "lm_data.prompt_field=prompt",
                       "lm_data.completion_field=completion", "lm_data.test_fraction=0.1", *extra)  # fmt: skip


def test_prompts_beyond_the_models_positions_are_refused_before_training(tmp_path: Path) -> None:
    from distill.spine import run

    cfg = compose_config(pairs_job(tmp_path, "lm_student.model.max_position_embeddings=40",
                                   "generation_eval.max_new_tokens=37"), name="lm")  # fmt: skip
    task = CausalLMTask()
    task.check_config(cfg)
    width = task.generation_examples(task.build_data(cfg))[0].shape[1]  # the longest test prompt, in tokens
    assert 4 <= width <= 8  # e.g. '3', ' plus', ' 4', ' is'
    with pytest.raises(DistillError) as err:
        run(cfg)
    assert str(err.value) == (
        f"the longest test prompt + generation_eval.max_new_tokens = {width} + 37 exceeds the student's "
        "max_position_embeddings (40)"
    )
    assert not (tmp_path / "logs" / "cache").exists() or not list((tmp_path / "logs" / "cache").glob("lm-*.pt"))


def test_plain_text_skips_evaluation_by_generation_with_a_log_line(tmp_path: Path, caplog) -> None:
    from distill.llm.data import TextDataModule

    (tmp_path / "a.txt").write_text(sentences(0, 3000))
    dm = TextDataModule(source="text", paths=[str(tmp_path / "a.txt")], vocab_size=280, seq_len=16,
                        cache_dir=str(tmp_path / "cache"))  # fmt: skip
    dm.setup()
    task = CausalLMTask()
    task.check_config(compose_config([], name="lm"))
    with caplog.at_level(logging.INFO, logger="distill.tasks.causal_lm"):
        assert task.generation_examples(dm) is None
        assert task.generation_examples(dm) is None  # looked up once: one line
    lines = [r.getMessage() for r in caplog.records if "generation_eval skipped" in r.getMessage()]
    assert len(lines) == 1 and "prompt/completion pairs" in lines[0]
    from distill.llm.models import causal_lm

    student = causal_lm(dm.vocab_size, hidden_size=16, num_hidden_layers=1, intermediate_size=32,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    metrics = task.evaluate({"student": student}, dm, [])["student"]
    assert metrics["perplexity"] > 1 and "exact_match" not in metrics
    assert task.generated is None


def test_summary_gives_the_exact_match_gap_closed() -> None:
    rows = [
        {"model": "teacher:t", "role": "teacher", "perplexity": 2.0, "exact_match": 0.8},
        {"model": "baseline", "role": "baseline", "perplexity": 4.0, "exact_match": 0.2},
        {"model": "student", "role": "student", "perplexity": 3.0, "exact_match": 0.5},
    ]
    summary = CausalLMTask().summary(rows)
    assert summary["perplexity_gap_closed"] == pytest.approx(0.5)
    assert summary["exact_match_gap_closed"] == pytest.approx(0.5)  # (0.5 - 0.2) / (0.8 - 0.2)
    assert summary["student_minus_baseline_exact_match"] == pytest.approx(0.3)
    rows[0]["exact_match"] = 0.1  # the teacher no better than the student alone: no gap to close
    summary = CausalLMTask().summary(rows)
    assert "exact_match_gap_closed" not in summary
    assert summary["student_minus_baseline_exact_match"] == pytest.approx(0.3)
    plain_text = [{k: v for k, v in r.items() if k != "exact_match"} for r in rows]
    assert set(CausalLMTask().summary(plain_text)) == {"baseline_minus_student_perplexity", "perplexity_gap_closed"}


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_job_on_pairs_reports_generation_columns(tmp_path: Path) -> None:
    from distill.spine import run

    report = run(compose_config(pairs_job(tmp_path, "compress=[onnx]", "generation_eval.side_by_side=3",
                                          "generation_eval.max_new_tokens=4", "logger=wandb"), name="lm"))  # fmt: skip
    rows = {r["model"]: r for r in report["models"]}
    assert list(rows) == ["teacher:tiny_llama", "baseline", "student", "compress:onnx"]
    for name in ("teacher:tiny_llama", "baseline", "student"):
        for key in ("exact_match", "rouge_l", "exact_match_sampled", "rouge_l_sampled"):
            assert 0.0 <= rows[name][key] <= 1.0, (name, key)
    assert "exact_match" not in rows["compress:onnx"]  # ONNX sessions are not generated with
    assert report["generation_examples"] == 24  # the test tenth of 240 pairs
    assert "student_minus_baseline_exact_match" in report["summary"]
    side = report["generation_side_by_side"]
    assert len(side) == 3 and set(side[0]["completions"]) == {"teacher:tiny_llama", "baseline", "student"}
    assert side[0]["prompt"].endswith(" is") and side[0]["reference"].strip().isdigit()
    out = tmp_path / "run"
    md = (out / "report.md").read_text()
    assert "| exact match | ROUGE-L | exact match (sampled) | ROUGE-L (sampled) |" in md
    samples = (out / "samples.md").read_text()
    assert samples.startswith("# Sampled continuations")
    assert "# Greedy completions of test prompts, side by side" in samples
    assert "| prompt | reference | teacher:tiny_llama | baseline | student |" in samples
    logged = json.loads((out / "report.json").read_text())
    assert logged["models"][2]["exact_match"] == rows["student"]["exact_match"]
    # W&B (offline): the columns among the report's scalars, and the side-by-side table
    (offline,) = (out / "wandb").glob("offline-run-*")
    table = json.loads(next(offline.rglob("generation_side_by_side_*.table.json")).read_text())
    assert table["columns"] == ["prompt", "reference", "teacher:tiny_llama", "baseline", "student"]
    assert [row[:2] for row in table["data"]] == [[e["prompt"], e["reference"]] for e in side]
    from tests.test_tracking import wandb_run

    history = [row for row in wandb_run(offline)["history"] if "report/student/exact_match" in row]
    assert [row["report/student/rouge_l_sampled"] for row in history] == [rows["student"]["rouge_l_sampled"]]
