"""A minimal PDF writer for exported figures: one page of RGB images (Flate-compressed, full resolution) and text
in the standard Helvetica font (vector text, nothing embedded). No dependency beyond zlib; readable by every
viewer and by LaTeX's \\includegraphics.

Coordinates are given top-left like the PNG and SVG of the same figure (y down, in points); text is WinAnsi
(Latin-1 plus a few signs), other characters are replaced by close ASCII (→ as ->, − as -, ≥ as >=).
"""
from __future__ import annotations

import zlib

import numpy as np

# Helvetica advance widths (per 1000 units of the font size) of the printable ASCII characters 32..126 (the AFM).
_W = [278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556, 556, 556, 556,
      556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667,
      556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, 333, 556,
      556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722,
      500, 500, 500, 334, 260, 334, 584]
_SUBST = {"→": "->", "←": "<-", "−": "-", "≥": ">=", "≤": "<=", "…": "...", "↔": "<->", "“": '"', "”": '"',
          "‘": "'", "’": "'", "–": "-", "—": "-", "Σ": "sum ", "Δ": "d", "√": "sqrt "}


def pdf_text(text: str) -> str:
    """The text as Helvetica/WinAnsi can show it."""
    out = "".join(_SUBST.get(c, c) for c in str(text))
    return "".join(c if 32 <= ord(c) < 256 and not 127 <= ord(c) < 160 else "?" for c in out)


def text_width(text: str, size: float) -> float:
    """Width of `text` in points at font size `size` (Helvetica)."""
    return sum(_W[ord(c) - 32] if 32 <= ord(c) <= 126 else 556 for c in pdf_text(text)) * size / 1000


def _escape(text: str) -> bytes:
    s = pdf_text(text).replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return s.encode("latin-1")


class PdfPage:
    """Collects images and text on one page of width × height points; `bytes()` is the finished file."""

    def __init__(self, width: float, height: float):
        self.w, self.h = float(width), float(height)
        self.images: list[np.ndarray] = []
        self.ops: list[bytes] = []

    def image(self, arr: np.ndarray, x: float, y: float, w: float, h: float):
        """Draw a uint8 HWC (or HW grey) image into the box with top-left (x, y), w × h points."""
        arr = np.ascontiguousarray(arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2))[..., :3]
        self.images.append(arr)
        n = len(self.images)
        self.ops.append(f"q {w:.3f} 0 0 {h:.3f} {x:.3f} {self.h - y - h:.3f} cm /Im{n} Do Q".encode())

    def text(self, s: str, x: float, y: float, size: float = 9, anchor: str = "start", bold: bool = False):
        """Text with its baseline at y (top-left coordinates); anchor start | middle | end."""
        shift = {"start": 0.0, "middle": 0.5, "end": 1.0}[anchor] * text_width(s, size)
        font = "F2" if bold else "F1"
        self.ops.append(b"BT /" + font.encode() + f" {size:.2f} Tf {x - shift:.3f} {self.h - y:.3f} Td (".encode()
                        + _escape(s) + b") Tj ET")

    def bytes(self) -> bytes:
        objs: list[bytes] = []
        n_img = len(self.images)
        # 1 catalog, 2 pages, 3 page, 4 contents, 5 Helvetica, 6 Helvetica-Bold, 7.. images
        xobjects = " ".join(f"/Im{i + 1} {7 + i} 0 R" for i in range(n_img))
        objs.append(b"<< /Type /Catalog /Pages 2 0 R >>")
        objs.append(b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>")
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {self.w:.2f} {self.h:.2f}] /Contents 4 0 R "
                    f"/Resources << /Font << /F1 5 0 R /F2 6 0 R >> /XObject << {xobjects} >> >> >>".encode())
        content = zlib.compress(b"\n".join(self.ops), 6)
        objs.append(f"<< /Length {len(content)} /Filter /FlateDecode >>\nstream\n".encode() + content
                    + b"\nendstream")
        for name in ("Helvetica", "Helvetica-Bold"):
            objs.append(f"<< /Type /Font /Subtype /Type1 /BaseFont /{name} /Encoding /WinAnsiEncoding >>".encode())
        for arr in self.images:
            data = zlib.compress(arr.tobytes(), 6)
            objs.append(f"<< /Type /XObject /Subtype /Image /Width {arr.shape[1]} /Height {arr.shape[0]} "
                        f"/ColorSpace /DeviceRGB /BitsPerComponent 8 /Length {len(data)} /Filter /FlateDecode >>"
                        "\nstream\n".encode() + data + b"\nendstream")
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for i, body in enumerate(objs, 1):
            offsets.append(len(out))
            out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
        xref = len(out)
        out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
        out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
        out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
        return bytes(out)
