import sys

from features.pipeline.cli import main

sys.exit(main())
