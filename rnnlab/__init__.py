"""rnnlab: a research framework for studying recurrent neural networks."""
