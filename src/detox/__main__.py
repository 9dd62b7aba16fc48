import sys

from detox.cli import main

sys.exit(main())
