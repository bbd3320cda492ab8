"""``POST /v1/chat/completions``: ``serving`` (``ChatServing``) and ``dialect`` (the engine's chat dialect)."""
