"""`python -m orchestrator` is the `ptu` command."""

from orchestrator.cli import main

raise SystemExit(main())
