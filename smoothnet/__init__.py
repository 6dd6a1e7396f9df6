"""SmoothNet reproducibility package.

Reproduces Remerscheid et al. 2022, "SmoothNets: Optimizing CNN architecture design for
differentially private deep learning", with DP-SGD through Opacus, a DVC pipeline, and an
audit of every stored privacy claim. Importing the package has no side effects.
"""

__version__ = "0.1.0"
