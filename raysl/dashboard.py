"""`raysl dashboard EXPERIMENT`: optuna-dashboard on an experiment's Optuna study, on 127.0.0.1 only.

The dashboard has no login and can rename, annotate and delete studies, so it listens on a
loopback address and nowhere else; on a cluster it is one SSH tunnel away
(``ssh -L PORT:127.0.0.1:PORT HEAD_NODE``). It serves optuna-dashboard's WSGI app
(``optuna_dashboard.wsgi``) from a threaded ``wsgiref`` server in this process; its page and
scripts come from the installed package, so it works without internet. Ctrl-C stops it (exit 130).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from raysl import storage, study
from raysl.errors import ConfigError

DEFAULT_RESULTS = "./raysl_results"  # raysl tune's default --storage (raysl.search_options.DEFAULT_STORAGE)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # the page asks for several things at once; Ctrl-C does not wait for them


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - one line per request would drown the URL
        pass


def _check_host(host: str, port: int) -> None:
    shown = port or 8080
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"--host {host}: raysl dashboard listens on 127.0.0.1 only (the dashboard has no login and can delete "
            f"studies); from another machine, tunnel to it: ssh -L {shown}:127.0.0.1:{shown} HEAD_NODE, then open "
            f"http://127.0.0.1:{shown}"
        )


def find_experiment(given: str) -> str:
    """The experiment folder: as given, else (a bare name) under raysl tune's default --storage."""
    here = storage.resolve(given).uri
    if storage.exists(storage.join_uri(here, study.STUDY_FILE)) or storage.is_dir(here):
        return here
    if not storage.is_uri(given) and "/" not in given:
        default = storage.join_uri(storage.resolve(DEFAULT_RESULTS).uri, given)
        if storage.is_dir(default):
            return default
    raise ConfigError(f"no experiment at {given}; give the folder raysl tune wrote (its --storage/--name, "
                      f"e.g. {DEFAULT_RESULTS}/quickstart)")


def dashboard_main(experiment_path: str, host: str = "127.0.0.1", port: int = 8080,
                   optuna_storage: str | None = None) -> int:
    """``raysl dashboard EXPERIMENT [--host H] [--port P] [--optuna-storage URL]``."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: use a port in 1..65535 (0: any free port)")
    _check_host(host, port)
    experiment = find_experiment(experiment_path)
    place = study.load(experiment, optuna_storage)
    db = place.open()
    try:
        study_id = db.get_study_id_from_name(place.name)
    except KeyError:
        raise ConfigError(f"{place.public_url} has no Optuna study named {place.name!r} (the study of {experiment}); "
                          f"pass --optuna-storage with the database it was started in") from None

    import optuna_dashboard

    app = optuna_dashboard.wsgi(db)
    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port}: {host}:{port} is already in use; pass another --port "
                              "(--port 0: any free port)") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another "
                          "--port or --host 127.0.0.1") from None
    port = server.server_address[1]
    host = f"[{host}]" if ":" in host else host
    # Ctrl-C and SIGTERM stop it, even when it was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits that, and Python then leaves SIGINT ignored); in place before the
    # address is printed, so that whoever reads it can stop the server at once
    from raysl.interrupts import interrupt_signals

    try:
        with interrupt_signals():
            print(f"raysl dashboard: study {place.name} ({place.public_url}) at http://{host}:{port}/dashboard/"
                  f"studies/{study_id}", flush=True)
            print(f"[raysl] Ctrl-C stops it; from another machine: ssh -L {port}:127.0.0.1:{port} HEAD_NODE, then "
                  f"open http://127.0.0.1:{port}", file=sys.stderr, flush=True)
            server.serve_forever()
    except KeyboardInterrupt:
        return 130
    finally:
        server.server_close()
    return 0
