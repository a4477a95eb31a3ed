"""Distillation for causal language models: token-level losses in `distill.llm.losses`."""
