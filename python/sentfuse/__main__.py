"""`python -m sentfuse ...`: the sentfuse command."""

import sys

from .cli import main

sys.exit(main())
