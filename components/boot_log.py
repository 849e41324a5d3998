"""UEFI boot event logs (TCG PC Client, crypto-agile, sha256 bank): a synthetic one for software TPMs,
and the PCR extends any such log stands for.

A software TPM has no firmware that measured a boot, so swtpm mode gives each agent a synthetic log
(`synthetic_boot`) and extends the TPM's PCRs with exactly its events, as upstream keylime's
measured-boot-swtpm-sanity test does with a captured log. The log is shaped like an edk2 + shim + grub
+ Linux boot with Secure Boot on, so `keylime-policy create measured-boot` makes a reference state from
it and keylime's `example` measured-boot policy evaluates it. Nothing in it comes from this machine.

    events = synthetic_boot()
    encode(events)              # the binary_bios_measurements bytes
    extends(encode(events))     # [(pcr, sha256 hex), ...] in log order, for any crypto-agile log
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import uuid

SHA256 = 0x000B
EV_NO_ACTION = 0x3
EV_SEPARATOR = 0x4
EV_S_CRTM_VERSION = 0x8
EV_IPL = 0xD
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
# The owner of every key in the synthetic Secure Boot databases.
SYNTHETIC_OWNER = uuid.UUID("6b65796c-696d-6570-7573-682d73796e74")


class BootLogError(ValueError):
    """Not a crypto-agile TCG event log with a sha256 bank."""


@dataclasses.dataclass(frozen=True)
class Event:
    pcr: int
    type: int
    data: bytes
    # What the firmware hashed, when it is not the event data itself (images, variables of PCR 1).
    measured: bytes | None = None

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.data if self.measured is None else self.measured).digest()


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def _variable(guid: uuid.UUID, name: str, value: bytes) -> bytes:
    """UEFI_VARIABLE_DATA."""
    return guid.bytes_le + struct.pack("<QQ", len(name), len(value)) + _utf16(name) + value


def _signature_list(signature_type: uuid.UUID, signatures: list[bytes]) -> bytes:
    """EFI_SIGNATURE_LIST of equally sized EFI_SIGNATURE_DATA, all owned by SYNTHETIC_OWNER."""
    size = 16 + len(signatures[0])
    body = b"".join(SYNTHETIC_OWNER.bytes_le + signature for signature in signatures)
    return signature_type.bytes_le + struct.pack("<III", 28 + len(body), 0, size) + body


def _file_path(path: str) -> bytes:
    """An EFI device path: one media file-path node, then the end node."""
    name = _utf16(path + "\0")
    return struct.pack("<BBH", 4, 4, 4 + len(name)) + name + b"\x7f\xff\x04\x00"


def _image_load(path: str) -> bytes:
    """UEFI_IMAGE_LOAD_EVENT of an image at a fixed address."""
    device_path = _file_path(path)
    return struct.pack("<QQQQ", 0x7E000000, 0x100000, 0, len(device_path)) + device_path


def _load_option(description: str, path: str) -> bytes:
    """EFI_LOAD_OPTION, the value of a Boot#### variable."""
    device_path = _file_path(path)
    return struct.pack("<IH", 1, len(device_path)) + _utf16(description + "\0") + device_path


def _stand_in(label: str, size: int = 32) -> bytes:
    """Deterministic bytes standing for a certificate or an image the synthetic boot never had."""
    return hashlib.sha256(label.encode()).digest() * (size // 32)


def _variable_boot(name: str, value: bytes) -> Event:
    # PCR 1 boot variables are measured over their value only.
    return Event(1, EV_EFI_VARIABLE_BOOT, _variable(EFI_GLOBAL_VARIABLE, name, value), measured=value)


def _application(path: str) -> Event:
    return Event(4, EV_EFI_BOOT_SERVICES_APPLICATION, _image_load(path), measured=_stand_in(f"image {path}", 4096))


def synthetic_boot(secure_boot: bool = True, kernel: str = "6.8.0-keylime-push",
                   boot_entries: tuple[str, ...] = ("ubuntu",)) -> list[Event]:
    """The events of one boot: firmware, Secure Boot state and databases, boot entries, shim, grub, Linux."""
    separator = b"\0" * 4
    cmdline = f"/vmlinuz-{kernel} root=LABEL=cloudimg-rootfs ro console=ttyS0"
    entries = [_variable_boot(f"Boot{index:04X}", _load_option(name, r"\EFI\ubuntu\shimx64.efi"))
               for index, name in enumerate(boot_entries, start=1)]
    boot_order = b"".join(struct.pack("<H", index) for index in range(1, len(boot_entries) + 1))
    return [
        Event(0, EV_S_CRTM_VERSION, _utf16("1.00\0")),
        Event(
            0, EV_EFI_PLATFORM_FIRMWARE_BLOB, struct.pack("<QQ", 0x820000, 0xE0000), measured=_stand_in("firmware volume", 4096)
        ),
        Event(7, EV_EFI_VARIABLE_DRIVER_CONFIG, _variable(EFI_GLOBAL_VARIABLE, "SecureBoot", bytes([secure_boot]))),
        Event(
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            _variable(EFI_GLOBAL_VARIABLE, "PK", _signature_list(EFI_CERT_X509, [_stand_in("PK", 256)])),
        ),
        Event(
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            _variable(EFI_GLOBAL_VARIABLE, "KEK", _signature_list(EFI_CERT_X509, [_stand_in("KEK", 256)])),
        ),
        Event(
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            _variable(EFI_IMAGE_SECURITY_DATABASE, "db", _signature_list(EFI_CERT_X509, [_stand_in("db", 256)])),
        ),
        Event(
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            _variable(EFI_IMAGE_SECURITY_DATABASE, "dbx", _signature_list(EFI_CERT_SHA256, [_stand_in("revoked image")])),
        ),
        Event(7, EV_SEPARATOR, separator),
        _variable_boot("BootOrder", boot_order),
        *entries,
        *[Event(pcr, EV_SEPARATOR, separator) for pcr in range(7)],
        Event(4, EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
        _application(r"\EFI\ubuntu\shimx64.efi"),
        _application(r"\EFI\ubuntu\grubx64.efi"),
        Event(8, EV_IPL, f"grub_cmd: linux /vmlinuz-{kernel} root=LABEL=cloudimg-rootfs ro console=ttyS0\0".encode()),
        Event(9, EV_IPL, f"/vmlinuz-{kernel}\0".encode(), measured=_stand_in(f"kernel {kernel}", 4096)),
        _application(f"/vmlinuz-{kernel}"),
        Event(8, EV_IPL, f"kernel_cmdline: {cmdline}\0".encode()),
        Event(9, EV_IPL, f"/initrd.img-{kernel}\0".encode(), measured=_stand_in(f"initrd {kernel}", 4096)),
        Event(5, EV_EFI_ACTION, b"Exit Boot Services Invocation"),
        Event(5, EV_EFI_ACTION, b"Exit Boot Services Returned with Success"),
    ]


def _spec_id_event() -> bytes:
    """The log's first event, in the SHA-1 format: TCG_EfiSpecIDEvent naming the one bank (sha256)."""
    spec_id = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1) + struct.pack("<HH", SHA256, 32) + b"\0"
    return struct.pack("<II", 0, EV_NO_ACTION) + b"\0" * 20 + struct.pack("<I", len(spec_id)) + spec_id


def encode(events: list[Event]) -> bytes:
    """The binary_bios_measurements bytes of `events`."""
    body = b"".join(
        struct.pack("<IIIH", event.pcr, event.type, 1, SHA256) + event.digest + struct.pack("<I", len(event.data)) + event.data
        for event in events
    )
    return _spec_id_event() + body


def extends(log: bytes) -> list[tuple[int, str]]:
    """(PCR, sha256 digest) of each measured event of a crypto-agile log, in order: what the TPM was extended with."""
    try:
        return list(_extends(log))
    except struct.error:
        raise BootLogError("the event log ends in the middle of an event") from None


def _extends(log: bytes):
    _pcr, event_type = struct.unpack_from("<II", log, 0)
    (header_size,) = struct.unpack_from("<I", log, 28)
    header = log[32 : 32 + header_size]
    if event_type != EV_NO_ACTION or not header.startswith(b"Spec ID Event03\0"):
        raise BootLogError("not a crypto-agile event log (its first event is no 'Spec ID Event03')")
    (banks,) = struct.unpack_from("<I", header, 24)
    sizes = dict(struct.unpack_from("<HH", header, 28 + 4 * index) for index in range(banks))
    if SHA256 not in sizes:
        raise BootLogError("the event log has no sha256 bank")
    offset = 32 + header_size
    while offset < len(log):
        pcr, event_type, count = struct.unpack_from("<III", log, offset)
        offset += 12
        digest = None
        for _ in range(count):
            (algorithm,) = struct.unpack_from("<H", log, offset)
            if algorithm not in sizes:
                raise BootLogError(f"an event has a digest of algorithm {algorithm:#x}, which the log's header does not declare")
            value = log[offset + 2 : offset + 2 + sizes[algorithm]]
            digest = value.hex() if algorithm == SHA256 else digest
            offset += 2 + sizes[algorithm]
        (size,) = struct.unpack_from("<I", log, offset)
        offset += 4 + size
        if offset > len(log):
            raise struct.error
        # EV_NO_ACTION events are informational: the firmware extends no PCR with them.
        if event_type != EV_NO_ACTION:
            if digest is None:
                raise BootLogError(f"an event of PCR {pcr} has no sha256 digest")
            yield pcr, digest


def replay(log: bytes) -> dict[int, str]:
    """The sha256 PCR values the log's events extend a freshly reset TPM to."""
    pcrs: dict[int, bytes] = {}
    for pcr, digest in extends(log):
        pcrs[pcr] = hashlib.sha256(pcrs.get(pcr, b"\0" * 32) + bytes.fromhex(digest)).digest()
    return {pcr: value.hex() for pcr, value in sorted(pcrs.items())}
