"""Run the gateway with ``python -m tornado_imagegate``."""

from tornado_imagegate.server import main

raise SystemExit(main())
