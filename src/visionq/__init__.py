"""visionq: asynchronous computer-vision inference on object storage."""

__version__ = "0.1.0"
