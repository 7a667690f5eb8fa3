"""The flex-template launcher's program for the streaming job (``FLEX_TEMPLATE_PYTHON_PY_FILE``).

The launcher runs this file as a script with the template's parameters as ``--name=value``
arguments. It only hands them to the installed package, so nothing here can drift from
``python -m pipeline.stream``; ``pipeline.stream.run`` submits the job and returns without
waiting for it, as a template program must.
"""
import sys

from pipeline.stream import run

if __name__ == "__main__":
    sys.exit(run())
