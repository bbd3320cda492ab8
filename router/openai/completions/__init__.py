"""``POST /v1/completions``: ``serving`` (``CompletionServing``), ``dialect`` and ``draft`` (the engine's completions dialect)."""
