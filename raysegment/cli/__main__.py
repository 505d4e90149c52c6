"""`python -m raysegment.cli`."""

import sys

from raysegment.cli import main

sys.exit(main())
