"""`python -m workers.plan plan TOPOLOGY ...`: the planner without the gateway's command line."""

import sys

from workers.plan.cli import main

sys.exit(main())
