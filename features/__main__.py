import sys

from features.cli import main

sys.exit(main())
