"""Prometheus metrics of one service instance (own registry, so tests can make many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.active_streams = Gauge(
            "spikeear_active_streams",
            "Open streaming connections",
            ["endpoint"],
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "spikeear_audio_seconds",
            "Seconds of audio received",
            ["endpoint"],
            registry=self.registry,
        )
        self.partial_latency = Histogram(
            "spikeear_partial_latency_seconds",
            "From the arrival of an audio chunk to the partial it causes",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=self.registry,
        )
        self.transcribe_seconds = Histogram(
            "spikeear_transcribe_seconds",
            "Batch transcription wall time",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=self.registry,
        )
        self.words = Counter(
            "spikeear_words", "Final words emitted", ["endpoint"], registry=self.registry
        )
        self.errors = Counter(
            "spikeear_errors",
            "Rejected requests and messages by kind",
            ["kind"],
            registry=self.registry,
        )
