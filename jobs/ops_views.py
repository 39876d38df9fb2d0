"""HTTP endpoints for operations: /ops/health/ for load balancers (and /ops/metrics, jobs.metrics)."""
from __future__ import annotations

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import health as checks
from . import metrics as exposition

__all__ = ["health", "metrics"]

# How long the health view waits for this process's hub to connect (a load balancer's probe
# usually allows a few seconds).
HUB_TIMEOUT = 2.0


@never_cache
@require_GET
async def health(request: HttpRequest) -> JsonResponse:
    """200 {"status": "ok", ...} when this process has its database and its hub connected, else
    503 {"status": "unhealthy", ...}; each check says why. No authentication: it shows no data."""
    database = await database_sync_to_async(checks.check_database)()
    hub = await checks.check_hub(HUB_TIMEOUT)
    ok = database.ok and hub.ok
    return JsonResponse({"status": "ok" if ok else "unhealthy",
                         "checks": {"database": database.as_dict(), "hub": hub.as_dict()}},
                        status=200 if ok else 503)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """This process's metrics and the database gauges, in Prometheus' text format (OpenMetrics
    when asked); 403 unless the token or the address is allowed (jobs.metrics)."""
    if not exposition.allowed(request.META.get("REMOTE_ADDR"), request.headers.get("Authorization")):
        return HttpResponse("Metrics: forbidden (JOBS['METRICS_TOKEN'] or JOBS['METRICS_ALLOWED_IPS']).\n",
                            status=403, content_type="text/plain; charset=utf-8")
    body, content_type = exposition.exposition(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
