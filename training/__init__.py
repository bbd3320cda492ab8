"""Offline tools of the predictor (``python -m training``): task sets, data collection, the dataset, training,
calibration, evaluation and replay.

A layer above ``router`` and ``servers``: it drives the router's stage client and stopping rule and writes the
model files ``predictor.serving`` loads; nothing below it (the router, the stage servers, the serving core) imports it.
"""
