"""Validation of every request body against Discord's OpenAPI spec, when one is loaded
(``ZOETROPE_DISCORD_SPEC``; the validator itself is tests/discord_spec.py).
"""

from __future__ import annotations

from tests.discord_server.errors import DiscordHTTPError
from tests.discord_server.http import _Body
from tests.discord_spec import SpecViolation, discord_error_body


class SpecChecks:
    """A body the spec rejects is recorded and answered 400, as Discord would."""

    def _check_spec(self, method: str, rel: str, body: _Body) -> None:
        if self.spec is None or body.json is None:
            return
        op, errors = self.spec.validate(method, rel, body.json, multipart=body.multipart)
        self.spec_checked += 1
        if not errors:
            return
        self.spec_violations.append(
            SpecViolation(
                method=method,
                path=rel,
                template=op.template if op else rel,
                operation_id=op.operation_id if op else None,
                errors=errors,
                body=body.json,
            )
        )
        err = discord_error_body(errors)
        raise DiscordHTTPError(400, err["code"], err["message"], errors=err["errors"])
