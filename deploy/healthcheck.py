"""Container health probe: GET http://127.0.0.1:<port><path>; exit 0 on a 2xx answer, else 1.

Model servers answer /health with 200 and a status; a body saying "unhealthy" (models missing
or failed to load) fails the check too, so `docker ps` shows what the server knows.

The slim images carry no curl, so HEALTHCHECK runs this with the standard library.
Usage: python healthcheck.py PATH [PORT_VARIABLE] [DEFAULT_PORT]
  e.g. healthcheck.py /ready                      (port from TASKFLEET_PORT, else 8000)
       healthcheck.py /metrics TASKFLEET_METRICS_PORT 9100
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "/health"
    variable = argv[1] if len(argv) > 1 else "TASKFLEET_PORT"
    port = os.environ.get(variable) or (argv[2] if len(argv) > 2 else "8000")
    # No proxies: a container's HTTP(S)_PROXY must not intercept a loopback probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body = response.read(65536)
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {path}: {exc}", file=sys.stderr)
        return 1
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        status = None  # not a JSON object (e.g. /metrics): the 2xx is the answer
    if status == "unhealthy":
        print(f"unhealthy: {path}: {body[:500].decode('utf-8', 'replace')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
