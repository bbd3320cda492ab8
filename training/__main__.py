"""``python -m training``: the offline command line (``training.cli``)."""

from training.cli import main

raise SystemExit(main())
