"""The flex-template launcher's program for the streaming job (``FLEX_TEMPLATE_PYTHON_PY_FILE``).

The launcher runs this file as a script with the template's parameters as ``--name=value``
arguments. It only hands them to the installed package, so nothing here can drift from
``python -m pipeline.stream``; ``pipeline.stream.run`` submits the job and returns without
waiting for it, as a template program must.

Without ``--runner`` the job would pick its local runner and run inside the launcher (and wait
there). Whether the launcher always passes ``--runner`` is not documented (UNCONFIRMED), so
this program, which only the launcher runs, asks for Dataflow unless a runner is given.
"""
import sys
from typing import List


def launcher_argv(argv: List[str]) -> List[str]:
    if any(a == "--runner" or a.startswith("--runner=") for a in argv):
        return list(argv)
    return [*argv, "--runner=DataflowRunner"]


if __name__ == "__main__":
    from pipeline.stream import run

    sys.exit(run(launcher_argv(sys.argv[1:])))
