"""delivery.py's and buttons.py's pure parts: retry schedule, who a result may ping, the custom_id scheme and its buttons."""

from __future__ import annotations

import pytest

from bot import buttons, render
from bot.buttons import JobButton, build_view, modal_values
from bot.delivery import RetryPolicy, requester_only


def test_retry_policy_is_bounded_and_can_be_off() -> None:
    """Delays double up to the cap; attempts=1 means no retry at all."""
    assert list(RetryPolicy(attempts=5, base_delay=1, max_delay=5).delays()) == [1, 2, 4, 5]
    assert list(RetryPolicy(attempts=1).delays()) == []
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_requester_only_mentions() -> None:
    """The result's allowed mentions name one user and nothing else (not @everyone)."""
    payload = requester_only(1234).to_dict()
    assert payload == {"parse": [], "users": [1234]}


def test_view_of_dynamic_buttons() -> None:
    """The result view holds one JobButton per action with the namespaced custom_id."""
    view = build_view("abcdefghij", render.RESULT_BUTTONS)
    assert view is not None and view.timeout is None
    ids = [item.custom_id for item in view.children]
    assert ids == [buttons.custom_id(s.action, "abcdefghij") for s in render.RESULT_BUTTONS]
    assert all(isinstance(item, JobButton) for item in view.children)
    rows = view.to_components()
    assert len(rows) == 2 and all(len(r["components"]) <= 5 for r in rows)
    assert build_view("abcdefghij", ()) is None


def test_modal_values_reads_rows_and_labels() -> None:
    """Text inputs are found in action rows (type 1) and in labels (type 18)."""
    rows = [{"type": 1, "components": [{"type": 4, "custom_id": "prompt", "value": "a"}]}]
    labels = [{"type": 18, "component": {"type": 4, "custom_id": "prompt", "value": "b"}}]
    assert modal_values(rows) == {"prompt": "a"}
    assert modal_values(labels) == {"prompt": "b"}


def test_custom_id_round_trip_and_limit() -> None:
    """Every action's custom_id parses back to (action, job id) and fits in 100 characters."""
    job_id = "z" * 64
    for action in buttons.ACTIONS:
        value = buttons.custom_id(action, job_id)
        assert len(value) <= 100
        match = buttons.CUSTOM_ID_RE.fullmatch(value)
        assert match is not None and (match["action"], match["job_id"]) == (action, job_id)
    assert buttons.CUSTOM_ID_RE.fullmatch("zoetrope:explode:abc") is None
    assert buttons.CUSTOM_ID_RE.fullmatch("other:reroll:abc") is None
    with pytest.raises(ValueError, match="action"):
        buttons.custom_id("explode", "abc")
    with pytest.raises(ValueError, match="job_id"):
        buttons.custom_id("reroll", "has space")
