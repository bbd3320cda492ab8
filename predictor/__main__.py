"""``python -m predictor``: the offline command line (``predictor.offline.cli``)."""

from predictor.offline.cli import main

raise SystemExit(main())
