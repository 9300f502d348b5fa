"""A data migration plus an index: migrate runs RunPython and DDL through the proxy."""

from django.db import migrations, models


def seed_tags(apps, schema_editor):
    Tag = apps.get_model("pp_app", "Tag")
    Tag.objects.using(schema_editor.connection.alias).bulk_create(
        [Tag(slug=slug) for slug in ("fiction", "history", "science")]
    )


def unseed_tags(apps, schema_editor):
    Tag = apps.get_model("pp_app", "Tag")
    Tag.objects.using(schema_editor.connection.alias).filter(
        slug__in=("fiction", "history", "science")
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("pp_app", "0001_initial")]

    operations = [
        migrations.RunPython(seed_tags, unseed_tags),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(fields=["kind", "at"], name="pp_event_kind_at_idx"),
        ),
    ]
