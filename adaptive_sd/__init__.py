"""The command line that composes processes: the stage servers and the router (``adaptive-sd``).

The top layer, beside ``predictor.offline``: it may import everything below; nothing imports it.
"""
