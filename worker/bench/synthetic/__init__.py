"""Synthetic benchmark inputs: Zipf-distributed multilingual texts and Model2Vec-layout model folders.

`vocabulary` (the fixed Zipf-ranked pseudo-words) -> `texts` (the text sets and the tokenizer training corpus)
-> `models` (tokenizer training, the Model2Vec folder layout) -> `model_cache` (built folders, keyed by their
parameters). One package because the models' tokenizers are trained on these texts and one
`model_cache.GENERATOR_VERSION` keys both: a change to either must be seen with the other.
"""

from __future__ import annotations

# Imported from the package by the encoder benchmark (worker.bench.encoder, passes, encoder_child: TEXT_SETS,
# cached_model) and tests/test_bench_encoder.py (`synthetic.short_texts`, ...); new code imports the modules.
from worker.bench.synthetic.model_cache import cached_model
from worker.bench.synthetic.texts import TEXT_SETS, paragraph_texts, short_texts
from worker.bench.synthetic.vocabulary import vocabulary_size

__all__ = ["TEXT_SETS", "cached_model", "paragraph_texts", "short_texts", "vocabulary_size"]
