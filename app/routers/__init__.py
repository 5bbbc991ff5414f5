"""One router per concern: streaming, Vosk compatibility, batch, operations."""
