"""Prefect task of the dataset stage (library: ``glassllava.dataset``).

A domain error (``DatasetError``: missing inputs, leakage, nothing to train on) is returned, not raised: the
flow fails its run with the one-line message, where a raised exception would be logged with a traceback.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from glassllava import dataset
from glassllava.params import DataLayout, DatasetParams


@task(name="build-dataset", cache_policy=NONE)
def build_dataset(params: DatasetParams, layout: DataLayout) -> dataset.DatasetReport | dataset.DatasetError:
    """Conversations (Parquet shards and LLaVA JSON), images by hash, the alignment set and report.json."""
    try:
        return dataset.build_dataset(params, layout)
    except dataset.DatasetError as e:
        return e
