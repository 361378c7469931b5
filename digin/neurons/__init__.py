"""Neuron pipeline (REFERENCE §6): streaming top-k activations, naming, word search + DiG-IN neuron
maximisation, and neuron counterfactuals. `digin neurons mode=...` (digin/tasks/neurons.py) orchestrates these."""
