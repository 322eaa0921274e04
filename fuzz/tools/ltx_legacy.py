#!/usr/bin/env python3
"""Rewrites a walsync LTX file (LZ4 block pages) with legacy page frames:
each page a standalone LZ4 frame, as older Litestream LTX files hold them.

    ltx_legacy.py IN.ltx OUT.ltx MODE

MODE: stored     one uncompressed ("stored") block, no checksums
      checked    content size, block and content checksums
      split      two blocks (stored, then the original LZ4 block data can't
                 be reused, so both stored), dependent blocks flag
Used to make seeds for fuzz/seeds/ltx_decode; needs only the standard library.
"""
import struct, sys

def crc64_go_iso(data, crc=0):
    poly = 0xD800000000000000
    crc ^= 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF

P1, P2, P3, P4, P5 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1
M = 0xFFFFFFFF
def rotl(x, r): return ((x << r) | (x >> (32 - r))) & M
def xxh32(data, seed=0):
    n = len(data); i = 0
    if n >= 16:
        v = [(seed + P1 + P2) & M, (seed + P2) & M, seed, (seed - P1) & M]
        while i + 16 <= n:
            for k in range(4):
                lane = struct.unpack_from('<I', data, i + 4 * k)[0]
                v[k] = (rotl((v[k] + lane * P2) & M, 13) * P1) & M
            i += 16
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M
    else:
        h = (seed + P5) & M
    h = (h + n) & M
    while i + 4 <= n:
        h = (rotl((h + struct.unpack_from('<I', data, i)[0] * P3) & M, 17) * P4) & M
        i += 4
    while i < n:
        h = (rotl((h + data[i] * P5) & M, 11) * P1) & M
        i += 1
    h ^= h >> 15; h = (h * P2) & M; h ^= h >> 13; h = (h * P3) & M; h ^= h >> 16
    return h

def lz4_block_decompress(src, size):
    out = bytearray(); i = 0
    while i < len(src):
        tok = src[i]; i += 1
        lit = tok >> 4
        if lit == 15:
            while True:
                b = src[i]; i += 1; lit += b
                if b != 255: break
        out += src[i:i + lit]; i += lit
        if i >= len(src): break
        off = src[i] | (src[i + 1] << 8); i += 2
        ml = tok & 15
        if ml == 15:
            while True:
                b = src[i]; i += 1; ml += b
                if b != 255: break
        ml += 4
        for _ in range(ml): out.append(out[-off])
    assert len(out) == size, (len(out), size)
    return bytes(out)

def uvarint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80); v >>= 7
    out.append(v)
    return bytes(out)

def frame(page, mode):
    flg = 0b01 << 6
    if mode == 'stored': flg |= 0x20
    if mode == 'checked': flg |= 0x20 | 0x10 | 0x08 | 0x04
    bd = 4 << 4
    desc = bytes([flg, bd])
    if flg & 0x08: desc += struct.pack('<Q', len(page))
    out = struct.pack('<I', 0x184D2204) + desc + bytes([(xxh32(desc) >> 8) & 0xFF])
    blocks = [page] if mode != 'split' else [page[:len(page) // 3], page[len(page) // 3:]]
    for b in blocks:
        out += struct.pack('<I', len(b) | 0x80000000) + b
        if flg & 0x10: out += struct.pack('<I', xxh32(b))
    out += struct.pack('<I', 0)
    if flg & 0x04: out += struct.pack('<I', xxh32(page))
    return out

def main(src, dst, mode):
    d = open(src, 'rb').read()
    header = d[:100]
    page_size = struct.unpack_from('>I', header, 8)[0]
    pos = 100; pages = []
    while True:
        pgno, flags = struct.unpack_from('>IH', d, pos); pos += 6
        if pgno == 0 and flags == 0: break
        assert flags == 1
        size = struct.unpack_from('>I', d, pos)[0]; pos += 4
        pages.append((pgno, lz4_block_decompress(d[pos:pos + size], page_size))); pos += size
    post = d[-16:-8]
    out = bytearray(header); hashed = bytearray(header); index = bytearray()
    for pgno, page in pages:
        off = len(out)
        ph = struct.pack('>IH', pgno, 0)
        out += ph + frame(page, mode)
        hashed += ph + page
        index += uvarint(pgno) + uvarint(off) + uvarint(len(out) - off)
    index += b'\0'
    tail = b'\0' * 6 + bytes(index) + struct.pack('>Q', len(index))
    out += tail; hashed += tail + post
    out += post + struct.pack('>Q', crc64_go_iso(bytes(hashed)) | (1 << 63))
    open(dst, 'wb').write(out)

if __name__ == '__main__':
    main(*sys.argv[1:4])
