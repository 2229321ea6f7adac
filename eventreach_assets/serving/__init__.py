"""Serving the trained models over HTTP, the way a SageMaker inference container does."""
