"""``python -m predictor`` moved: the offline command line is ``python -m training``.

A stub, so that an old command says where it went; it does not import ``training`` (a layer above this one).
"""

import sys

print("moved: use python -m training", file=sys.stderr)
raise SystemExit(2)
