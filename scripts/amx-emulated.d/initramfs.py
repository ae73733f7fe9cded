"""Write a gzip'd newc cpio (a Linux initramfs) without root: device nodes are written as
header entries, so no mknod is needed.

usage: initramfs.py OUT.gz DEST=SRC [DEST=SRC ...]   (files are stored executable)
"""

import gzip
import stat
import sys


def main() -> None:
    out, specs = sys.argv[1], sys.argv[2:]
    entries = []  # (name, mode, data, (major, minor))
    for d in ["bin", "dev", "proc", "sys", "tmp"]:
        entries.append((d, stat.S_IFDIR | 0o755, b"", (0, 0)))
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
    entries.append(("dev/null", stat.S_IFCHR | 0o666, b"", (1, 3)))
    for spec in specs:
        dst, src = spec.split("=", 1)
        with open(src, "rb") as f:
            entries.append((dst, stat.S_IFREG | 0o755, f.read(), (0, 0)))
    entries.append(("TRAILER!!!", 0, b"", (0, 0)))

    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    buf = bytearray()
    for ino, (name, mode, data, (major, minor)) in enumerate(entries, start=1):
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(nb), 0]
        buf += pad(("070701" + "".join("%08X" % v for v in fields)).encode() + nb)
        buf += pad(data)
    with gzip.open(out + ".tmp", "wb", compresslevel=6) as f:
        f.write(buf)
    import os

    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
