"""PDF documents to page images: one PNG per page, rendered with PDFium (pypdfium2)."""

from __future__ import annotations

import io
import threading

import pypdfium2
import pypdfium2.raw as pdfium_c

from regio_gateway.media.problems import MediaProblem

POINTS_PER_INCH = 72
MAX_DPI = 200  # sharper pages only cost tokens and bytes: text stays readable at 200 dpi
PNG_COMPRESS_LEVEL = 6


class PdfRasterizer:
    """Renders PDFs, one at a time per process: PDFium must never be entered by two threads at
    once, not even for different documents (its rule), so rendering holds a lock."""

    def __init__(self, *, max_pages: int, max_side_pixels: int) -> None:
        self._max_pages = max_pages
        self._max_side = max_side_pixels
        self._lock = threading.Lock()

    def pages_as_png(self, data: bytes) -> list[bytes]:
        """Every page as a PNG whose longest side is at most `max_side_pixels`. Blocking and
        CPU-bound: call it from a worker thread."""
        with self._lock:
            document = _open(data)
            try:
                pages = len(document)
                if pages == 0:
                    raise MediaProblem("The PDF has no pages.")
                if pages > self._max_pages:
                    raise MediaProblem(
                        f"The PDF has {pages} pages; at most {self._max_pages} are accepted."
                    )
                return [self._render(document, index) for index in range(pages)]
            finally:
                document.close()

    def _render(self, document: pypdfium2.PdfDocument, index: int) -> bytes:
        page = document[index]
        try:
            width, height = page.get_size()  # points
            longest = max(width, height, 1.0)
            scale = min(MAX_DPI / POINTS_PER_INCH, self._max_side / longest)
            image = page.render(scale=scale).to_pil()
        except pypdfium2.PdfiumError:
            raise MediaProblem(f"Page {index + 1} of the PDF cannot be rendered.") from None
        finally:
            page.close()
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue()


def _open(data: bytes) -> pypdfium2.PdfDocument:
    try:
        return pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as error:
        if error.err_code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            raise MediaProblem("The PDF is encrypted; send it without a password.") from None
        raise MediaProblem("The PDF is damaged or not a PDF.") from None
