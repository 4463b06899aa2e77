"""A webhook receiver for Alertmanager's notifications: every POST body is
appended, as one JSON line, to the file named on the command line.

    webhook_receiver.py PORT FILE
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the http.server interface
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(sys.argv[2], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(json.loads(body), ensure_ascii=False) + "\n")
        self.send_response(200)
        self.end_headers()


HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
