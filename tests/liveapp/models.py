from django.conf import settings
from django.db import models

from notifications import live


class Order(models.Model):
    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    status = models.CharField(max_length=20, default="new")

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        for topic in (f"/topic/orders.{self.pk}", "/topic/orders.all"):
            live.publish(topic, {"id": self.pk, "status": self.status})  # after the commit
