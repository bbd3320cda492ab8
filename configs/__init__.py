"""The shipped ladder configurations (YAML), installed as package data so `pip install .` can start without the source tree."""
