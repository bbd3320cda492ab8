"""The predictor's serving core: ``serving`` (what the router loads) and ``models`` (the shipped model, package data).

Collecting data, training, calibrating and evaluating are the top-level package ``training`` (``python -m training``),
a layer above the router: nothing here imports it.
"""
