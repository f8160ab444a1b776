"""One PDFium document at a time per process.

PDFium is not thread-safe, not even across different documents: two threads inside it at
once corrupt its state and crash the interpreter (pypdfium2's docs). Prefect runs tasks in
threads, so every document the library opens is opened through :func:`open_pdf`, which holds
a process-wide lock from opening to closing and closes the document, and with it every page
and text page, explicitly. No pdfium object is left for the garbage collector to close later
in some other thread. Parallelism comes from processes (``workers`` in params.yaml).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pypdfium2 as pdfium

PDFIUM_LOCK = threading.RLock()


@contextmanager
def open_pdf(source: str | Path | bytes) -> Iterator[pdfium.PdfDocument]:
    """A PDF document, held under the process-wide PDFium lock until the block ends.

    Raises ``pypdfium2.PdfiumError`` like ``pypdfium2.PdfDocument`` when it cannot be opened.
    """
    with PDFIUM_LOCK:
        doc = pdfium.PdfDocument(str(source) if isinstance(source, Path) else source)
        try:
            yield doc
        finally:
            doc.close()
