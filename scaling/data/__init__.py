"""Token sources, batches as a pure function of (data_seed, step), the synthetic source, task
documents. Imports no training code.

The package's names are the sources' and batches' public API: `open_source`, `check_source`,
`Batcher`, `validation_windows`, `bits_per_byte`, `permute`, `cache_dir`, `DataError`, `TokenSource`.
"""

from scaling.data.batches import Batcher, bits_per_byte, permute, validation_windows
from scaling.data.sources import DataError, TokenSource, cache_dir, check_source, open_source

__all__ = ["Batcher", "DataError", "bits_per_byte", "TokenSource", "cache_dir", "check_source", "open_source", "permute",
           "validation_windows"]
