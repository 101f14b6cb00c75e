"""The generation layer shared by curation, evaluation and Serve: engines (vLLM, transformers),
`generate_rows` (prompts, per-prompt seeds, generate, attach outputs) and its Ray Data stage."""
