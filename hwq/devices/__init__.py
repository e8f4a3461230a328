"""Hardware in the loop: devices that compute a compiled model, reached over a wire protocol.

``Device`` (open / infer / close) is the interface; ``SocketDevice`` talks to a device server
(``serve``, ``hwq serve``) over the protocol in ``hwq.devices.protocol``; ``BoardDevice`` is the
template for a board behind a driver; ``DeviceProgram`` presents a device as a program the
attack engine judges on, behind a golden-batch gate. Protocol and rules: docs/devices.md.
"""

from .base import BoardDevice, Device, LocalDevice
from .client import SocketDevice
from .errors import DeviceError, DeviceMismatch, DeviceTimeout, ProtocolError
from .fingerprint import model_hash
from .program import DeviceProgram
from .server import Server, serve

__all__ = ["BoardDevice", "Device", "DeviceError", "DeviceProgram", "DeviceMismatch", "DeviceTimeout", "LocalDevice",
           "ProtocolError", "Server", "SocketDevice", "model_hash", "serve"]
