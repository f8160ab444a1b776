"""Fetch a URL to a file: streamed, size-capped, atomic, with retries, backoff and jitter.

Used by the ingest stage for ``corpus.sources: [urls]``. A failure is a ``DownloadFailed``;
``permanent`` ones (HTTP 4xx, the size cap, a bad URL) are remembered and tried again only after
``ingest.download_retry_hours`` (doubling per failure), or when forced (``glassllava ingest --retry-downloads``).
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from glassllava.files import sha256_bytes

log = logging.getLogger(__name__)

# Waits between download attempts: base * 2**attempt plus up to `base` of jitter.
DOWNLOAD_BACKOFF_S = 0.5
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_USER_AGENT = "glassllava-ingest/0.1"


class DownloadFailed(Exception):
    """A URL could not be fetched; ``permanent`` failures (HTTP 4xx, size cap) are not retried on re-runs."""

    def __init__(self, detail: str, permanent: bool = False):
        super().__init__(detail)
        self.permanent = permanent


def url_filename(url: str) -> str:
    name = Path(unquote(urlparse(url).path)).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-80:] or "download"
    return f"{sha256_bytes(url.encode())[:16]}-{name}"


def download(
    url: str, dest_dir: Path, timeout: float, retries: int, max_bytes: int, *, client: httpx.Client | None = None
) -> Path:
    """Fetch ``url`` into ``dest_dir`` (streamed, at most ``max_bytes``) and return the file.

    Timeouts, connection errors, HTTP 5xx and 429 are retried ``retries`` times with
    exponential backoff and jitter (a numeric Retry-After is honoured up to 60 s).

    Raises:
        DownloadFailed: after the last attempt, or at once for other HTTP errors and the byte cap.
    """
    dest = Path(dest_dir) / url_filename(url)
    own = client is None
    client = client or httpx.Client(
        timeout=httpx.Timeout(timeout), follow_redirects=True, headers={"User-Agent": _USER_AGENT}
    )
    last = "no attempt"
    try:
        for attempt in range(retries + 1):
            wait = DOWNLOAD_BACKOFF_S * 2**attempt + random.uniform(0, DOWNLOAD_BACKOFF_S)
            try:
                with client.stream("GET", url) as response:
                    if response.status_code in _RETRY_STATUS:
                        last = f"HTTP {response.status_code}"
                        retry_after = response.headers.get("retry-after", "")
                        if retry_after.isdigit():
                            wait = max(wait, min(float(retry_after), 60.0))
                    elif response.status_code >= 400:
                        raise DownloadFailed(f"HTTP {response.status_code} from {url}", permanent=True)
                    else:
                        return _stream_to(response, dest, max_bytes)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as e:
                raise DownloadFailed(f"{type(e).__name__}: {e}", permanent=True) from e
            except httpx.TransportError as e:  # timeouts, refused connections, dropped streams
                last = f"{type(e).__name__}: {e or 'no detail'}"
            if attempt < retries:
                log.info("download %s: %s, retrying in %.1f s", url, last, wait)
                time.sleep(wait)
        raise DownloadFailed(f"{last} after {retries + 1} attempts")
    finally:
        if own:
            client.close()


def _stream_to(response: httpx.Response, dest: Path, max_bytes: int) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        n = 0
        with os.fdopen(fd, "wb") as f:
            for chunk in response.iter_bytes():
                n += len(chunk)
                if n > max_bytes:
                    raise DownloadFailed(f"larger than download_max_bytes={max_bytes}", permanent=True)
                f.write(chunk)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest
