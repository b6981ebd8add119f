"""`python -m ditcompile ...` runs the `ditaccel` command."""
import sys

from .cli import main

sys.exit(main())
