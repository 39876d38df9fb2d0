from notifications import live

from .models import Order


def can_view(user, pk):
    return user.has_perm("shop.view_order") or Order.objects.filter(pk=pk, customer=user).exists()


live.subscription("/topic/orders.{pk:int}", permission=can_view, key="id",
                  snapshot=lambda user, pk: Order.objects.filter(pk=pk).values("id", "status").first())
live.subscription("/topic/orders.all", permission=lambda user: user.has_perm("shop.view_order"), key="id")


@live.handler("/app/orders.cancel", body='{"order": 12}')
def cancel(user, body):
    order = Order.objects.filter(pk=body.get("order"), customer=user).first()
    if order is None:
        raise live.Refused("Not your order")
    order.status = "cancelled"
    order.save()
