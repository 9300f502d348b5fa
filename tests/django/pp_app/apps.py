"""The app of the poolproxy Django end-to-end project."""

from django.apps import AppConfig


class PpAppConfig(AppConfig):
    name = "pp_app"
    default_auto_field = "django.db.models.BigAutoField"
