#!/usr/bin/env python3
"""Load comparison: tokengate beside nginx, side by side, in one run.

    cargo build --release && python3 benches/load.py [--rounds 3] [--seconds 5]

Needs wrk, nginx (with auth_request) and libnginx-mod-http-lua from Debian's packages. The
proxy under test is pinned to core 0 with one worker; wrk and the upstream (an nginx answering
200 itself) share core 1. Targets are interleaved over the rounds; each figure is the median
over rounds. CPU per request is the user+sys time of the proxy's own processes (from /proc)
over the requests served: on two cores, requests/s mostly measures the load generator.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "tokengate")
ADMIN_KEY = "load-test-admin-key-0123456789"
TOKENS = 10_000
TICK = os.sysconf("SC_CLK_TCK")
NGINX_LUA = "/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"{what} never listened on {port}")


def cpu_seconds(pids):
    """user+sys seconds of these processes (and nothing else)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / TICK


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, core, **kw):
        p = subprocess.Popen(["taskset", "-c", str(core)] + args, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def nginx_conf(dir, port, body, lua=False):
    d = dir
    load = "".join(f"load_module {m};\n" for m in NGINX_LUA) if lua else ""
    return (f"{load}worker_processes 1;\ndaemon off;\npid {d}/nginx-{port}.pid;\n"
            f"error_log {d}/error-{port}.log crit;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n access_log off;\n client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n"
            f" fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n"
            f" upstream up {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 64; }}\n"
            f" upstream tg {{ server 127.0.0.1:{CHECK_PORT}; keepalive 64; }}\n"
            f"{body}\n}}\n")


def start_nginx(procs, dir, port, body, core, lua=False):
    path = os.path.join(dir, f"nginx-{port}.conf")
    with open(path, "w") as f:
        f.write(nginx_conf(dir, port, body, lua))
    p = procs.start(["nginx", "-p", dir, "-c", path], core)
    wait_port(port, p, "nginx")
    return p


def admin(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"authorization": f"Bearer {ADMIN_KEY}",
                                          "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


def start_tokengate(procs, dir, name, routes, core, extra=""):
    port, admin_port = free_port(), free_port()
    cfg = os.path.join(dir, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(f"[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n"
                f"threads = 1\n[upstream]\nurl = \"http://127.0.0.1:{UPSTREAM_PORT}\"\n"
                f"[admin]\nkey = \"{ADMIN_KEY}\"\n[store]\nbackend = \"embedded\"\n"
                f"path = \"{dir}/{name}.db\"\n[limits]\nfailures_per_minute = 0\ntokens_per_user = {TOKENS}\n"
                f"[cache]\nttl = \"1h\"\n{extra}\n{routes}\n")
    p = procs.start([BIN, "serve", "-c", cfg], core, cwd=dir, env={**os.environ, "RUST_LOG": "warn"})
    wait_port(admin_port, p, "tokengate admin")
    wait_port(port, p, "tokengate")
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz").read()
            break
        except OSError:
            if time.time() > deadline:
                sys.exit("tokengate never ready")
            time.sleep(0.05)
    return p, port, admin_port


def seed_tokens(admin_port, n):
    admin(admin_port, "POST", "/v1/apps", {"id": "bq1", "name": "B"})
    admin(admin_port, "POST", "/v1/users", {"id": "load", "email": "load@example.com",
                                            "name": "Load", "apps": ["bq1"]})
    return [admin(admin_port, "POST", "/v1/users/load/tokens",
                  {"name": f"t{i}", "apps": ["bq1"]})["token"] for i in range(n)]


def wrk_script(dir, tokens, header="authorization", prefix="QB-USER-TOKEN "):
    path = os.path.join(dir, "tokens.lua")
    with open(path, "w") as f:
        f.write("local t = {\n" + ",\n".join(f'"{prefix}{t}"' for t in tokens) + "}\n")
        f.write("math.randomseed(7)\nrequest = function()\n"
                f'  wrk.headers["{header}"] = t[math.random(#t)]\n'
                "  return wrk.format(nil, \"/db/bq1\")\nend\n")
    return path


def run_wrk(port, seconds, script=None):
    args = ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", script]
    out = subprocess.run(args + [f"http://127.0.0.1:{port}/db/bq1"], capture_output=True,
                         text=True).stdout
    rps = float(out.split("Requests/sec:")[1].split()[0])
    total = int(out.split(" requests in ")[0].split()[-1])
    lat = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            v = parts[1]
            unit = 1e-3 if v.endswith("us") else (1.0 if v.endswith("ms") else 1e3)
            lat[parts[0]] = float(v.rstrip("usm")) * unit
    non2xx = "Non-2xx" in out
    return rps, total, lat.get("50%"), lat.get("99%"), non2xx


def main():
    global UPSTREAM_PORT, CHECK_PORT
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (apt-get install wrk nginx-light libnginx-mod-http-lua util-linux)")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    dir = tempfile.mkdtemp(prefix="tg-load-")
    procs = Procs()
    try:
        UPSTREAM_PORT = free_port()
        CHECK_PORT = 1  # set below, once the checking tokengate runs
        start_nginx(procs, dir, UPSTREAM_PORT,
                    f" server {{ listen 127.0.0.1:{UPSTREAM_PORT}; location / {{ return 200 'ok'; }} }}", 1)

        targets = {}  # name -> (port, pids function, wrk script)
        p, port, _ = start_tokengate(procs, dir, "open", '[[routes]]\npath = "/db/{app}"\nauth = "none"\n', 0)
        targets["tokengate, auth off"] = (port, lambda p=p: [p.pid], None)

        p, port, admin_port = start_tokengate(procs, dir, "tokens", '[[routes]]\npath = "/db/{app}"\n', 0)
        print(f"making {TOKENS} user tokens...", file=sys.stderr)
        tokens = seed_tokens(admin_port, TOKENS)
        script = wrk_script(dir, tokens)
        for t in tokens:  # every token cached: the figures are cache hits
            req = urllib.request.Request(f"http://127.0.0.1:{port}/db/bq1",
                                         headers={"authorization": f"QB-USER-TOKEN {t}"})
            urllib.request.urlopen(req).read()
        targets["tokengate, user tokens (cache hits, 10,000 tokens)"] = (port, lambda p=p: [p.pid], script)

        # nginx auth_request asking the same tokengate (its /_auth/check).
        CHECK_PORT = port
        nport = free_port()
        n = start_nginx(procs, dir, nport, (
            f" server {{ listen 127.0.0.1:{nport};\n"
            "  location / { auth_request /_check; proxy_http_version 1.1;"
            " proxy_set_header Connection \"\"; proxy_pass http://up; }\n"
            "  location = /_check { internal; proxy_pass http://tg/_auth/check;"
            " proxy_http_version 1.1; proxy_set_header Connection \"\";"
            " proxy_pass_request_body off; proxy_set_header Content-Length \"\";"
            " proxy_set_header X-Original-URI $request_uri; }\n }"), 0)
        targets["nginx auth_request -> tokengate /_auth/check"] = (
            nport, lambda n=n, p=p: [n.pid] + children(n.pid) + [p.pid], script)

        nport = free_port()
        n = start_nginx(procs, dir, nport, (
            f" server {{ listen 127.0.0.1:{nport}; location / {{ proxy_http_version 1.1;"
            " proxy_set_header Connection \"\"; proxy_pass http://up; } }"), 0)
        targets["nginx proxy_pass"] = (nport, lambda n=n: [n.pid] + children(n.pid), None)

        # nginx with a Lua key check against a shared dict (Kong's way).
        keys = os.path.join(dir, "keys.txt")
        with open(keys, "w") as f:
            f.write("\n".join(tokens))
        nport = free_port()
        n = start_nginx(procs, dir, nport, (
            " lua_shared_dict keys 16m;\n"
            f" init_by_lua_block {{ for k in io.lines('{keys}') do ngx.shared.keys:set(k, 1) end }}\n"
            f" server {{ listen 127.0.0.1:{nport}; location / {{\n"
            "  access_by_lua_block { local h = ngx.var.http_authorization or ''\n"
            "   local k = h:match('^QB%-USER%-TOKEN (.+)$')\n"
            "   if not k or not ngx.shared.keys:get(k) then return ngx.exit(401) end }\n"
            "  proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://up; } }"),
            0, lua=True)
        targets["nginx + Lua key check"] = (nport, lambda n=n: [n.pid] + children(n.pid), script)
        targets["upstream directly"] = (UPSTREAM_PORT, lambda: [], None)

        results = {name: [] for name in targets}
        for r in range(args.rounds):
            order = list(targets)
            random.Random(r).shuffle(order)
            for name in order:
                port, pids, script = targets[name]
                before = cpu_seconds(pids())
                rps, total, p50, p99, non2xx = run_wrk(port, args.seconds, script)
                cpu = cpu_seconds(pids()) - before
                if non2xx:
                    sys.exit(f"{name}: non-2xx answers")
                results[name].append((rps, p50, p99, cpu / total * 1e6 if pids() else None))
                print(f"round {r + 1}: {name}: {rps:.0f} req/s", file=sys.stderr)

        print("| target | requests/s | p50 ms | p99 ms | proxy CPU µs/request |")
        print("|---|---:|---:|---:|---:|")
        for name, runs in results.items():
            med = lambda i: statistics.median(x[i] for x in runs if x[i] is not None) \
                if any(x[i] is not None for x in runs) else None
            cpu = med(3)
            print(f"| {name} | {med(0):.0f} | {med(1):.2f} | {med(2):.2f} | "
                  f"{'-' if cpu is None else f'{cpu:.1f}'} |")
    finally:
        procs.stop()
        shutil.rmtree(dir, ignore_errors=True)


if __name__ == "__main__":
    main()
