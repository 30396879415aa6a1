"""structlog set-up: JSON lines when stdout is not a terminal, console output otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import msgspec
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from eventstore.model import utc_second

__all__ = ["MalformedRequestFilter", "configure_logging"]


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a header over the size limit, a bad request
    line) with a traceback whose message quotes the offending bytes, which may be an API key.
    Such a record becomes one structured line naming the error's class and status only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        structlog.get_logger("runlog.http").warning(
            "request.malformed",
            error=type(exc).__name__,
            status=exc.code,
            remote=record.args[0] if isinstance(record.args, tuple) and record.args else None,
        )
        return False


_encoder = msgspec.json.Encoder(enc_hook=repr)


def _timestamp(
    _logger: Any, _method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """``timestamp``: UTC, ISO 8601 with microseconds and ``Z``
    (``2026-01-02T03:04:05.678901Z``; always six digits, where ``datetime.isoformat`` drops
    them at a whole second). The second's text is made once per second
    (:func:`eventstore.model.utc_second`): a line costs a fifth of structlog's ``TimeStamper``,
    which makes a ``datetime`` and formats all of it."""
    second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    event_dict["timestamp"] = f"{utc_second(second)}.{nanoseconds // 1000:06d}Z"
    return event_dict


def _json_line(logger: Any, method_name: str, event_dict: structlog.typing.EventDict) -> str:
    """The end of the JSON chain as one processor: the level, the timestamp, the exception
    formatted (when there is one) and the line itself (anything JSON cannot hold is written as
    its ``repr``). The same steps as structlog's processors one by one, but a server writes a
    line at every request, and each step of a chain is a call: -0.5% of the server's
    instructions per end-to-end run at 20 clients (bench/instructions.py)."""
    event_dict = structlog.processors.add_log_level(logger, method_name, event_dict)
    event_dict = _timestamp(logger, method_name, event_dict)
    if "exc_info" in event_dict:
        event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
    return _encoder.encode(event_dict).decode()


#: The JSON chain configured last (its processors list) and its stream: what :func:`info`
#: writes to directly while that chain is still the one in use.
_direct: tuple[list[structlog.typing.Processor], TextIO] | None = None


def info(logger: Any, event: str, **fields: Any) -> None:
    """``logger.info(event, **fields)``: the same line, written without structlog's chain
    while the JSON output of :func:`configure_logging` is in use (a server writes one at every
    request, and the agent loop one at every run's step): the chain's proxy, bound logger and
    processor loop cost the server 2.2% of its instructions per end-to-end run at 20 clients
    (bench/instructions.py). Anything else in place (``structlog.testing.capture_logs``,
    another configuration) gets the call through structlog as it is."""
    if _direct is not None:
        processors, stream = _direct
        if (
            structlog.get_config()["processors"] is processors
            and len(processors) == 2
            and processors[1] is _json_line
        ):
            fields["event"] = event
            merged = structlog.contextvars.merge_contextvars(logger, "info", fields)
            stream.write(_json_line(logger, "info", merged) + "\n")
            stream.flush()
            return
    logger.info(event, **fields)


def configure_logging(stream: TextIO | None = None, *, json: bool | None = None) -> None:
    """Configure once at start-up. ``trace_id`` and ``run_id`` come from contextvars."""
    stream = stream or sys.stdout
    as_json = json if json is not None else not stream.isatty()
    global _direct  # noqa: PLW0603 - the process's one logging configuration
    processors: list[structlog.typing.Processor] = [structlog.contextvars.merge_contextvars]
    _direct = None
    if as_json:
        processors.append(_json_line)
        _direct = (processors, stream)
    else:
        processors += [
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=stream.isatty()),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # A line per request: the cached logger, msgspec and a plain write cost a third of
        # the default set-up (json.dumps, print, a logger bound anew per call).
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
