"""Render modes of the MARA environments, following Gymnasium's conventions.

- ``"ansi"``: the prompt and the answer so far as text, ``"USER: ...\\nASSISTANT: ..."``;
- ``"rgb_array"``: the same text drawn on a fixed-size frame, an ``(H, W, 3)`` ``uint8`` array, so that
  wrappers that record or show frames (``RecordVideo``, SB3's ``VecVideoRecorder``, RL Zoo's
  ``make_vec_env``, which asks for ``"rgb_array"`` by default) work unchanged. A long answer shows its
  last lines: the frame is the end of the conversation, where the decisions are being made.

Rendering is only done when ``render()`` is called; it never slows ``step``.

Example::

    >>> frame = text_frame("USER: hi\\nASSISTANT: hello")
    >>> frame.shape, frame.dtype
    ((360, 640, 3), dtype('uint8'))
"""

from __future__ import annotations

import textwrap
from functools import lru_cache

import numpy as np

#: The render modes both environments accept (``None``: no rendering).
RENDER_MODES: tuple[str, ...] = ("ansi", "rgb_array")

#: Frames per second a video recorder should play the frames at (one frame per decision; declared so
#: that recorders need not guess, as Gymnasium asks of every env with ``"rgb_array"``).
RENDER_FPS = 4

#: Frame size (height, width) of ``"rgb_array"``: fixed, as video recorders need.
FRAME_SHAPE: tuple[int, int] = (360, 640)

_MARGIN = 8
_FONT_SIZE = 14
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)


def check_render_mode(render_mode: str | None) -> str | None:
    """Return ``render_mode`` if it is ``None`` or one of :data:`RENDER_MODES`.

    :raises ValueError: any other value, naming the valid ones.
    """
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(
            f"render_mode must be None, {' or '.join(repr(m) for m in RENDER_MODES)}, got {render_mode!r}. "
            "'ansi' returns the prompt and answer so far as text, 'rgb_array' the same text as an image."
        )
    return render_mode


@lru_cache(maxsize=1)
def _font():  # type: ignore[no-untyped-def]
    from PIL import ImageFont  # lazy: only "rgb_array" needs Pillow (it comes with matplotlib)

    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def text_frame(text: str, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """Draw ``text`` on a white ``(height, width, 3)`` ``uint8`` frame, wrapped to the width.

    Lines that do not fit are dropped from the top, so the end of the text stays visible.

    :param text: the text; newlines start new lines.
    :param shape: ``(height, width)`` in pixels.
    """
    from PIL import Image, ImageDraw

    height, width = shape
    font = _font()
    left, top, right, bottom = font.getbbox("Mg")
    char_width = max((right - left) / 2, 1)
    line_height = max(bottom - top, 1) + 4
    columns = max(int((width - 2 * _MARGIN) / char_width), 1)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(paragraph, columns, replace_whitespace=False, drop_whitespace=True) or [""]
    fits = max((height - 2 * _MARGIN) // line_height, 1)
    lines = lines[-fits:]
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((_MARGIN, _MARGIN + i * line_height), line, fill=_TEXT, font=font)
    return np.asarray(image, dtype=np.uint8).copy()
