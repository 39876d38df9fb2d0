from django.db import migrations, models


class Migration(migrations.Migration):
    """The outbox stores each message's body as it is published (encoded once, sent as is by any
    relay) instead of a JSON value encoded again for the database and for each destination."""

    dependencies = [
        ("notifications", "0002_outboxmessage"),
    ]

    operations = [
        migrations.RemoveField(model_name="outboxmessage", name="payload"),
        migrations.AddField(
            model_name="outboxmessage", name="body", field=models.TextField(default=""), preserve_default=False
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="content_type",
            field=models.CharField(default="application/json", max_length=100),
        ),
    ]
