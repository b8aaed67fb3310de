"""The terminal: one stderr console, logging through it, and user text printed literally.

Its own module so that every command and the DDP workers (:mod:`pipeline.training.distributed`) set up the same
console and logging without importing the command line, which imports them.
"""
from __future__ import annotations

import logging
import unicodedata


def escape(text: str) -> str:
    """``text`` with rich markup escaped, so a path or key like ``[/x]`` is printed, never parsed."""
    from rich.markup import escape as _escape

    return _escape(text)


def console():
    from rich.console import Console

    import shutil

    return Console(stderr=True, width=max(120, shutil.get_terminal_size((120, 24)).columns))


def setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    class LiteralHandler(RichHandler):
        """Log records name user paths too: no markup (``markup=False``) and no raw control characters."""

        def render_message(self, record, message):
            return super().render_message(record, shown(message))

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True,
        handlers=[LiteralHandler(console=console(), show_path=False, show_time=False, markup=False)],
    )
    for noisy in ("torch", "onnxscript", "onnx_ir", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def shown(text) -> str:
    """User-supplied text as printed: control characters (ESC, BEL, DEL, C1) become visible escapes such as
    ``\\x1b``, so a file name cannot recolour, retitle or clear the terminal; newlines and tabs stay. Bytes that
    are not UTF-8 (surrogate-escaped in ``str(Path)``) are shown the same way instead of failing to print."""
    out = []
    for c in str(text):
        cat = unicodedata.category(c)
        if cat == "Cc" and c not in "\n\t":
            out.append(f"\\x{ord(c):02x}")
        elif cat == "Cs":
            out.append(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def literal(*parts):
    """A rich ``Text`` from plain strings and ``(string, style)`` pairs, never parsed as markup.

    Everything that can hold user text (paths, model names, labels from a model's metadata, exception
    messages naming them) is printed through this, so ``[/x]`` in a file name is a name, not a closing tag
    that crashes rich, and ``[bold]`` is shown, not applied.
    """
    from rich.text import Text

    return Text.assemble(*((shown(p[0]), p[1]) if isinstance(p, tuple) else shown(p) for p in parts))


def error(message, prefix: str = "error:") -> None:
    console().print(literal((prefix, "bold red"), " ", str(message)), soft_wrap=True)
