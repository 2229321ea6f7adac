"""`python -m eventreach_assets.serving.api` (`make serve`, the serving bench): see `cli.main`."""

from eventreach_assets.serving.api.cli import main

raise SystemExit(main())
