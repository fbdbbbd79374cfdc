"""Data: sources, tokenization and grain input pipelines.

* :mod:`jaxbert.data.sources` -- random-access record sources: ``JsonlSource`` (local
  ``.jsonl``/``.jsonl.gz``), ``ArrayRecordSource`` (+ ``write_array_record``),
  ``tfds_source`` (optional ``tensorflow-datasets``), ``data_dir()`` (``$JAXBERT_DATA``).
* :mod:`jaxbert.data.tokenization` -- ``load_tokenizer``, ``encode_batch`` (int32 arrays,
  fixed length), ``check_vocab`` (tokenizer vs model vocab_size), ``bucket_length``.
* :mod:`jaxbert.data.pipeline` -- ``LabelMap``, grain transforms (``ExtractFields``,
  ``Tokenize``, ``Collate``), ``make_train_iterator`` (shuffled, repeated, host-sharded,
  checkpointable via ``get_state``/``set_state``) and ``make_eval_batches`` (ordered, padded
  with ``weights``).

Batches are dicts of numpy arrays: ``input_ids``, ``attention_mask``, ``token_type_ids``
(int32 ``[B, L]``), ``labels`` (int32 ``[B]``, with a label map) and, for evaluation,
``weights`` (float32 ``[B]``, 0 for padding rows).
"""

from jaxbert.data.pipeline import (
    Collate,
    ExtractFields,
    LabelMap,
    PipelineIterator,
    Tokenize,
    make_eval_batches,
    make_train_iterator,
)
from jaxbert.data.sources import (
    ArrayRecordSource,
    JsonlSource,
    TfdsSource,
    data_dir,
    describe_record,
    tfds_source,
    write_array_record,
)
from jaxbert.data.tokenization import (
    bucket_length,
    check_vocab,
    encode_batch,
    load_tokenizer,
    tokenizer_vocab_size,
)

__all__ = [
    "ArrayRecordSource",
    "Collate",
    "ExtractFields",
    "JsonlSource",
    "LabelMap",
    "PipelineIterator",
    "TfdsSource",
    "Tokenize",
    "bucket_length",
    "check_vocab",
    "data_dir",
    "describe_record",
    "encode_batch",
    "load_tokenizer",
    "make_eval_batches",
    "make_train_iterator",
    "tfds_source",
    "tokenizer_vocab_size",
    "write_array_record",
]
