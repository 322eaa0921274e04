#!/usr/bin/env python3
"""Rewrites a little-endian-checksum SQLite WAL (magic 0x377f0682, what
x86 hosts write) as a big-endian-checksum one (0x377f0683), recomputing the
header and every frame checksum, so the seed corpus has both byte orders.

    wal_to_be.py IN OUT
"""
import struct, sys

def cksum(data, s0, s1, big):
    fmt = '>' if big else '<'
    for i in range(0, len(data), 8):
        a, b = struct.unpack_from(fmt + 'II', data, i)
        s0 = (s0 + a + s1) & 0xFFFFFFFF
        s1 = (s1 + b + s0) & 0xFFFFFFFF
    return s0, s1

def main(src, dst):
    d = bytearray(open(src, 'rb').read())
    struct.pack_into('>I', d, 0, 0x377F0683)
    s = cksum(d[:24], 0, 0, True)
    struct.pack_into('>II', d, 24, *s)
    page_size = struct.unpack_from('>I', d, 8)[0] or 65536
    salts = d[16:24]
    off = 32
    while off + 24 + page_size <= len(d):
        if d[off + 8:off + 16] != salts:
            break  # a frame of an earlier log: left as it is
        s = cksum(d[off:off + 8], *s, True)
        s = cksum(d[off + 24:off + 24 + page_size], *s, True)
        struct.pack_into('>II', d, off + 16, *s)
        off += 24 + page_size
    open(dst, 'wb').write(d)

if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
