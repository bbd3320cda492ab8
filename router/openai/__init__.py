"""The OpenAI APIs the router serves, one package each, on one serving base (as vLLM's ``entrypoints/openai``).

``serving_base.py``   ``OpenAIServing``: the model a request names, the knobs (λ, max stage, tenant cap), the
                      pass-through's bookkeeping, the cascade's metrics and ``x-cascade-*`` headers, SSE helpers, and
                      ``Rendering``, what an API makes of the cascade's result
``chat/``             ``POST /v1/chat/completions``: ``serving.py`` (``ChatServing``, ``ChatRendering``) and
                      ``dialect.py`` (``CHAT_DIALECT``: how the engine asks a stage in chat)
``completions/``      ``POST /v1/completions``: ``serving.py`` (``CompletionServing``), ``dialect.py``
                      (``COMPLETIONS_DIALECT``) and ``draft.py`` (``COMPLETIONS_DRAFT``: draft verification there)
``responses/``        ``POST /v1/responses``, served as chat: ``serving.py`` (``ResponsesServing``) and
                      ``builder.py`` (``ResponseBuilder``: chat chunks into the Responses shapes)

The request models are in ``common`` (the stage servers take the same chat and completions requests); the routes are
``router.api``; what the engine needs of a dialect is ``router.dialect.CascadeDialect``. The packages import nothing
of each other but the base, except Responses, which is served as chat.
"""
