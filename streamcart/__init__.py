"""streamcart: a Kafka-native commerce order pipeline."""

__version__ = "0.1.0"
