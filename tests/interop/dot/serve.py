#!/usr/bin/env python3
"""Serves the DOT site on 127.0.0.1 with the stdlib's WSGI server (threaded).

    serve.py [--port 0]

Prints `listening on HOST:PORT` on stdout once the socket is bound (port 0: a free port).
"""
import argparse
import os
import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dotsite.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Handler(WSGIRequestHandler):
    def log_message(self, fmt, *args):  # the access log is written by `logged` instead
        pass


def logged(app):
    """Writes `METHOD PATH` (no query string: codes, states) to stderr, flushed, BEFORE the
    request is handled, so that a client holding the response knows the line is in the log
    (browser.py counts the token requests that reached DOT)."""

    def wrapper(environ, start_response):
        sys.stderr.write("%s %s\n" % (environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")))
        sys.stderr.flush()
        return app(environ, start_response)

    return wrapper


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    app = logged(get_wsgi_application())
    httpd = make_server(args.host, args.port, app, server_class=ThreadingWSGIServer, handler_class=Handler)
    host, port = httpd.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
