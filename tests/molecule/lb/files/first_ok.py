"""Wait for the first 200 from a URL and print the seconds since T0.

    first_ok.py URL CAFILE T0 TIMEOUT

T0 is a Unix time (seconds, fractional) taken on a test host right before
the action that moved the VIP: the containers share this machine's clock.
Polls every 0.1 s with a 0.5 s timeout per request; exit 1 after TIMEOUT s.
"""

from __future__ import annotations

import ssl
import sys
import time
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    url, cafile, t0, timeout = argv[1], argv[2], float(argv[3]), float(argv[4])
    context = ssl.create_default_context(cafile=cafile)
    deadline = time.time() + timeout
    last = "no answer"
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=0.5, context=context) as resp:
                if resp.status == 200:
                    print(f"{time.time() - t0:.2f}")
                    return 0
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    print(f"no 200 from {url} within {timeout} s (last: {last})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
