"""Pictures a hostile client sends: small files that are costly to decode. The tests send them
to a real server (tests/app/test_api.py, test_server.py) and the benchmark floods one with them
(bench/hostile.py). Each maker returns the file's bytes, made once per process (some take a
second or two)."""

import io
import zlib
from functools import cache

import numpy as np
from PIL import Image

from app.pictures.decode import JPEG_MARKER, SOS


def encoded(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg_scans(data):
    """(start, end) of each scan of a JPEG: its SOS header and the data up to the next
    marker."""
    scans, position = [], 2
    while match := JPEG_MARKER.search(data, position):
        start = match.start()
        position = match.end() + int.from_bytes(data[match.end():match.end() + 2], "big")
        if match.group(1)[0] == SOS:
            following = JPEG_MARKER.search(data, position)
            position = following.start() if following else len(data)
            scans.append((start, position))
    return scans


@cache
def progressive_jpeg(side, scans, mode="L"):
    """A progressive JPEG of side x side plain grey whose last scan is repeated until it has
    `scans` in all: each repeat is a few bytes and one more pass over the whole picture."""
    data = encoded(Image.new(mode, (side, side), 128), "JPEG", progressive=True, quality=50)
    found = jpeg_scans(data)
    start, end = found[-1]
    return data[:end] + data[start:end] * (scans - len(found)) + data[end:]


@cache
def baseline_jpeg(side):
    """A baseline JPEG of noise, side x side: a large file that draft mode decodes at 1/8."""
    noise = np.random.default_rng(0).integers(0, 256, (side // 8, side // 8, 3), np.uint8)
    picture = Image.fromarray(noise).resize((side, side), Image.Resampling.NEAREST)
    return encoded(picture, "JPEG", quality=30)


@cache
def png(width, height, colour_type, bit_depth, row=b""):
    """A PNG of identical rows written directly (Pillow would not write 16-bit RGBA): a few
    hundred KB of zlib for hundreds of MB of pixels. `row` is one row's pixel bytes (zeros
    by default)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    raw = b"\0" + (row or bytes(row_bytes))  # filter type 0, then the pixels
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(raw) for _ in range(height)) + compressor.flush()

    def chunk(kind, payload):
        return (len(payload).to_bytes(4, "big") + kind + payload
                + zlib.crc32(kind + payload).to_bytes(4, "big"))

    header = (width.to_bytes(4, "big") + height.to_bytes(4, "big")
              + bytes([bit_depth, colour_type, 0, 0, 0]))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


@cache
def bad_checksum_png():
    """A small PNG whose header chunk's CRC is wrong: damaged, not some other format."""
    data = bytearray(encoded(Image.new("L", (64, 64), 255), "PNG"))
    data[29] ^= 0xFF  # the last byte of IHDR's CRC (8 signature + 8 + 13 header bytes)
    return bytes(data)


@cache
def dot_grid(side=400, step=2):
    """Black dots on white paper, `step` pixels apart: the most regions of ink the transform
    can be asked to sort, at the size it works at."""
    pixels = np.full((side, side), 255, np.uint8)
    pixels[8:-8:step, 8:-8:step] = 0
    return encoded(Image.fromarray(pixels), "PNG")


# The worst pictures of each kind, by what they cost: the first three are refused from their
# headers; the rest are the dearest that the limits let through.
WORST = {
    "1,000-scan progressive JPEG (refused)": lambda: progressive_jpeg(6000, 1000, "RGB"),
    "16-bit RGBA PNG, 6300x6300 (refused)": lambda: png(6300, 6300, 6, 16),
    "grey PNG, 7000x7000 (refused)": lambda: png(7000, 7000, 0, 8),
    "20-scan progressive grey JPEG, 5600x5600": lambda: progressive_jpeg(5600, 20),
    "16-bit RGBA PNG, 4000x4000": lambda: png(4000, 4000, 6, 16),
    "grey PNG, 6300x6300": lambda: png(6300, 6300, 0, 8),
    "baseline colour JPEG, 6300x6300": lambda: baseline_jpeg(6300),
    "dot grid, 400x400": dot_grid,
}
