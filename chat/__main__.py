import sys

from chat.runtime import gcpause

gcpause.pause()  # until the engine is loaded (chat/runtime/gcpause.py)
from chat.cli import main  # noqa: E402

sys.exit(main())
