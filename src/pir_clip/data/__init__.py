"""Data: the one image decoder, annotation formats, class ids from image names, and the synthetic
benchmark (with its scene painter)."""
from .annotations import CaptionRecord, DataFormatError, RetrievalSet, load_caption_records, load_retrieval_set
from .images import ImageDecodeError, decode_image, parse_bands, to_rgb8
from .labels import class_id, class_name_from_image_name, resolve_class_id

__all__ = [
    "CaptionRecord", "DataFormatError", "RetrievalSet", "load_caption_records", "load_retrieval_set",
    "ImageDecodeError", "decode_image", "parse_bands", "to_rgb8", "class_id", "class_name_from_image_name",
    "resolve_class_id",
]
