"""`llamakit score`: what a model thinks of each token of a text (logprob, rank, entropy, detector statistics)."""
