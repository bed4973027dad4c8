"""The loopback OpenAI server's error replies: :class:`APIError` and what an injected fault answers.

Messages, ``type``/``param``/``code`` values and statuses follow what api.openai.com answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._server import Fault

_DEFAULT_FAULT_MESSAGE = Fault().message


class APIError(Exception):
    """An error reply: HTTP ``status`` and OpenAI's ``{"error": {...}}`` fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The ``error`` object."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    @classmethod
    def model_not_found(cls, model: str) -> APIError:
        """404 for a model the server does not serve."""
        return cls(404, f"The model `{model}` does not exist or you do not have access to it.",
                   code="model_not_found")

    @classmethod
    def context_length(cls, window: int, prompt: int, completion: int = 0) -> APIError:
        """400 ``context_length_exceeded`` in OpenAI's wording."""
        if completion:
            detail = (
                f"However, you requested {prompt + completion} tokens ({prompt} in the messages, "
                f"{completion} in the completion). Please reduce the length of the messages or completion."
            )
        else:
            detail = (
                f"However, your messages resulted in {prompt} tokens. "
                "Please reduce the length of the messages."
            )
        return cls(400, f"This model's maximum context length is {window} tokens. {detail}",
                   param="messages", code="context_length_exceeded")


def missing(param: str) -> APIError:
    """400 ``missing_required_parameter`` for ``param``."""
    message = f"Missing required parameter: '{param}'."
    return APIError(400, message, param=param, code="missing_required_parameter")


def invalid(param: str, value: Any, allowed: Sequence[str]) -> APIError:
    """400 ``invalid_value``: ``value`` of ``param`` is not one of ``allowed``."""
    names = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
    return APIError(400, f"Invalid value: '{value}'. Supported values are: {names}.", param=param,
                    code="invalid_value")


# code -> (type, default message)
_FAULT_CODES: dict[str, tuple[str, str]] = {
    "rate_limit_exceeded": ("requests", "Rate limit reached for requests per min (RPM): Limit 3, Used 3, "
                            "Requested 1. Please try again in 1s."),
    "insufficient_quota": ("insufficient_quota", "You exceeded your current quota, please check your "
                           "plan and billing details."),
    "invalid_api_key": ("invalid_request_error", "Incorrect API key provided: sk-***."),
    "model_not_found": ("invalid_request_error", "The model `unknown` does not exist or you do not have "
                        "access to it."),
    "unsupported_country_region_territory": (
        "request_forbidden", "Country, region, or territory not supported"
    ),
}
_STATUS_DEFAULTS: dict[int, tuple[str | None, str]] = {  # status -> (default code, default message)
    400: (None, "Invalid request."),
    401: ("invalid_api_key", ""),
    403: ("unsupported_country_region_territory", ""),
    404: ("model_not_found", ""),
    429: ("rate_limit_exceeded", ""),
    500: (None, "The server had an error while processing your request. Sorry about that!"),
    503: (None, "The server is overloaded or not ready yet."),
}


def error_for_fault(fault: Fault, context_window: int) -> APIError:
    """The error reply for an injected ``Fault(status=...)``; ``error_type`` is the OpenAI ``code``."""
    status = fault.status or 500
    default_code, default_message = _STATUS_DEFAULTS.get(status, (None, "Request failed."))
    code = fault.error_type or default_code
    custom = fault.message != _DEFAULT_FAULT_MESSAGE
    if code == "context_length_exceeded":
        err = APIError.context_length(context_window, context_window + 1)
        err.status = fault.status or 400
        if custom:
            err.message = fault.message
        return err
    err_type, code_message = _FAULT_CODES.get(code or "", ("", ""))
    if not err_type:
        err_type = "server_error" if status >= 500 else "invalid_request_error"
    message = fault.message if custom else (code_message or default_message)
    limited = code == "rate_limit_exceeded"
    headers = {"retry-after": "1", "x-ratelimit-remaining-requests": "0"} if limited else {}
    return APIError(status, message, type=err_type, code=code, headers=headers)
