"""The flex-template launcher's program for the cohort-sync job (``FLEX_TEMPLATE_PYTHON_PY_FILE``
of the image's ``cohorts`` stage, see ``templates/Dockerfile``).

Like ``stream.py``, it only hands the template's parameters to the installed package's
``python -m pipeline.cohorts``.
"""
import sys

from pipeline.cohorts import run

if __name__ == "__main__":
    sys.exit(run())
