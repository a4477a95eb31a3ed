"""distill: a Lightning + Hydra template for knowledge distillation and model compression."""

import logging as _logging

# torchao, which transformers imports when it is installed, registers enums that this torch already
# handles, and torch logs a deprecation warning for each (two lines at every start): not ours to act on.
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)

__version__ = "0.1.0"
