"""distill: a Lightning + Hydra template for knowledge distillation and model compression."""

__version__ = "0.1.0"
