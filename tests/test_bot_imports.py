"""The bot process stays free of the heavy generation stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bot_process_never_imports_torch() -> None:
    """Importing the whole bot (and building its commands) loads no torch/diffusers/transformers."""
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import bot.app, bot.commands, bot.buttons, bot.delivery, bot.render\n"
        "bot.commands.build_commands()\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
