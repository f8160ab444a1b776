"""Prefect flows. Each stage flow runs as ``python -m flows.<stage>`` and is the ``cmd`` of its
DVC stage in ``dvc.yaml``; ``flows.nightly`` wraps ``dvc repro`` and is not a stage."""
