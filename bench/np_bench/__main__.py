"""``python -m np_bench serve | load SPEC_JSON | hold SPEC_JSON`` (cwd ``bench/``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("serve", "load", "hold"):
        print(__doc__)
        return 2
    if argv[0] == "serve":
        from np_bench.target import serve_main

        return serve_main(argv[1:])
    from np_bench.loadgen import hold_main, load_main

    return load_main(argv[1:]) if argv[0] == "load" else hold_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
