"""Flow of the DVC stage ``gallery``: the figure gallery, written after the qa stage so its QA counts are current."""

from __future__ import annotations

from flows._stage import stage_args  # noqa: I001 - first: sets Prefect's environment defaults
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from glassllava.params import DataLayout
from tasks.gallery import write_gallery


@flow(name="gallery")
def gallery_flow(layout: DataLayout) -> str:
    index = write_gallery(layout)
    pages = len(list(index.parent.glob("gallery/*.html")))
    get_run_logger().info("gallery: %s (%d paper pages)", index, pages)
    create_markdown_artifact(
        key="figure-gallery",
        markdown=f"Figure gallery: `{index.resolve()}` ({pages} paper pages); open it from disk.",
        description="Where the figure gallery is",
    )
    return str(index)


if __name__ == "__main__":
    _, layout = stage_args("Write the figure gallery: an index of papers and one page per paper (DVC stage gallery).")
    gallery_flow(layout)
