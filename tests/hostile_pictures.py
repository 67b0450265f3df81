"""Pictures a hostile client sends: small files that cost much to decode, some built to look
cheap from their headers. The tests send them to a real server and to the real CLI, and the
benchmark floods a server with them (bench/hostile.py). Each maker returns the file's bytes,
made once per process (some take a second or two)."""

import io
import re
import zlib
from functools import cache

import numpy as np
from PIL import Image

# A JPEG marker: 0xFF then a code that is not stuffing (00), a restart (D0-D7) or fill (FF).
JPEG_MARKER = re.compile(rb"\xff([\x01-\xcf\xd8-\xfe])")
SOS = 0xDA


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
def progressive_jpeg(side, scans, mode="L", hidden=False):
    """A progressive JPEG of side x side plain grey whose last scan is repeated until it has
    `scans` in all: each repeat is a few bytes and one more pass over the whole picture.
    `hidden`: a TEM marker (FF 01, which has no length) after the first scan, followed by two
    bytes that a reader taking every marker to have a length reads as one, and skips the
    scans behind."""
    data = encoded(Image.new(mode, (side, side), 128), "JPEG", progressive=True, quality=50)
    found = jpeg_scans(data)
    start, end = found[-1]
    data = data[:end] + data[start:end] * (scans - len(found)) + data[end:]
    if hidden:
        first_end = found[0][1]
        data = data[:first_end] + b"\xff\x01\x7f\xff" + data[first_end:]
    return data


@cache
def baseline_jpeg(side):
    """A baseline JPEG of noise, side x side: a large file that draft mode decodes at 1/8."""
    noise = np.random.default_rng(0).integers(0, 256, (side // 8, side // 8, 3), np.uint8)
    picture = Image.fromarray(noise).resize((side, side), Image.Resampling.NEAREST)
    return encoded(picture, "JPEG", quality=30)


def segment(marker, payload):
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


@cache
def scan_per_channel_cmyk_jpeg(side):
    """A baseline (not progressive) CMYK JPEG of side x side, blank, each channel in a scan of
    its own: libjpeg keeps every coefficient of the picture until the last scan, 2 bytes per
    pixel and channel, whatever the scale it decodes at. Its Huffman tables have one code of
    one bit, so each 8x8 block is two bits: 624 KB for 6320x6320."""
    one_code = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1, for symbol 0
    blocks = (-(-side // 8)) ** 2
    scan_data = b"\x00" * (-(-blocks * 2 // 8))  # per block: DC difference 0, then end of block
    frame = bytes([8]) + side.to_bytes(2, "big") * 2 + bytes([4]) + b"".join(
        bytes([c, 0x11, 0]) for c in range(1, 5))
    scans = b"".join(segment(0xDA, bytes([1, c, 0x00, 0, 63, 0])) + scan_data
                     for c in range(1, 5))
    return (b"\xff\xd8" + segment(0xDB, b"\x00" + b"\x01" * 64) + segment(0xC0, frame)
            + segment(0xC4, b"\x00" + one_code) + segment(0xC4, b"\x10" + one_code)
            + scans + b"\xff\xd9")


@cache
def app0_flood_jpeg(megabytes=9.9):
    """A small JPEG behind `megabytes` of empty APP0 segments, which a reader stores one by one
    before it reaches the picture."""
    picture = encoded(Image.new("L", (64, 64), 255), "JPEG")
    count = int(megabytes * 1e6) // 4
    return picture[:2] + b"\xff\xe0\x00\x02" * count + picture[2:]


def png_chunk(kind, payload):
    return (len(payload).to_bytes(4, "big") + kind + payload
            + zlib.crc32(kind + payload).to_bytes(4, "big"))


@cache
def png(width, height, colour_type, bit_depth, row=b"", palette=False):
    """A PNG of identical rows written directly (Pillow would not write 16-bit RGBA): a few
    hundred KB of zlib for hundreds of MB of pixels. `row` is one row's pixel bytes (zeros
    by default). `palette`: colour type 3 with a palette whose first entry is transparent."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    raw = b"\0" + (row or bytes(row_bytes))  # filter type 0, then the pixels
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(raw) for _ in range(height)) + compressor.flush()
    header = (width.to_bytes(4, "big") + height.to_bytes(4, "big")
              + bytes([bit_depth, colour_type, 0, 0, 0]))
    extra = png_chunk(b"PLTE", bytes(3 * 256)) + png_chunk(b"tRNS", b"\0") if palette else b""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra
            + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))


@cache
def rle8_bmp(width=6000, height=6500):
    """An 8-bit BMP compressed with RLE8 whose every row is one pixel, then end of line: 4
    bytes a row, and Pillow's decoder, written in Python, pads the rest of the row a byte at a
    time (26 KB, seconds of CPU)."""
    pixels = b"\x01\x00\x00\x00" * height + b"\x00\x01"
    header_size, palette = 40, bytes(4 * 256)
    offset = 14 + header_size + len(palette)
    info = (header_size.to_bytes(4, "little") + width.to_bytes(4, "little")
            + height.to_bytes(4, "little") + (1).to_bytes(2, "little") + (8).to_bytes(2, "little")
            + (1).to_bytes(4, "little") + len(pixels).to_bytes(4, "little") + bytes(8)
            + (256).to_bytes(4, "little") + bytes(4))
    return (b"BM" + (offset + len(pixels)).to_bytes(4, "little") + bytes(4)
            + offset.to_bytes(4, "little") + info + palette + pixels)


@cache
def text_bomb_png():
    """A small PNG with a compressed text chunk that inflates past Pillow's limit for text."""
    text = png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b" " * 2**24, 9))
    picture = encoded(Image.new("L", (64, 64), 255), "PNG")
    return picture[:33] + text + picture[33:]


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


# A picture the header check refuses at once; pictures that pass it yet cost the most, each
# stopped by the bounds of its decode process; and the dearest a picture can be and be read.
WORST = {
    "grey PNG, 7000x7000 (pixels over the limit)": lambda: png(7000, 7000, 0, 8),
    "16-bit RGBA PNG, 6300x6300": lambda: png(6300, 6300, 6, 16),
    "1,000-scan progressive JPEG, 6000x6000": lambda: progressive_jpeg(6000, 1000, "RGB"),
    "1,000 scans behind a TEM marker": lambda: progressive_jpeg(6000, 1000, hidden=True),
    "CMYK JPEG, a scan per channel, 6320x6320": lambda: scan_per_channel_cmyk_jpeg(6320),
    "palette PNG with transparency, 5,000,000x8": lambda: png(5_000_000, 8, 3, 8, palette=True),
    "JPEG behind 9.9 MB of APP0 segments": app0_flood_jpeg,
    "RLE8 BMP, 6000x6500": rle8_bmp,
    "10-scan progressive grey JPEG, 5600x5600": lambda: progressive_jpeg(5600, 10),
    "grey PNG, 6300x6300": lambda: png(6300, 6300, 0, 8),
    "baseline colour JPEG, 6300x6300": lambda: baseline_jpeg(6300),
    "dot grid, 400x400": dot_grid,
}
