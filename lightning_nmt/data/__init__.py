"""Data pipeline: corpus reading and validation (text files, TSV, Hugging Face datasets), sentencepiece, streamed
preprocessing into a memory-mapped binarized cache, token batching.

The public names are imported lazily, so that ``import lightning_nmt.data.tokenizer`` (models) or the
cache (parallel jobs) does not pay for importing Lightning.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ParallelDataModule": "datamodule",
    "TokenBatchSampler": "batching",
    "collate": "batching",
    "EncodedDataset": "dataset",
    "Example": "dataset",
    "IndexedDataset": "indexed",
    "DataError": "errors",
    "Tokenizer": "tokenizer",
    "PAD_ID": "tokenizer",
    "UNK_ID": "tokenizer",
    "BOS_ID": "tokenizer",
    "EOS_ID": "tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
