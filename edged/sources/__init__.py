"""Sensor sources: serial (lines | COBS frames), ZeroMQ and replay.

Each source yields validated :class:`~edged.sources.sample.Sample` objects and
never raises out of its loop on bad input: rejections are counted per reason, and
those whose header named a catalogue model are reported as a
:class:`~edged.sources.base.Rejection` to ``Source.on_rejected``.
The transport modules (``edged.sources.zmq``, ``.serial``, ``.replay``) are
imported on demand so that importing this package stays cheap.
"""

from edged.sources.base import Rejection, Source
from edged.sources.framing import FrameError
from edged.sources.queue import IngestQueue
from edged.sources.sample import Sample
from edged.sources.stats import SourceStats

__all__ = ["FrameError", "IngestQueue", "Rejection", "Sample", "Source", "SourceStats"]
