"""spikeear transports: the command line, the HTTP/WebSocket service and the demos."""
