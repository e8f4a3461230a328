"""Device errors: each one line that names the device, the request and what to do next."""

from __future__ import annotations

from hwq.errors import HwqError


class DeviceError(HwqError):
    """A device that cannot be reached, dropped the connection or answered with an error."""


class ProtocolError(DeviceError):
    """A frame that is not a valid hwq device frame (garbage, wrong version, bad fields)."""


class TruncatedFrame(ProtocolError):
    """The connection ended in the middle of a frame."""


class FrameTooLarge(ProtocolError):
    """A frame whose payload exceeds the agreed size limit."""


class ConnectionClosed(DeviceError):
    """The peer closed the connection cleanly between frames."""


class DeviceTimeout(DeviceError):
    """No reply (or no progress on a reply) within the limit scaled to the batch."""


class DeviceMismatch(DeviceError):
    """The device serves another model, or failed the golden-batch check."""
