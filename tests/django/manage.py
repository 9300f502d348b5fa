#!/usr/bin/env python
"""manage.py of the Django project in tests/django (settings come from PP_* variables)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pp_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
