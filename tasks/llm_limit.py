"""The LLM endpoint's server-wide limit: every request of every flow run holds one slot of the Prefect global
concurrency limit ``llm-endpoint`` (``make deploy`` creates it: ``prefect gcl create llm-endpoint --limit N``).

QA generation, the judge and the vision row may run in several flow runs at once (a nightly, a hand-started
stage, an evaluation on the GPU pool); the per-client ``concurrency`` in params only limits one process. Without
the limit on the server the slot is a no-op (``strict=False``), so nothing has to be set up for one machine.
"""

from __future__ import annotations

from glassllava import llm

LLM_LIMIT = "llm-endpoint"


def hold_llm_slots() -> None:
    """From now on in this process, each LLM request waits for a slot of ``llm-endpoint`` (cache hits take none)."""
    from prefect.concurrency.sync import concurrency

    llm.set_request_slot(lambda: concurrency(LLM_LIMIT, occupy=1, strict=False))
