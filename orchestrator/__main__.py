"""`python -m orchestrator` is the `ptu` command."""

from orchestrator.cli.main import main

raise SystemExit(main())
