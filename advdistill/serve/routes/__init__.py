"""The API's routes, one module per surface: `models` (/healthz, /models), `evaluations`
(/evaluate, /evaluations), `openai` (/v1); `dependencies` gives them the replica's state and the
bearer-token check. `serve.api.make_api` assembles them."""
