"""The orders app's tasks: Django `@task` functions, which taskworker runs
(`python manage.py taskworker serve` finds this module as the app's tasks)."""
import time

from django.db.models import F
from django.utils import timezone

try:
    from django.tasks import task  # Django 6
except ImportError:
    from django_tasks import task  # the backport, before Django 6

from .models import Order


class OutOfStock(Exception):
    pass


@task(queue_name="orders", priority=5)
def ship(order_id: int) -> dict:
    """Mark the order shipped; enqueued in the transaction that creates it."""
    order = Order.objects.get(pk=order_id)
    order.shipped_at = timezone.now()
    order.save(update_fields=["shipped_at"])
    return {"order": order_id, "shipped": True}


@task()
def refuse(order_id: int) -> None:
    raise OutOfStock(f"order {order_id}: out of stock")


@task(takes_context=True)
def attempt(context, note: str) -> dict:
    """What a task that takes context sees of its own result."""
    return {"id": context.task_result.id, "attempt": context.attempt, "note": note}


@task()
def touch(order_id: int, pause: float = 0.05) -> int:
    """The ORM under gevent: a query, a cooperative wait holding the connection,
    another query."""
    Order.objects.filter(pk=order_id).update(touched=F("touched") + 1)
    time.sleep(pause)
    return Order.objects.get(pk=order_id).touched
