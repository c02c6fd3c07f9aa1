"""Docker health check of the API container: healthy when /readyz answers 200.

    python healthcheck.py [URL]      (default http://127.0.0.1:8000/readyz)

/readyz reports the LLM, the vector store and the history store, so the container is healthy
only when Hearth can answer. The image has no curl; the standard library is enough.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/readyz"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else DEFAULT_URL
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code}: {exc.read(500).decode('utf-8', 'replace')}")
        return 1
    except OSError as exc:
        print(f"{url}: {exc}")
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
