"""Device errors: each one line that names the device, the request and what to do next."""

from __future__ import annotations

from hwq.errors import HwqError


class DeviceError(HwqError):
    """A device that cannot be reached, dropped the connection or answered with an error."""


class ProtocolError(DeviceError):
    """A frame that is not a valid hwq device frame (garbage, wrong version, bad fields).
    ``request_id`` is the frame's once its header could be read (0 before), so that an error
    reply can name the request it refuses."""

    def __init__(self, message: str, *, hint: str | None = None, request_id: int = 0):
        self.request_id = request_id
        super().__init__(message, hint=hint)


class TruncatedFrame(ProtocolError):
    """The connection ended in the middle of a frame."""


class FrameTooLarge(ProtocolError):
    """A frame whose payload exceeds the agreed size limit."""


class BadMessage(ProtocolError):
    """A whole, well-framed message whose content is wrong (a payload of the wrong type for its
    kind, bad or too deeply nested JSON). The stream is still in step, so the connection can
    stay up: the receiver answers request ``request_id`` with an error."""


class ConnectionClosed(DeviceError):
    """The peer closed the connection cleanly between frames."""


class DeviceBusy(DeviceError):
    """The device server turned the connection away: it serves as many clients as it takes."""


class DeviceTimeout(DeviceError):
    """No reply (or no progress on a reply) within the limit scaled to the batch."""


class DeviceMismatch(DeviceError):
    """The device serves another model, or failed the golden-batch check."""
