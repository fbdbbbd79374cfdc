"""Data: sources, tokenization, one batching skeleton and per-task feature builders.

* :mod:`jaxbert.data.sources` -- random-access record sources: ``JsonlSource`` (local
  ``.jsonl``/``.jsonl.gz``), ``ArrayRecordSource`` (+ ``write_array_record``),
  ``tfds_source`` (optional ``tensorflow-datasets``), ``data_dir()`` (``$JAXBERT_DATA``).
* :mod:`jaxbert.data.tokenization` -- ``load_tokenizer``, ``encode_batch`` (int32 arrays,
  fixed length), ``check_vocab`` (tokenizer vs model vocab_size).
* :mod:`jaxbert.data.labels` -- ``LabelMap`` (record field values <-> class ids).
* :mod:`jaxbert.data.batching` -- the batching skeleton on grain: ``train_iterator``
  (shuffled, repeated, host-sharded, checkpointable ``PipelineIterator``), ``eval_batches``
  (ordered, padded with ``weights``), ``IndexedBatchIterator``, ``bucket_length`` (the one
  "smallest bucket >= n").
* :mod:`jaxbert.data.features` -- what each task kind adds to the skeleton (record ->
  features, collate): ``text`` (``make_train_iterator`` / ``make_eval_batches`` for
  classification), ``pretokenized``, ``tokens``, ``qa``, ``pairs``, ``mlm``, ``llm``.
* :mod:`jaxbert.data.masking`, :mod:`jaxbert.data.packing` -- MLM masking strategies, sequence
  packing. :mod:`jaxbert.data.derived`, :mod:`jaxbert.data.long_retrieval` -- datasets derived
  from the shared data pack.

Text batches are dicts of numpy arrays: ``input_ids``, ``attention_mask``, ``token_type_ids``
(int32 ``[B, L]``), ``labels`` (int32 ``[B]``, with a label map) and, for evaluation,
``weights`` (float32 ``[B]``, 0 for padding rows).
"""

from jaxbert.data.batching import PipelineIterator, bucket_length
from jaxbert.data.features.text import Collate, RecordFields, Tokenize, make_eval_batches, make_train_iterator
from jaxbert.data.labels import LabelMap
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
    check_vocab,
    encode_batch,
    load_tokenizer,
    tokenizer_vocab_size,
)

__all__ = [
    "ArrayRecordSource",
    "Collate",
    "JsonlSource",
    "LabelMap",
    "PipelineIterator",
    "RecordFields",
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
