"""Is a WebSocket's session still valid, and do its subscriptions still pass their permission checks?

Sync code (the consumer calls it in a thread). What each destination allows is declared by the
app that owns it (notifications.live); this module re-reads sessions and users the way a new
HTTP request would, and re-runs those permission callables, for many sockets at once.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.utils.crypto import constant_time_compare

__all__ = ["SessionState", "Check", "session_state", "session_states", "run_check"]

logger = logging.getLogger(__name__)

# One permission check of one subscription: the callable and the destination's parts.
Check = tuple[Callable[..., bool], dict[str, Any]]


def run_check(user: Any, check: Check) -> bool:
    """Run one permission callable; a Refused (or any False) is a no."""
    from .live import Refused

    permission, parts = check
    try:
        return bool(permission(user, **parts))
    except Refused:
        return False


@dataclass(frozen=True)
class SessionState:
    """What the session store says now about the user a WebSocket was opened for."""

    user: Any  # a fresh user object (fresh permission cache), or None when logged out
    reason: str = ""  # why there is no user: "logged out", "password changed", "inactive"


def session_state(session_key: str | None, user_id: Any) -> SessionState:
    """Re-read the session and the user from the database, as a new HTTP request would.

    The session is gone or names another user: logged out. The stored password hash no longer
    matches: the password changed (Django's session verification). The user is inactive: out.
    """
    if not session_key:
        return SessionState(None, "logged out")
    from importlib import import_module

    from django.conf import settings

    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    data = store.load()
    if str(data.get(SESSION_KEY)) != str(user_id):
        return SessionState(None, "logged out")
    backend_path = data.get(BACKEND_SESSION_KEY)
    if backend_path and backend_path in settings.AUTHENTICATION_BACKENDS:
        user = load_backend(backend_path).get_user(user_id)
    else:
        user = get_user_model()._default_manager.filter(pk=user_id).first()
    if user is None or not getattr(user, "is_active", True):
        return SessionState(None, "inactive")
    if hasattr(user, "get_session_auth_hash"):
        stored = data.get(HASH_SESSION_KEY)
        if not stored or not constant_time_compare(stored, user.get_session_auth_hash()):
            return SessionState(None, "password changed")
    return SessionState(user)


def session_states(entries: list[tuple[str | None, Any, list[Check]]]) -> list[tuple[SessionState, list[bool]]]:
    """session_state() for many sockets at once, with their permission checks re-run.

    [(session_key, user_id, [check, ...])] -> [(state, [still allowed, ...])], in order: one query
    for the sessions (database session engine), one for the users, and each distinct
    (user, permission, parts) run once. A check that fails unexpectedly is logged and counts as
    allowed (a database hiccup must not close every socket); the next re-check runs it again.
    """
    from django.conf import settings
    from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
    from importlib import import_module

    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    keys = {key for key, _, _ in entries if key}
    sessions: dict[str, dict] = {}
    if issubclass(store_class, DbSessionStore):
        from django.utils import timezone

        model = store_class.get_model_class()
        decoder = store_class()
        for row in model.objects.filter(session_key__in=keys, expire_date__gt=timezone.now()):
            sessions[row.session_key] = decoder.decode(row.session_data)
    else:
        for key in keys:
            sessions[key] = store_class(key).load()

    wanted = {str(data.get(SESSION_KEY)) for data in sessions.values() if data.get(SESSION_KEY) is not None}
    user_model = get_user_model()
    users = {str(u.pk): u for u in user_model._default_manager.filter(pk__in=[w for w in wanted])} if wanted else {}
    answers: dict[tuple, bool] = {}
    results = []
    for key, user_id, checks in entries:
        data = sessions.get(key or "", {})
        if str(data.get(SESSION_KEY)) != str(user_id):
            results.append((SessionState(None, "logged out"), [False] * len(checks)))
            continue
        user = users.get(str(user_id))
        if user is None or not getattr(user, "is_active", True):
            results.append((SessionState(None, "inactive"), [False] * len(checks)))
            continue
        if hasattr(user, "get_session_auth_hash"):
            stored = data.get(HASH_SESSION_KEY)
            if not stored or not constant_time_compare(stored, user.get_session_auth_hash()):
                results.append((SessionState(None, "password changed"), [False] * len(checks)))
                continue
        allowed = []
        for check in checks:
            permission, parts = check
            answer_key = (str(user_id), permission, tuple(sorted(parts.items())))
            if answer_key not in answers:
                try:
                    answers[answer_key] = run_check(user, check)
                except Exception:
                    logger.exception("Re-checking the permission %r for user %s failed", permission, user_id)
                    answers[answer_key] = True
            allowed.append(answers[answer_key])
        results.append((SessionState(user), allowed))
    return results
