"""GlassLLaVA: papers about glass in, a vision-language model that reads their SEM micrographs out.

The package is a plain library: each pipeline stage is a function from files to files
(``glassllava.ingest``, ``glassllava.figures``, ...). Prefect flows in ``flows/`` and the
DVC pipeline in ``dvc.yaml`` call these functions; nothing here imports Prefect.
"""

__version__ = "0.1.0"
