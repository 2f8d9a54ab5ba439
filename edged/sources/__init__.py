"""Sensor sources: serial (lines | COBS frames), ZeroMQ and replay.

Each source yields validated :class:`~edged.sources.sample.Sample` objects and
never raises out of its loop on bad input: rejections are counted per reason.
"""

from edged.sources.sample import Sample

__all__ = ["Sample"]
