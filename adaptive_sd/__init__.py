"""The command line that composes processes: the stage servers and the router (``adaptive-sd``).

The top layer, above ``training``: it may import everything below; nothing imports it.
"""
