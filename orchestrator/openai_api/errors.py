"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with OpenAI's HTTP
statuses, so the `openai` SDK raises its own `BadRequestError`, `NotFoundError`, ... with `param` and
`code` set."""

from __future__ import annotations

from fastapi.responses import JSONResponse

INVALID_REQUEST = "invalid_request_error"
TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 409: "invalid_request_error",
         413: "invalid_request_error", 500: "server_error"}


class OpenAIError(Exception):
    """A request refused before anything was stored or queued."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        if self.status == 413:
            headers = {"Connection": "close"}  # else the server goes on receiving (and dropping) the rest
        body = {"error": {"message": self.message, "type": TYPES.get(self.status, INVALID_REQUEST),
                          "param": self.param, "code": self.code}}
        return JSONResponse(status_code=self.status, content=body, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def not_found(kind: str, object_id: str, param: str = "id") -> OpenAIError:
    return OpenAIError(404, f"No such {kind} object: {object_id}", param=param, code=None)
