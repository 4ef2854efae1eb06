"""birdsed: bird sound-event-detection training for the SageMaker training contract."""

__version__ = "0.1.0"
