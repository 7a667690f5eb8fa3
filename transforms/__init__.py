
# Every record that crosses a stage has an explicit coder (transforms/coders.py); registering
# them here means any process that imports the transforms (the launcher, each worker) uses them.
from transforms import coders as _coders  # noqa: E402

_coders.register()
