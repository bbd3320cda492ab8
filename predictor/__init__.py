"""The predictor: ``serving`` (what the router loads) and ``offline`` (collect, train, evaluate; never loaded by serving)."""
