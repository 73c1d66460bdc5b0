import sys

from vpop.cli import main

sys.exit(main())
