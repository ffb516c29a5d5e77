"""Debian's packaged nginx with the patch (scripts/build-nginx-deb.sh), run with Debian's
own configuration: /etc/nginx/nginx.conf (user www-data, worker_processes auto, its
includes) and the default site, whose listens get `reuseport` (port 80, both families).
Only what cannot run outside a system is moved into the work directory: the pid file,
the logs, the temp paths and the document root (the unpacked package's)."""

import os
import re
import time

from prefork.wait import check

from .. import Skip
from . import scenario
from .lifecycle import upgrade_done

DEBIAN_LISTENS = ["0.0.0.0:80", "[::]:80"]
TARGETS = ["127.0.0.1:80", "[::1]:80"]


def debian_config(srv):
    """Writes nginx.conf and sites-enabled/default in the work directory from the
    package's; returns the number of workers `auto` gives."""
    etc = os.path.realpath(os.path.join(srv.build.prefix, "conf"))
    site_path = os.path.join(etc, "sites-available", "default")
    if not os.path.exists(site_path):
        raise Skip(f"{srv.build.prefix} is not Debian's package (no conf/sites-available/default)")
    root = os.path.dirname(os.path.dirname(etc))  # the unpacked package's /
    with open(os.path.join(etc, "nginx.conf")) as f:
        conf = f.read()
    check("user www-data;" in conf, "Debian's nginx.conf no longer says `user www-data`")
    sites = os.path.join(srv.dir, "sites-enabled")
    os.makedirs(sites, exist_ok=True)
    conf = conf.replace("pid /run/nginx.pid;", f"pid {srv.pid_path};")
    conf = re.sub(r"error_log /var/log/nginx/error.log;", f"error_log {srv.log} info;", conf)
    conf = conf.replace("access_log /var/log/nginx/access.log;", "access_log off;")
    conf = conf.replace("include /etc/nginx/sites-enabled/*;", f"include {sites}/*;")
    conf = conf.replace("/etc/nginx/", etc + "/")
    conf = conf.replace("http {", "http {\n" + srv.temp_paths(), 1)
    with open(srv.conf, "w") as f:
        f.write(conf)
    with open(site_path) as f:
        site = f.read()
    site = site.replace("listen 80 default_server;", "listen 80 reuseport default_server;")
    site = site.replace("listen [::]:80 default_server;", "listen [::]:80 reuseport default_server;")
    check(site.count(" reuseport default_server;") == 2, "Debian's default site has other listens now")
    site = site.replace("root /var/www/html;", f"root {root}/usr/share/nginx/html;")
    with open(os.path.join(sites, "default"), "w") as f:
        f.write(site)
    srv.listens = list(DEBIAN_LISTENS)
    srv.plain = []
    srv.worker_user = "www-data"
    srv.workers = os.sysconf("SC_NPROCESSORS_ONLN")


@scenario(servers=["nginx"])
def debian_conf(srv, ctx):
    """Debian's configuration with reuseport listens: serve, two reloads and a binary
    upgrade under load."""
    debian_config(srv)
    srv.start()
    master = srv.master()
    load = ctx.load(TARGETS)
    time.sleep(0.5)
    srv.reload(master)
    time.sleep(0.3)
    srv.reload(master)
    time.sleep(0.3)
    old, new = srv.start_upgrade()
    upgrade_done(srv, old, new)
    time.sleep(0.5)
    ctx.result = load.stop()
    return new
