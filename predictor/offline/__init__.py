"""Offline tools of the predictor: task sets, data collection, the dataset, training, evaluation and replay.

The top layer: it drives the router's stage client and stopping rule; serving code never imports it.
"""
