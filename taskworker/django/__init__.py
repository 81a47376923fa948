"""taskworker for Django: a backend for Django's Tasks framework (`django.tasks`
in Django 6, the `django-tasks` backport before it), and `python manage.py
taskworker ...`.

    INSTALLED_APPS = [..., "taskworker.django"]
    TASKS = {"default": {"BACKEND": "taskworker.django.backend.TaskworkerBackend"}}
    TASKWORKER = {"WORKER_COUNT": 20}          # optional: any setting of `serve --help`

    python manage.py taskworker migrate        # the schema (once, and after upgrades)
    python manage.py taskworker serve          # runs every @task of the installed apps

`@task` functions enqueue rows in the current transaction of Django's
connection; `serve` (gevent-patched before Django is imported: see __main__.py)
runs them and closes the ORM's connections after each (see tasks.py). This
package imports no Django and nothing that patches: `python -m taskworker.django`
patches first.
"""
