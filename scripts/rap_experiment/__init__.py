"""The experiment around the `rap_hf` library: a training run from the command line (`run`), what it leaves behind
(results.json, figures, the card: `outputs`), relevance diagnostics (`relevance`) and Markdown tables (`reporting`).
Used by scripts/run_rap.py, scripts/reproduce.py and scripts/benchmarks/; imports only rap_hf's public modules."""
