"""The retry transport both HTTP clients (task API, model servers) sit on.

Only failures before the request left are resent: a refused or timed-out connect cannot have
run anything on the other side. Any response means the request may have been acted on, so no
status code is retried here; callers that know better (tenacity around a model call) decide.
"""

from __future__ import annotations

import httpx
from httpx_retries import Retry, RetryTransport

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]


def connect_retry_transport(
    transport: httpx.AsyncBaseTransport, *, total: int, backoff_factor: float
) -> RetryTransport:
    retry = Retry(
        total=total,
        backoff_factor=backoff_factor,
        allowed_methods=_ALL_METHODS,
        retry_on_exceptions=[httpx.ConnectError, httpx.ConnectTimeout],
    )
    # httpx-retries reads an empty status_forcelist as "the defaults" (429/502/503/504), so it
    # is cleared after construction: no status is resent at this layer.
    retry.status_forcelist = frozenset()
    return RetryTransport(transport=transport, retry=retry)
