"""``python -m tongxin``: the command line, for runtimes without the console script (the OCI image)."""

import sys

from tongxin.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
