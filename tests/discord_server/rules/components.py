"""Rules for components and modals: custom_id length (1..100) and uniqueness, action-row
layout and width, button labels and link buttons, modal title and text inputs.
"""

from __future__ import annotations

from typing import Any

from tests.discord_server.constants import _SELECT_TYPES
from tests.discord_server.errors import _form_error
from tests.discord_server.model import _walk_components


class ComponentRules:
    """Discord's limits on message components and modals."""

    @staticmethod
    def _validate_custom_id(value: Any, path: list[str | int]) -> None:
        if not isinstance(value, str) or not 1 <= len(value) <= 100:
            raise _form_error(
                path + ["custom_id"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )

    def _validate_components(self, components: Any, *, v2: bool) -> None:
        if not components:
            return
        seen: set[str] = set()
        if not v2 and len(components) > 5:
            raise _form_error(
                ["components"], "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length."
            )
        for i, row in enumerate(components):
            path: list[str | int] = ["components", i]
            if not v2 and row.get("type") != 1:
                raise _form_error(
                    path + ["type"],
                    "COMPONENT_TYPE_INVALID",
                    "Top-level components must be action rows without the components v2 flag.",
                )
            if row.get("type") == 1:
                children = row.get("components") or []
                if not children:
                    raise _form_error(
                        path + ["components"],
                        "BASE_TYPE_MIN_LENGTH",
                        "Must be 1 or more in length.",
                    )
                width = sum(5 if c.get("type") in _SELECT_TYPES else 1 for c in children)
                if width > 5:
                    raise _form_error(
                        path + ["components"],
                        "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                        "The specified component exceeds the maximum width",
                    )
        for comp in _walk_components(components):
            ctype = comp.get("type")
            if ctype == 2:
                if comp.get("style") == 5:
                    if not comp.get("url") or comp.get("custom_id"):
                        raise _form_error(
                            ["components"],
                            "BUTTON_COMPONENT_URL_REQUIRED",
                            "Link buttons need a url and no custom_id.",
                        )
                    continue
                if comp.get("style") == 6:  # premium (sku) button
                    continue
                if len(comp.get("label") or "") > 80:
                    raise _form_error(
                        ["components", "label"],
                        "BASE_TYPE_MAX_LENGTH",
                        "Must be 80 or fewer in length.",
                    )
            if ctype in (2, *_SELECT_TYPES):
                custom_id = comp.get("custom_id")
                self._validate_custom_id(custom_id, ["components"])
                if custom_id in seen:
                    raise _form_error(
                        ["components"],
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated",
                    )
                seen.add(custom_id)

    def _validate_modal(self, data: dict[str, Any]) -> None:
        self._validate_custom_id(data.get("custom_id"), ["data"])
        title = data.get("title")
        if not isinstance(title, str) or not 1 <= len(title) <= 45:
            raise _form_error(
                ["data", "title"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length."
            )
        rows = data.get("components") or []
        if not 1 <= len(rows) <= 5:
            raise _form_error(
                ["data", "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
            )
        for comp in _walk_components(rows):
            if comp.get("type") in (4, *_SELECT_TYPES):
                self._validate_custom_id(comp.get("custom_id"), ["data", "components"])
            if comp.get("type") == 4:
                if len(comp.get("label") or "") > 45:
                    raise _form_error(
                        ["data", "components", "label"],
                        "BASE_TYPE_MAX_LENGTH",
                        "Must be 45 or fewer in length.",
                    )
                if len(comp.get("value") or "") > 4000:
                    raise _form_error(
                        ["data", "components", "value"],
                        "BASE_TYPE_MAX_LENGTH",
                        "Must be 4000 or fewer in length.",
                    )
