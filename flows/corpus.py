"""Flow of the DVC stage ``corpus``: the generated corpus, when params choose it."""

from __future__ import annotations

from flows._stage import stage_args  # noqa: I001 - first: sets Prefect's environment defaults
from prefect import flow, get_run_logger

from glassllava.params import CorpusParams, DataLayout
from tasks.corpus import generate


@flow(name="corpus", log_prints=False)
def corpus_flow(corpus: CorpusParams, layout: DataLayout) -> str:
    logger = get_run_logger()
    layout.corpus.mkdir(parents=True, exist_ok=True)
    if "generated" not in corpus.sources:
        logger.info("corpus.sources has no 'generated': nothing to generate")
        return str(layout.corpus)
    manifest = generate(layout.corpus, corpus.generated.papers, corpus.generated.seed)
    logger.info("generated corpus: %s", manifest)
    return str(manifest)


if __name__ == "__main__":
    params, layout = stage_args("Generate the synthetic corpus (DVC stage corpus).")
    corpus_flow(params.corpus, layout)
