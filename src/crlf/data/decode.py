"""Decode one image file to a square uint8 array ``(3, S, S)``, whatever its mode.

Pillow does the decoding; this module only makes every mode land in 8-bit RGB the way a person would
expect: EXIF orientation applied, transparency composited on white, 16-bit and float greyscale scaled
(Pillow's own ``convert("RGB")`` clips them to 0/255), CMYK and palette images converted.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 64_000_000  # larger images are refused as likely decompression bombs


class BadImage(Exception):
    """The bytes are not a usable image; the message says why."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            scaled = array / 65535.0
        else:  # 32-bit int or float greyscale: stretch its own range
            low, high = float(array.min()), float(array.max())
            scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
        gray = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop (a no-op for CIFAR's 32x32)."""
    if img.size == (size, size):
        return img
    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_image(data: bytes, size: int, native_side: int | None = None) -> np.ndarray:
    """Decode ``data`` to ``(3, size, size)`` uint8, or raise :class:`BadImage` saying why. ``native_side``:
    the side every image of a fixed-size format has (Tiny-ImageNet's 64); another size is a bad image there,
    since it means a damaged or foreign file (a plain folder's images may have any size: they are resized)."""
    if not data:
        raise BadImage("the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImage(f"{img.width}x{img.height} pixels is too large (limit {MAX_PIXELS:,})")
                if native_side is not None and img.size != (native_side, native_side):
                    raise BadImage(f"it is {img.width}x{img.height} pixels, but every image of this dataset is "
                                   f"{native_side}x{native_side}: a damaged or foreign file")
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _square(_to_rgb(img), size)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"refused as a possible decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image Pillow can identify (wrong extension or not an image)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt data
        raise BadImage(f"corrupt or truncated image data ({exc})") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)
