"""The distilled student as a Hugging Face folder: `from_pretrained` gives the trained student's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.llm.models import causal_lm, export_pretrained, with_lora

TINY = {"hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32, "num_attention_heads": 2,
        "num_key_value_heads": 2}  # fmt: skip
IDS = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0))


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def trained_lora() -> torch.nn.Module:
    """A LoRA student whose adapters moved away from their zero start (B = 0 would make merging trivial)."""
    torch.manual_seed(0)
    model = with_lora(causal_lm(40, **TINY), r=2, alpha=4, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def test_a_plain_student_loads_back_with_the_same_logits(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    student = causal_lm(40, **TINY)
    export_pretrained(student, tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    torch.testing.assert_close(logits(loaded), logits(student), rtol=0, atol=1e-6)
    assert student.config.use_cache is False  # the student itself is left as it was


def test_a_lora_student_is_merged_into_a_plain_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    student = trained_lora()
    export_pretrained(student, tmp_path / "hf")
    assert not (tmp_path / "hf" / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    torch.testing.assert_close(logits(loaded), logits(student), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(loaded), logits(causal_lm_fresh()), atol=1e-3)  # the adapters are in it
    assert any("lora_B" in n for n, _ in student.named_parameters())  # the run's student keeps its adapters


def test_a_lora_student_can_be_kept_as_an_adapter_folder(tmp_path: Path) -> None:
    from peft import PeftModel

    student = trained_lora()
    export_pretrained(student, tmp_path / "adapter", merge_lora=False)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    torch.manual_seed(0)  # the same base weights as the student's
    base = causal_lm(40, **TINY)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    torch.testing.assert_close(logits(loaded), logits(student), rtol=0, atol=1e-6)
    assert not torch.allclose(logits(causal_lm_fresh()), logits(student))


def causal_lm_fresh() -> torch.nn.Module:
    torch.manual_seed(0)
    return causal_lm(40, **TINY)


def test_the_tokenizer_goes_with_the_model(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "a": 2, "b": 3}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    export_pretrained(causal_lm(40, **TINY), tmp_path / "hf", tokenizer)
    loaded = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert loaded("a b a")["input_ids"] == [2, 3, 2]
    assert (loaded.pad_token, loaded.eos_token) == ("<pad>", "<eos>")


def test_a_model_without_save_pretrained_is_refused(tmp_path: Path) -> None:
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="no save_pretrained"):
        export_pretrained(torch.nn.Linear(2, 2), tmp_path / "hf")
