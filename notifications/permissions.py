"""Who may see and do what over the WebSocket, decided from the Django session (sync; call via a thread).

The rules (issue 4): a logged-in user sees their own notifications and broadcasts, the jobs they
own, and every job if they hold ``jobs.view_job``; they may cancel a job they own or any job with
``jobs.change_job``. Anonymous users get nothing.
"""
from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.utils.crypto import constant_time_compare

__all__ = [
    "JobAccess",
    "SessionState",
    "job_access",
    "can_view_all_jobs",
    "can_cancel_job",
    "session_state",
    "session_states",
    "VIEW_JOB",
    "CHANGE_JOB",
]

VIEW_JOB = "jobs.view_job"
CHANGE_JOB = "jobs.change_job"


class JobAccess(enum.Enum):
    """The answer to "may this user watch this job?"."""

    OWNER = "owner"  # the user owns the job
    PERMISSION = "permission"  # the user holds jobs.view_job
    DENIED = "denied"  # the job exists, the user may not see it
    UNKNOWN = "unknown"  # no such job (or not a job id at all)

    @property
    def allowed(self) -> bool:
        return self in (JobAccess.OWNER, JobAccess.PERMISSION)


def _job_model():
    if not apps.is_installed("jobs"):
        return None
    return apps.get_model("jobs", "Job")


def _authenticated(user: Any) -> bool:
    return user is not None and getattr(user, "is_authenticated", False) and getattr(user, "is_active", True)


def can_view_all_jobs(user: Any) -> bool:
    return _authenticated(user) and user.has_perm(VIEW_JOB)


def job_access(user: Any, job_id: str) -> tuple[JobAccess, Any]:
    """(access, job or None) for a job id taken from a destination."""
    Job = _job_model()
    if Job is None or not _authenticated(user):
        return JobAccess.UNKNOWN if Job is None else JobAccess.DENIED, None
    try:
        pk = uuid.UUID(str(job_id))
    except ValueError:
        return JobAccess.UNKNOWN, None
    job = Job.objects.filter(pk=pk).first()
    if job is None:
        return JobAccess.UNKNOWN, None
    if job.owner_id is not None and job.owner_id == user.pk:
        return JobAccess.OWNER, job
    if user.has_perm(VIEW_JOB):
        return JobAccess.PERMISSION, job
    return JobAccess.DENIED, job


def can_cancel_job(user: Any, job: Any) -> bool:
    if not _authenticated(user):
        return False
    return (job.owner_id is not None and job.owner_id == user.pk) or user.has_perm(CHANGE_JOB)


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


def session_states(entries: list[tuple[str | None, Any, bool]]) -> list[tuple[SessionState, bool]]:
    """session_state() for many sockets at once: [(session_key, user_id, needs_view_job)] ->
    [(state, still_has_view_job)], in order, with one query for the sessions (database session
    engine), one for the users, and a permission check only for users who need one.
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
    permission_cache: dict[str, bool] = {}
    results = []
    for key, user_id, needs_permission in entries:
        data = sessions.get(key or "", {})
        if str(data.get(SESSION_KEY)) != str(user_id):
            results.append((SessionState(None, "logged out"), False))
            continue
        user = users.get(str(user_id))
        if user is None or not getattr(user, "is_active", True):
            results.append((SessionState(None, "inactive"), False))
            continue
        if hasattr(user, "get_session_auth_hash"):
            stored = data.get(HASH_SESSION_KEY)
            if not stored or not constant_time_compare(stored, user.get_session_auth_hash()):
                results.append((SessionState(None, "password changed"), False))
                continue
        allowed = False
        if needs_permission:
            if str(user_id) not in permission_cache:
                permission_cache[str(user_id)] = user.has_perm(VIEW_JOB)
            allowed = permission_cache[str(user_id)]
        results.append((SessionState(user), allowed))
    return results
