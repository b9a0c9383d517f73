"""Evaluation: encoding image and caption sets, RS retrieval metrics, and figures."""
from .encode import encode_images, encode_retrieval_set, encode_texts, evaluate_retrieval
from .metrics import MEAN_RECALL_NAME, RECALL_NAMES, retrieval_metrics

__all__ = [
    "encode_images", "encode_retrieval_set", "encode_texts", "evaluate_retrieval", "MEAN_RECALL_NAME",
    "RECALL_NAMES", "retrieval_metrics",
]
