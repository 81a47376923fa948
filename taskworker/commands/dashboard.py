"""`taskworker dashboard`: the web dashboard, until Ctrl+C or SIGTERM."""
from __future__ import annotations

import signal

import click

from ..logs import log
from .context import EXIT_CONFIG, EXIT_RUNTIME, checked_connection, fail, load_settings

SETTINGS_HELP = """\b
Also read from the environment or .env:
  DASHBOARD_HOST      address to listen on (127.0.0.1); any other address
                      needs DASHBOARD_PASSWORD or DASHBOARD_TOKEN
  DASHBOARD_PORT      port (8080); also runs the dashboard inside `serve`
  DASHBOARD_PASSWORD  HTTP basic auth password (off)
  DASHBOARD_USER      HTTP basic auth user name (admin)
  DASHBOARD_TOKEN     token: `Authorization: Bearer TOKEN`, or open
                      /?token=TOKEN once in a browser (off)
  DASHBOARD_READONLY  true: no action, every POST refused (false)
  DASHBOARD_HOSTS     host names it answers besides localhost, the
                      loopback addresses and its own (tasks.example.com)
  DASHBOARD_HIDE_ARGUMENTS  tasks whose argument values it never shows nor
                      searches: send_email,billing.charge, or * for all
  STATEMENT_TIMEOUT, CONNECT_TIMEOUT  as for serve"""


@click.command(epilog=SETTINGS_HELP)
@click.option("--host", metavar="ADDRESS",
              help="Address to listen on. [env DASHBOARD_HOST; default 127.0.0.1]")
@click.option("--port", "-p", metavar="PORT",
              help="Port to listen on. [env DASHBOARD_PORT; default 8080]")
def dashboard(host: str | None, port: str | None) -> None:
    """Serve the web dashboard: counts, the task list, actions. Until Ctrl+C.

    Read-only pages answer from the database through a few connections of the
    dashboard's own; counts are sampled in the background while someone looks.
    """
    import gevent
    from gevent.event import Event

    settings = load_settings({"DASHBOARD_HOST": host, "DASHBOARD_PORT": port})
    from ..dashboard.app import Dashboard, DashboardError
    from ..dashboard.security import refusal

    why = refusal(settings, settings.dashboard_host)
    if why:
        fail(why, EXIT_CONFIG)
    log.info("Connecting to database: %s", settings.safe_database_url)
    with checked_connection(settings, "dashboard"):
        pass
    board = Dashboard(settings)
    try:
        board.start()
    except DashboardError as exc:
        fail(str(exc), EXIT_RUNTIME)
    stop = Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    stop.wait()
    log.info("Dashboard stopping")
    board.stop()
