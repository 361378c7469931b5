"""`python -m digin <task> key=value ...` (the same as the `digin` console script)."""
import sys

from digin.cli import main

sys.exit(main())
