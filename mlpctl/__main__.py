"""`python -m mlpctl` is the `mlpctl` command."""

from mlpctl.cli import main

raise SystemExit(main())
