"""``python -m terra.run prog.py [args...]``: run an unmodified program under Terra.

terrarun starts every ``.py`` program this way, so that programs that never
import terra still run under it: terra is imported first (under terrarun that
joins the job and starts tracing in terrarun's ``--mode``), then the program
runs as ``__main__`` exactly as ``python prog.py`` would run it (``sys.argv``,
``sys.path[0]``, ``__name__ == "__main__"``, exit status, tracebacks).
"""

import os
import runpy
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2 if not argv else 0
    program = argv[0]
    if not os.path.isfile(program):
        print(f"terra.run: no such file: {program!r}", file=sys.stderr)
        return 2
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(program))
    import terra  # noqa: F401  (joins the job and starts tracing under terrarun)

    runpy.run_path(program, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
