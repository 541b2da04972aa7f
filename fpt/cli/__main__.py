"""python -m fpt.cli: the fpt command."""

import sys

from fpt.cli.main import main

sys.exit(main())
