"""The README example's page: one order's status, live, and a button that cancels it over STOMP."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse

PAGE = """<!doctype html><title>Order {pk}</title>
<p>Order {pk}: <span id="status">…</span> <button id="cancel">Cancel</button></p>
<script type="module">
import {{ subscribe, send }} from "/static/notifications/live.js";
subscribe("/topic/orders.{pk}", (order) => {{ document.getElementById("status").textContent = order.status; }});
document.getElementById("cancel").onclick = () => send("/app/orders.cancel", {{ order: {pk} }});
</script>
"""


@login_required
def order_page(request, pk: int) -> HttpResponse:
    return HttpResponse(PAGE.format(pk=int(pk)))
