"""What the pages' API reads from a request, checked: the JSON body, a digit (28x28 pixels or a
PNG drawing), a label. Every problem is an InputError whose message says what was wrong and
what was expected; the server answers it with a 400 and that one line.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from typing import Any

import numpy as np
from flask import request
from PIL import Image, UnidentifiedImageError

from .data import SIDE
from .digit_image import grey_on_white, prepare_digit

MAX_IMAGE_SIDE = 4096  # pixels: a small PNG can unpack into a huge image
WORK_SIDE = 1024  # larger images are shrunk to this first: ample for a 20-pixel digit
PNG_URL = "data:image/png;base64,"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class InputError(Exception):
    """A request the API cannot use; the message says what was wrong and what was expected."""


def json_body() -> dict[str, Any]:
    """The request's JSON object, or an InputError that says what is wrong with it."""
    return parse_json_object(request.get_data(cache=False))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or an InputError that says what is wrong with it."""
    example = ('e.g. {"pixels": [[...28 numbers...], ...28 rows...]} or '
               '{"image": "data:image/png;base64,..."}')
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise InputError("the request body is not UTF-8 text; it must be a JSON object, "
                         + example) from None
    except RecursionError:
        raise InputError("the request body nests too deeply to read; it must be a JSON "
                         "object, " + example) from None
    except json.JSONDecodeError as e:
        raise InputError(f"the request body is not valid JSON ({e.msg} at character {e.pos}); "
                         f"it must be a JSON object, " + example) from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise InputError(f"the request body's JSON cannot be read: {e}") from None
    if not isinstance(body, dict):
        raise InputError(f"the request body is a JSON {_kind(body)}, not a JSON object; "
                         + example)
    return body


def digit_from(body: dict[str, Any]) -> np.ndarray:
    """The 28x28 input the network sees, from "pixels" (used as is) or "image" (prepared)."""
    if ("image" in body) == ("pixels" in body):
        raise InputError('give exactly one of "image" (a PNG data URL) or "pixels" '
                         '(28 rows of 28 numbers in [0, 1])')
    if "pixels" in body:
        return pixels_from(body["pixels"])
    try:
        return prepare_digit(png_from(body["image"]))
    except ValueError as e:  # a blank drawing, say
        raise InputError(f'"image": {e}') from None


def pixels_from(rows: Any) -> np.ndarray:
    """28 rows of 28 numbers in [0, 1] as a float32 digit, each row and value checked."""
    expected = f'"pixels" must be {SIDE} rows of {SIDE} numbers in [0, 1] (white digit on black)'
    if not isinstance(rows, list) or len(rows) != SIDE:
        got = f"{len(rows)} rows" if isinstance(rows, list) else f"a JSON {_kind(rows)}"
        raise InputError(f"{expected}, got {got}")
    for r, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != SIDE:
            got = f"{len(row)} numbers" if isinstance(row, list) else f"a JSON {_kind(row)}"
            raise InputError(f"{expected}; row {r} is {got}")
        for c, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"{expected}; row {r}, column {c} is a JSON {_kind(v)}")
            if isinstance(v, int) and abs(v) > 1:  # also one too long for any float
                shown = str(v) if len(str(v)) <= 12 else f"an integer of {len(str(v))} digits"
                raise InputError(f"{expected}; row {r}, column {c} is {shown}")
            if not math.isfinite(v):
                raise InputError(f"{expected}; row {r}, column {c} is NaN or infinity")
            if not 0 <= v <= 1:
                raise InputError(f"{expected}; row {r}, column {c} is {v!r}")
    return np.array(rows, dtype=np.float32)


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def png_from(url: Any) -> np.ndarray:
    """A PNG data URL as a grey uint8 array; transparency counts as white paper."""
    if not isinstance(url, str) or not url.startswith(PNG_URL):
        raise InputError(f'"image" must be a PNG data URL starting with "{PNG_URL}"')
    try:
        raw = base64.b64decode(url[len(PNG_URL):], validate=True)
    except (binascii.Error, ValueError):
        raise InputError('"image" is not valid base64 after "data:image/png;base64,"') from None
    if not raw.startswith(PNG_SIGNATURE):
        raise InputError('"image" is not a PNG (its bytes do not start with the PNG signature)')
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
            width, height = im.size
            if max(width, height) > MAX_IMAGE_SIDE:
                raise InputError(f'"image" is {width}x{height} pixels; at most {MAX_IMAGE_SIDE} '
                                 f'on a side allowed')
            shrink = min(1.0, WORK_SIDE / max(width, height))
            if min(width, height) * shrink < 2:
                raise InputError(f'"image" is {width}x{height} pixels: too thin to hold a digit '
                                 f'(each side needs at least {math.ceil(2 / shrink)} pixels)')
            im.load()
            im.thumbnail((WORK_SIDE, WORK_SIDE))  # bounds the memory prepare_digit needs
            return grey_on_white(im)
    except UnidentifiedImageError:
        raise InputError('"image" is not a readable PNG: its data is damaged or not a '
                         'picture') from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        detail = re.sub(r"<[^>]* at 0x[0-9a-f]+>", "the image", str(e))
        raise InputError(f'"image" is not a readable PNG: {detail}') from None


def label_from(body: dict[str, Any]) -> int:
    """The body's "label", an integer digit from 0 to 9."""
    label = body.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise InputError(f'"label" must be an integer from 0 to 9, got {json.dumps(label)[:40]}')
    return label


def floats(a: Any, decimals: int = 4) -> np.ndarray:
    """Numbers rounded for a reply (the JSON writer takes the array as it is): the browser
    needs no more, and the reply stays small."""
    return np.round(np.asarray(a, dtype=np.float64), decimals)
