"""Observability: logging and OpenTelemetry set-up, the progress line, and the OTLP JSON files.

structlog loads here with ``rich`` hidden: its ``dev`` and ``tracebacks`` modules import rich
(and through it pygments and attrs), when it is installed, for a pretty exception formatter that
:func:`~batchrun.telemetry.setup.configure_logging` never calls (``format_exc_info`` writes a
traceback as text before the renderer sees it), which was ~0.1 s of every command's start-up.
rich stays importable afterwards: the progress line imports it when it draws.
"""

import importlib
import sys

if "structlog" not in sys.modules and "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        importlib.import_module("structlog")
    finally:
        del sys.modules["rich"]
