"""Text classification data for encoder (BERT-family) sequence classifiers: labelled texts or sentence
pairs from local files, or the offline default (docstrings of Python's standard library labelled by
area), a tokenizer trained here or loaded from a local folder, and dynamically padded batches.

`TextClassificationData` (`distill.textcls.data`) holds each split's rows in memory after `setup()`;
its batches are `{"input_ids", "attention_mask", ("token_type_ids"), "labels", "index"}`, each cut to
its longest row. Nothing is downloaded.
"""

from distill.textcls.data import PaddedBatches, TextClassificationData
from distill.textcls.stdlib import AREAS, stdlib_docstrings

__all__ = ["AREAS", "PaddedBatches", "TextClassificationData", "stdlib_docstrings"]
