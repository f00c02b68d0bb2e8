#!/usr/bin/env python3
"""Draws the web client's icons (a white "#" on the accent colour) with the standard library only.

Run from anywhere: writes icon-192.png, icon-512.png, icon-maskable-512.png, apple-touch-icon.png
and favicon.ico next to this file. favicon.svg is hand-written and drawn to match.
"""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ACCENT = (0x43, 0x38, 0xCA)
WHITE = (0xFF, 0xFF, 0xFF)


def inside_round_rect(x, y, r):
    """(x, y) in the unit square with corners rounded by radius r."""
    cx = min(max(x, r), 1 - r)
    cy = min(max(y, r), 1 - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def inside_hash(x, y, scale):
    """The "#" glyph: two slanted verticals and two horizontals, centred, `scale` of the square."""
    # Map into glyph space [0, 1] around the centre.
    gx = (x - 0.5) / scale + 0.5
    gy = (y - 0.5) / scale + 0.5
    if not (0 <= gx <= 1 and 0 <= gy <= 1):
        return False
    t = 0.13            # stroke width
    slant = 0.12        # horizontal shift of the verticals from bottom to top
    for bar_y in (0.33, 0.67):
        if abs(gy - bar_y) <= t / 2 and 0.04 <= gx <= 0.96:
            return True
    for bar_x in (0.36, 0.64):
        xc = bar_x + slant * (0.5 - gy)
        if abs(gx - xc) <= t / 2 and 0.04 <= gy <= 0.96:
            return True
    return False


def draw(size, radius, glyph_scale, ss=4):
    rows = []
    n = ss * ss
    for py in range(size):
        row = bytearray([0])  # filter: none
        for px in range(size):
            bg = fg = 0
            for sy in range(ss):
                for sx in range(ss):
                    x = (px + (sx + 0.5) / ss) / size
                    y = (py + (sy + 0.5) / ss) / size
                    if radius == 0 or inside_round_rect(x, y, radius):
                        if inside_hash(x, y, glyph_scale):
                            fg += 1
                        else:
                            bg += 1
            a = (bg + fg) / n
            if a == 0:
                row += bytes(4)
                continue
            f = fg / (bg + fg)
            rgb = [round(ACCENT[i] * (1 - f) + WHITE[i] * f) for i in range(3)]
            row += bytes(rgb + [round(a * 255)])
        rows.append(bytes(row))
    return png(size, b"".join(rows))


def png(size, raw):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def ico(png_bytes, size):
    """An ICO file holding one PNG image (supported by every current browser)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", size % 256, size % 256, 0, 0, 1, 32, len(png_bytes), 6 + 16)
    return header + entry + png_bytes


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
    print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    write("icon-192.png", draw(192, 0.22, 0.56))
    write("icon-512.png", draw(512, 0.22, 0.56, ss=3))
    # Maskable: full bleed, the glyph inside the central 80 % safe zone.
    write("icon-maskable-512.png", draw(512, 0, 0.46, ss=3))
    write("apple-touch-icon.png", draw(180, 0, 0.5))
    write("favicon.ico", ico(draw(32, 0.22, 0.62), 32))
