"""`python -m orchestrator.cli`: the synthfleet command."""

import sys

from orchestrator.cli import main

sys.exit(main())
