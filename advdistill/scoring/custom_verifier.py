"""A task's own verifier (`answer: custom`): `module:function(extracted, reference, record) -> bool`,
named by an import path in the task's declaration and run like math-verify, in worker processes
killed at `TaskSpec.verifier_time_limit_s` (`math_verify_pool`, whose fork server imports the
verifier's module instead of math-verify). Never raises: a verifier that hangs, raises, returns
something other than a bool, or whose module does not import where the scoring runs counts as
incorrect for that response, and the reason is logged once per verifier and kind of reason in each
process (a run is never failed by its verifier)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Mapping

from advdistill.callables import working_dir_on_path
from advdistill.scoring.math_verify_pool import _NoVerdict, verifier_pool

log = logging.getLogger(__name__)

_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def custom_verdict(target: str, extracted: str, reference: str | None, record: Mapping[str, Any],
                   time_limit_s: float) -> bool:
    """The verifier's verdict, False (with the reason logged once) when it gives none in time."""
    try:
        working_dir_on_path()  # before the pool's server starts: it inherits this path
        reply = verifier_pool(target, time_limit_s).call((extracted, reference, dict(record)))
    except _NoVerdict as error:
        reply = f"no verdict within {time_limit_s} s: {error}"
    except Exception as error:  # noqa: BLE001 - a verifier must never fail a run
        reply = f"could not run: {type(error).__name__}: {error}"
    if reply is True or reply is False:
        return reply
    _log_once(target, str(reply), record)
    return False


def _log_once(target: str, reason: str, record: Mapping[str, Any]) -> None:
    kind = reason.split(":", 1)[0]  # "raised ValueError", "no verdict within 1.0 s", ...
    with _logged_lock:
        if (target, kind) in _logged:
            return
        _logged.add((target, kind))
    log.warning("verifier %s gave no verdict on %s (%s): counted incorrect; logged once per process for this "
                "reason", target, record.get("id"), reason[:300])
