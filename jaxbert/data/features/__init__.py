"""Per-task record -> features builders and collates, each batched by :mod:`jaxbert.data.batching`.

* :mod:`~jaxbert.data.features.text` -- classification text / text pairs: ``RecordFields``,
  ``Tokenize``, ``Collate``, ``make_train_iterator`` / ``make_eval_batches``.
* :mod:`~jaxbert.data.features.pretokenized` -- lists of pre-tokenized feature dicts (token
  classification, QA, multi-label, regression): ``FeatureCollate``, ``make_train_iterator``
  (optionally length-grouped) / ``make_eval_batches`` (one length per global batch).
* :mod:`~jaxbert.data.features.tokens` -- token classification: words + tags -> chunked features.
* :mod:`~jaxbert.data.features.qa` -- extractive QA: SQuAD files -> overlapping-window features.
* :mod:`~jaxbert.data.features.pairs` -- pairs / triplets / n-tuples for contrastive training
  (``read_pair_records``, Mirror-BERT spans, ``make_pair_iterator``) and pair-file builders.
* :mod:`~jaxbert.data.features.mlm` -- MLM: documents -> word-aligned chunks -> packed rows ->
  masked rows (``make_mlm_train_iterator`` / ``make_mlm_eval_batches``); uses
  :mod:`jaxbert.data.masking` and :mod:`jaxbert.data.packing`.
* :mod:`~jaxbert.data.features.llm` -- LLM embedding: word tokenizer, TF-IDF hard negatives,
  ``pad_rows`` (batched by :class:`jaxbert.data.batching.IndexedBatchIterator`).
"""
