"""Tests that Django's own test runner runs (``manage.py test pp_app``) through poolproxy:
the runner creates the test database through the proxy (PostgreSQL: from a connection to the
``postgres`` database; MariaDB: ``CREATE DATABASE test_...``), migrates it, runs these, and
drops it again through the proxy."""

from __future__ import annotations

import threading

from django.db import IntegrityError, connection, transaction
from django.test import TestCase, TransactionTestCase

from .models import Account, Author, Book, Tag


class RunnerTestCase(TestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        cls.author = Author.objects.create(name="runner", email="runner@example.com")

    def test_runs_in_the_test_database(self) -> None:
        expected = connection.settings_dict["NAME"]
        self.assertTrue(expected.startswith("test_"), expected)
        with connection.cursor() as cur:
            cur.execute("SELECT current_database()" if connection.vendor == "postgresql"
                        else "SELECT DATABASE()")
            self.assertEqual(cur.fetchone()[0], expected)

    def test_data_migration_ran(self) -> None:
        self.assertEqual(
            sorted(Tag.objects.values_list("slug", flat=True)), ["fiction", "history", "science"])

    def test_savepoint_per_test_and_integrity_error(self) -> None:
        Book.objects.create(author=self.author, title="t", isbn="isbn-runner")
        with self.assertRaises(IntegrityError), transaction.atomic():
            Book.objects.create(author=self.author, title="t2", isbn="isbn-runner")
        self.assertEqual(Book.objects.count(), 1)


class RunnerTransactionTestCase(TransactionTestCase):
    """Real commits (flushed after the test), a second thread with its own connection."""

    def test_commit_visible_to_another_connection(self) -> None:
        Account.objects.create(name="tx", balance=5)
        seen: list[int] = []

        def other() -> None:
            try:
                seen.append(Account.objects.get(name="tx").balance)
            finally:
                connection.close()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(30)
        self.assertEqual(seen, [5])
