"""``POST /v1/responses``, served as chat: ``serving`` (``ResponsesServing``) and ``builder`` (the Responses shapes)."""
