from django.db import models


class Visit(models.Model):
    path = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)


class PathCount(models.Model):
    path = models.CharField(max_length=200, unique=True)
    hits = models.BigIntegerField(default=0)
