"""Models of the poolproxy Django end-to-end project: foreign keys, a many-to-many, unique
fields and constraints, JSON and datetime fields: what a typical app sends through a pooler."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Author(models.Model):
    name = models.CharField(max_length=100, unique=True)
    email = models.CharField(max_length=150, unique=True)
    joined = models.DateTimeField(default=timezone.now)
    profile = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    slug = models.SlugField(max_length=50, unique=True)


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=200)
    isbn = models.CharField(max_length=20, unique=True)
    published = models.DateTimeField(null=True, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    tags = models.ManyToManyField(Tag, related_name="books", blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["author", "title"], name="pp_book_author_title_uniq"),
        ]


class Review(models.Model):
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="reviews")
    rating = models.PositiveSmallIntegerField()
    body = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)


class Account(models.Model):
    """A balance that threads increment under select_for_update()."""

    owner = models.OneToOneField(Author, on_delete=models.PROTECT, null=True, blank=True)
    name = models.CharField(max_length=50, unique=True)
    balance = models.BigIntegerField(default=0)


class Job(models.Model):
    """A work queue that threads drain with select_for_update(skip_locked=True)."""

    name = models.CharField(max_length=50, unique=True)
    claimed_by = models.CharField(max_length=50, null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)


class Counter(models.Model):
    """update_or_create() / get_or_create() races on a unique key."""

    key = models.CharField(max_length=50, unique=True)
    value = models.BigIntegerField(default=0)
    updated = models.DateTimeField(auto_now=True)


class Event(models.Model):
    kind = models.CharField(max_length=30)
    at = models.DateTimeField(db_index=True)
    data = models.JSONField(default=dict)
    seq = models.IntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["kind", "at"], name="pp_event_kind_at_idx")]
