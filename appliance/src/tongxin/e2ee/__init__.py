"""End-to-end encryption (docs/e2ee.md): device keys and prekeys, pairwise KEM-ratchet
sessions, group sender keys, envelopes, attachments, compliance escrow and identity
pinning. A pure library: the SDK (``tongxin.client.e2ee``) moves its bytes."""

from tongxin.e2ee.device import Device, Escrow, Opened
from tongxin.e2ee.errors import (
    DeviceNotSignedError,
    E2EEError,
    EscrowError,
    IdentityChangedError,
    MalformedError,
    NoSenderKeyError,
    NoSessionError,
    ReplayError,
    TamperedError,
    TooFarAheadError,
    UnannouncedMemberError,
    UnsignedDeviceError,
    UserKeyChangedError,
    WrongSignatureError,
)

__all__ = [
    "Device",
    "DeviceNotSignedError",
    "E2EEError",
    "Escrow",
    "EscrowError",
    "IdentityChangedError",
    "MalformedError",
    "NoSenderKeyError",
    "NoSessionError",
    "Opened",
    "ReplayError",
    "TamperedError",
    "TooFarAheadError",
    "UnannouncedMemberError",
    "UnsignedDeviceError",
    "UserKeyChangedError",
    "WrongSignatureError",
]
