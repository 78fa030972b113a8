"""The one stand-in for the Lambda context object, for everything that calls a handler off Lambda.

The local API (scripts/local_api.py), the tests and the benchmarks import it; scripts/sam_check.py runs
its source text in the isolated python3.13 process that invokes a built function (nothing but the
standard library and the built package is importable there), so this file imports only the standard
library and nothing from the repository.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: API Gateway's integration timeout: what an HTTP function has at most, whatever its own timeout.
LAMBDA_TIMEOUT_MS = 29_000


@dataclass
class FakeLambdaContext:
    """The attributes of the Lambda context object that Powertools and our code read.

    The remaining time runs down from `timeout_ms` on `clock` (the monotonic clock; a test that wants
    a fixed remaining time passes a clock that stands still)."""

    function_name: str
    timeout_ms: int = LAMBDA_TIMEOUT_MS
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"
    invoked_function_arn: str = ""
    identity: Any = None
    client_context: Any = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = self.clock() + self.timeout_ms / 1000
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"
        arn = f"arn:aws:lambda:local:000000000000:function:{self.function_name}"
        self.invoked_function_arn = self.invoked_function_arn or arn

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - self.clock()) * 1000))
