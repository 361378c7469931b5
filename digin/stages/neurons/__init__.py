"""Neuron pipeline (the reference's imagenet_cog_neuron_*.py and imagenet_neuron_counterfactuals.py): streaming
top-k activations, naming, word search + DiG-IN neuron maximisation, and neuron counterfactuals.
`digin neurons mode=...` runs them (the modes: digin/stages/neurons/modes.py)."""
