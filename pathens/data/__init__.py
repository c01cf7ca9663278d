"""Where examples come from and how they are shaped: datasets by name (datasets.py), image
folders, text corpora and tokenizers, input batches (images, token ids, dicts: inputs.py),
targets and the losses they define (losses.py), checked and streamed batches (batches.py), and
fingerprints of data for resumable runs.

`pathens.data` itself is the datasets API (load_dataset, dataset_info, load_npz, ...), as it
was before the sub-packages.
"""
from .datasets import (DATASETS, DIGITS_SEED, DIGITS_TEST_FRACTION, NORMALIZATIONS, SPLITS,
                       DatasetInfo, dataset_info, digits_split, load_dataset, load_npz,
                       normalize_images, read_idx)

__all__ = ["DATASETS", "DIGITS_SEED", "DIGITS_TEST_FRACTION", "NORMALIZATIONS", "SPLITS",
           "DatasetInfo", "dataset_info", "digits_split", "load_dataset", "load_npz",
           "normalize_images", "read_idx"]
