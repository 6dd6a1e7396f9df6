"""DP-SGD training: typed config, Opacus privacy wrapper, training loop, run record."""
