"""Image classifiers: one module per family behind one registry, and the wrapper the objectives talk to.

  wrapper.py    ImageClassifier: resize or cutouts + noise, normalise, model → logits (B, N, K) fp32; features
  registry.py   spec prefix → family builder; load_classifier
  weights.py    weight files (safetensors, or torch.load(weights_only=True)) and state-dict clean-up
  labels.py     reorder logits to a dataset's class names
  imagenet.py   ImageNet normalisation and class names
  families      timm_nets · torchvision_nets · madry · hf · clip (zero-shot) · cal (WS-DAN + CAL) · mae · tiny
"""
from .cal import WSDANCAL, build_cal
from .clip import IMAGENET_TEMPLATES, ZeroShotCLIP, clip_text_class_embeddings, open_clip_model
from .imagenet import DATA_DIR, IMAGENET_MEAN, IMAGENET_STD, imagenet_class_names
from .labels import label_permutation
from .registry import ALIASES, BUILDERS, KINDS, load_classifier, parse_spec
from .tiny import TinyConvNet, build_tiny_net, save_tiny_classifier
from .weights import clean_robust_state_dict, load_into, load_weights_file, unwrap_state_dict
from .wrapper import ImageClassifier, final_linear_name

__all__ = [
    "ALIASES", "BUILDERS", "DATA_DIR", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_TEMPLATES", "KINDS",
    "ImageClassifier", "TinyConvNet", "WSDANCAL", "ZeroShotCLIP", "build_cal", "build_tiny_net",
    "clean_robust_state_dict", "clip_text_class_embeddings", "final_linear_name", "imagenet_class_names",
    "label_permutation", "load_classifier", "load_into", "load_weights_file", "open_clip_model", "parse_spec",
    "save_tiny_classifier", "unwrap_state_dict",
]
