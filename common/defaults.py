"""Every default the serving code and the tools share, defined once.

A value that several modules need (the settings' field defaults, the predictor's
constructors, the tenant service, the offline replay) is named here and imported
from here; nobody repeats the literal.
"""

from __future__ import annotations

LAMBDA = 10.0  # quality weight λ when neither the request nor its tenant names one
RISK_ALPHA = 1.0  # Beta(α, β) prior a predicted p̂ is shrunk toward
RISK_BETA = 1.0
EVIDENCE = 50.0  # pseudo-count n of the predictor's evidence in that shrinkage
PRIOR_STRENGTH = 8.0  # Beta concentration of a future stage's p̂ around its prompt-only prior
DRAFT_MIN_ACCEPTED = 4.0  # regenerate once a stage pair's mean accepted draft tokens falls below this
MEASURED_HALF_LIFE_VISITS = 200.0  # a stage's measured seconds prices: visits after which a visit weighs half
MEASURED_PRIOR_STRENGTH = 10.0  # ... and how many visits the configured prices weigh as
MODEL_NAME = "cascade"  # the `model` value that runs the adaptive ladder
HOST = "127.0.0.1"
PORT = 8000
SHADOW_RATE = 0.0  # share of answers returned from a lower stage that the next stage checks after the response (opt-in)
MODEL_RELOAD_S = 10.0  # a replica looks this often for a newly promoted model in its registry
