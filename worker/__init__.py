"""embedstream: a Kafka stream-processing worker that turns text events into static embeddings."""

__version__ = "0.1.0"
