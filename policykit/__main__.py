"""``python -m policykit`` is the ``policykit`` command."""

from policykit.cli import main

raise SystemExit(main())
