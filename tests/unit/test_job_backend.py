"""The JobBackend through Django's own django.tasks API: enqueue, validation, results."""
from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.tasks import TaskResultStatus, task, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch
from django.utils import timezone

from jobs.api import enqueue_for, job_options
from jobs.backends import JobBackend
from jobs.exceptions import InvalidArguments
from jobs.models import Job, JobStatus
from tests import jobs_tasks

pytestmark = pytest.mark.django_db


def test_the_default_backend_supports_defer_async_results_and_priority():
    backend = task_backends["default"]
    assert isinstance(backend, JobBackend)
    assert (backend.supports_defer, backend.supports_async_task, backend.supports_get_result,
            backend.supports_priority) == (True, True, True, True)


def test_enqueue_writes_one_ready_job_row_with_the_task_path_and_arguments():
    result = jobs_tasks.add.enqueue(2, b=3)
    job = Job.objects.get()
    assert (str(job.pk), job.task_path, job.args, job.kwargs, job.status) == (
        result.id, "tests.jobs_tasks.add", [2], {"b": 3}, "READY")
    assert (job.queue, job.priority, job.attempts, job.max_attempts, job.seq) == ("default", 0, 0, 1, 0)


def test_enqueue_returns_a_ready_task_result():
    result = jobs_tasks.add.enqueue(1, 2)
    assert (result.status, result.args, result.kwargs, result.backend) == (TaskResultStatus.READY, [1, 2], {}, "default")
    assert result.is_finished is False


def test_the_task_queue_and_priority_are_stored():
    jobs_tasks.add_report.enqueue(1, 1)
    jobs_tasks.add.using(priority=-5).enqueue(1, 1)
    assert sorted(Job.objects.values_list("queue", "priority")) == [("default", -5), ("reports", 10)]


def test_run_after_in_the_future_is_stored_as_given():
    when = timezone.now() + timedelta(hours=1)
    jobs_tasks.add.using(run_after=when).enqueue(1, 1)
    assert Job.objects.get().run_after == when


def test_run_after_in_the_past_is_refused_and_writes_nothing():
    with pytest.raises(InvalidTask, match="is in the past"):
        jobs_tasks.add.using(run_after=timezone.now() - timedelta(minutes=1)).enqueue(1, 1)
    assert Job.objects.count() == 0


def test_an_unknown_queue_is_refused_with_the_known_queues_named():
    with pytest.raises(InvalidTask, match=r"Queue 'nightly' is not one of the queues .*: default, reports"):
        jobs_tasks.add.using(queue_name="nightly")
    assert Job.objects.count() == 0


def test_arguments_that_are_not_json_are_refused_and_write_nothing():
    with pytest.raises(InvalidArguments, match="must be JSON-serialisable"):
        jobs_tasks.add.enqueue(object(), 1)
    assert Job.objects.count() == 0


def test_dict_keys_that_would_turn_into_strings_are_refused():
    with pytest.raises(InvalidArguments, match="change when stored as JSON"):
        jobs_tasks.add.enqueue({1: "one"}, {})


def test_nan_arguments_are_refused():
    with pytest.raises(InvalidArguments):
        jobs_tasks.add.enqueue(float("nan"), 1)


def test_a_task_the_worker_could_not_import_is_refused_at_enqueue():
    shadow = task(jobs_tasks.not_a_task)  # module level, but its dotted path leads to the plain function
    with pytest.raises(InvalidTask, match="tests.jobs_tasks.not_a_task' is a function, not a task"):
        shadow.enqueue()
    assert Job.objects.count() == 0


def test_task_options_max_attempts_and_time_limit_are_stored():
    jobs_tasks.fail_twice.enqueue("/nonexistent")
    jobs_tasks.spin_past_limit.enqueue()
    assert sorted(Job.objects.values_list("max_attempts", "time_limit")) == [(1, 0.5), (3, 3600.0)]


def test_a_task_option_that_is_not_a_whole_number_is_refused_at_declaration():
    with pytest.raises(InvalidTask, match="max_attempts must be a whole number of at least 1"):
        task(max_attempts=0)(jobs_tasks.not_a_task)


def test_job_options_set_owner_name_attempts_and_time_limit():
    user = get_user_model().objects.create_user("ann")
    with job_options(owner=user, name="Nightly sums", max_attempts=4, time_limit=9):
        jobs_tasks.add.enqueue(1, 1)
    job = Job.objects.get()
    assert (job.owner, job.name, job.max_attempts, job.time_limit) == (user, "Nightly sums", 4, 9.0)


def test_job_options_with_a_bad_time_limit_are_refused():
    with job_options(time_limit=-1), pytest.raises(InvalidTask, match="time_limit must be a positive number"):
        jobs_tasks.add.enqueue(1, 1)
    assert Job.objects.count() == 0


def test_enqueue_for_makes_the_user_the_owner():
    user = get_user_model().objects.create_user("bob")
    enqueue_for(user, jobs_tasks.add, 1, 2)
    assert Job.objects.get().owner == user


def test_enqueue_for_an_anonymous_user_leaves_the_job_without_owner():
    enqueue_for(AnonymousUser(), jobs_tasks.add, 1, 2)
    assert Job.objects.get().owner is None


def test_get_result_reads_the_row_back():
    result = jobs_tasks.add.enqueue(1, 2)
    Job.objects.filter(pk=result.id).update(status=JobStatus.SUCCESSFUL, result=3, worker_ids=["w1"], attempts=1)
    fetched = task_backends['default'].get_result(result.id)
    assert (fetched.status, fetched.return_value, fetched.worker_ids, fetched.attempts) == (
        TaskResultStatus.SUCCESSFUL, 3, ["w1"], 1)


def test_task_get_result_of_another_task_is_a_mismatch():
    result = jobs_tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        jobs_tasks.add_report.get_result(result.id)


def test_refresh_updates_a_task_result_in_place():
    result = jobs_tasks.add.enqueue(1, 2)
    Job.objects.filter(pk=result.id).update(status=JobStatus.SUCCESSFUL, result=3)
    result.refresh()
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 3)


def test_get_result_of_an_unknown_id_raises_task_result_does_not_exist():
    with pytest.raises(TaskResultDoesNotExist):
        task_backends['default'].get_result("00000000-0000-0000-0000-000000000000")


def test_get_result_of_a_malformed_id_raises_task_result_does_not_exist():
    with pytest.raises(TaskResultDoesNotExist):
        task_backends['default'].get_result("not-a-uuid")


def test_a_cancelled_job_reads_as_failed_with_a_job_cancelled_error():
    result = jobs_tasks.add.enqueue(1, 2)
    Job.objects.get(pk=result.id).cancel()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result.errors] == ["jobs.exceptions.JobCancelled"]


def test_a_result_whose_task_was_removed_is_still_readable():
    result = jobs_tasks.add.enqueue(1, 2)
    Job.objects.filter(pk=result.id).update(task_path="tests.jobs_tasks.removed_long_ago")
    fetched = task_backends['default'].get_result(result.id)
    assert (fetched.status, fetched.args) == (TaskResultStatus.READY, [1, 2])


@pytest.mark.django_db(transaction=True)
def test_async_tasks_can_be_enqueued_and_read_with_the_async_api():
    from asgiref.sync import sync_to_async
    from django.db import connections

    async def go():
        result = await jobs_tasks.async_add.aenqueue(1, 2)
        try:
            return await task_backends['default'].aget_result(result.id)
        finally:  # the executor thread's connection would otherwise outlive the test database
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    fetched = asyncio.run(go())
    assert (fetched.status, fetched.task.module_path) == (TaskResultStatus.READY, "tests.jobs_tasks.async_add")


@pytest.mark.django_db(transaction=True)
def test_aenqueue_for_makes_the_user_the_owner_through_the_async_api():
    from asgiref.sync import sync_to_async
    from django.db import connections

    from jobs.api import aenqueue_for

    user = get_user_model().objects.create_user("cat")

    async def go():
        try:
            return await aenqueue_for(user, jobs_tasks.add, 1, 2)
        finally:
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    result = asyncio.run(go())
    assert Job.objects.get(pk=result.id).owner == user


def statements(captured) -> list[str]:
    """The SQL verbs of captured queries (SAVEPOINT bookkeeping left out)."""
    return [q["sql"].split()[0].upper() for q in captured if "SAVEPOINT" not in q["sql"].upper()]


def test_enqueue_costs_one_insert_and_no_other_query():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    jobs_tasks.add.enqueue(0, 0)  # first use: nothing is cached for the first call below either way
    with CaptureQueriesContext(connection) as ctx:
        jobs_tasks.add.enqueue(1, 2)
    assert statements(ctx.captured_queries) == ["INSERT"]


def test_enqueue_for_an_owner_costs_one_insert_too():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    user = get_user_model().objects.create_user("dee")
    with CaptureQueriesContext(connection) as ctx:
        enqueue_for(user, jobs_tasks.add, 1, 2)
    assert statements(ctx.captured_queries) == ["INSERT"]
    assert Job.objects.get().owner == user


def test_a_job_written_by_enqueue_has_every_column_as_the_orm_would_write_it():
    result = jobs_tasks.add.using(priority=3).enqueue(1, b=2)
    fast = Job.objects.filter(pk=result.id).values().get()
    orm = Job.objects.create(
        task_path="tests.jobs_tasks.add", args=[1], kwargs={"b": 2}, queue="default", priority=3, backend="default",
        run_after=fast["run_after"], enqueued_at=fast["enqueued_at"], max_attempts=1, time_limit=3600.0,
    )
    slow = Job.objects.filter(pk=orm.pk).values().get()
    assert {k: v for k, v in fast.items() if k != "id"} == {k: v for k, v in slow.items() if k != "id"}


def test_a_post_save_receiver_on_job_still_sees_each_enqueued_job():
    from django.db.models.signals import post_save

    seen = []

    def receiver(sender, instance, created, **kwargs):
        seen.append((str(instance.pk), created))

    post_save.connect(receiver, sender=Job)
    try:
        result = jobs_tasks.add.enqueue(1, 2)
    finally:
        post_save.disconnect(receiver, sender=Job)
    assert seen == [(result.id, True)]


def test_enqueue_many_writes_every_job_with_one_insert():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from jobs.api import enqueue_many

    with CaptureQueriesContext(connection) as ctx:
        results = enqueue_many(jobs_tasks.add, [(n, n) for n in range(50)])
    assert statements(ctx.captured_queries) == ["INSERT"]
    stored = dict(Job.objects.values_list("id", "args"))
    assert [stored[uuid.UUID(r.id)] for r in results] == [[n, n] for n in range(50)]
    assert {r.status for r in results} == {TaskResultStatus.READY}


def test_enqueue_many_splits_what_exceeds_one_statement_and_writes_everything():
    from jobs.api import enqueue_many

    results = enqueue_many(jobs_tasks.add, [(n, 1) for n in range(2500)])  # over SQLite's ~1,000 rows per INSERT
    assert (len(results), Job.objects.count(), len({r.id for r in results})) == (2500, 2500, 2500)


def test_enqueue_many_takes_keyword_arguments_through_call():
    from jobs.api import call, enqueue_many

    enqueue_many(jobs_tasks.add, [call(1, b=2), [3, 4]])
    assert sorted(Job.objects.values_list("args", "kwargs")) == [([1], {"b": 2}), ([3, 4], {})]


def test_enqueue_many_validates_every_call_before_writing_anything():
    from jobs.api import enqueue_many

    with pytest.raises(InvalidArguments, match="must be JSON-serialisable"):
        enqueue_many(jobs_tasks.add, [(1, 2), (object(), 2)])
    assert Job.objects.count() == 0


def test_enqueue_many_refuses_a_bare_argument_with_a_hint():
    from jobs.api import enqueue_many

    with pytest.raises(TypeError, match=r"a single argument x is \(x,\)"):
        enqueue_many(jobs_tasks.add, [5])
    assert Job.objects.count() == 0


def test_enqueue_many_applies_job_options_to_every_job():
    from jobs.api import enqueue_many

    user = get_user_model().objects.create_user("eve")
    with job_options(owner=user, name="Batch"):
        enqueue_many(jobs_tasks.add, [(1, 1), (2, 2)])
    assert list(Job.objects.values_list("owner", "name").distinct()) == [(user.pk, "Batch")]


def test_enqueue_many_announces_every_job_and_one_wakeup_per_queue_after_commit(django_capture_on_commit_callbacks):
    from jobs.api import enqueue_many

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        enqueue_many(jobs_tasks.add, [(n, n) for n in range(10)])
    assert len(callbacks) == 1


def test_enqueue_many_sends_task_enqueued_for_each_job():
    from django.tasks.signals import task_enqueued

    from jobs.api import enqueue_many

    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append(task_result.id)

    task_enqueued.connect(receiver)
    try:
        results = enqueue_many(jobs_tasks.add, [(1, 1), (2, 2)])
    finally:
        task_enqueued.disconnect(receiver)
    assert seen == [r.id for r in results]
