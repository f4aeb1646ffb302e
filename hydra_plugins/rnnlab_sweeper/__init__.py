"""rnnlab's Hydra sweeper plugin (Hydra finds it under the hydra_plugins namespace)."""
