"""The bottom layer: the OpenAI wire protocol and errors that the router and the stage servers share, and the settings.

Nothing here imports another package of this project (see the import-linter contracts in pyproject.toml).
"""
