"""One page that writes in a transaction and shows which server connection served it."""

from django.db import connection, transaction
from django.db.models import F
from django.http import HttpRequest, JsonResponse

from .models import PathCount, Visit

_BACKEND_ID_SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}


def index(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        Visit.objects.create(path=request.path)
        counter, _ = PathCount.objects.select_for_update().get_or_create(path=request.path)
        PathCount.objects.filter(pk=counter.pk).update(hits=F("hits") + 1)
        with connection.cursor() as cursor:
            # Inside the transaction: the server connection poolproxy lent to this request.
            cursor.execute(_BACKEND_ID_SQL[connection.vendor])
            server_id = cursor.fetchone()[0]
    counter.refresh_from_db()
    return JsonResponse({
        "database": connection.vendor,
        "hits": counter.hits,
        "visits": Visit.objects.count(),
        "server_connection_id": server_id,
    })


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})
