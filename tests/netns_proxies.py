"""Proxy and address-filter checks that need addresses other than loopback, run by
tests/test_proxies.py as ``unshare -rnm python netns_proxies.py SCENARIO``.

Inside a new user, network and mount namespace the only interface is ``lo``: the addresses put
on it (a public one, private ones, an IPv4-translated one) are reachable from here and nothing
can leave the machine. A temporary hosts file, bind-mounted over /etc/hosts in this mount
namespace only, gives names to those addresses. The gateway runs in this process. Prints
``PASSED <scenario>`` and exits 0, or exits 1 with the failed check.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
from urllib.parse import urlencode

from fakes import CountingListener, FakeOrigin, FakeSD, RecordingProxy, png_bytes
from tornado.netutil import bind_sockets
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.web import RequestHandler

from tornado_imagegate.app import make_app
from tornado_imagegate.config import load_settings
from tornado_imagegate.server import configure_http_client, make_http_server

# A public address as far as the filter knows (documentation ranges are refused, rightly).
# Here it lives on this namespace's lo, like the others.
PUBLIC = "93.184.216.34"
PUBLIC_PROXY = "93.184.216.35"
PUBLIC6 = "2606:4700:4700::1111"
PRIVATE = "10.0.0.1"
METADATA = "169.254.169.254"
TRANSLATED = "::ffff:0:7f00:1"  # IPv4-translated (SIIT) 127.0.0.1
HOSTS = {
    "images.test": [PUBLIC],
    "images6.test": [PUBLIC6],
    "private.test": [PRIVATE],
    "metadata.test": [METADATA],
    "mixed.test": [PUBLIC, PRIVATE],  # rebinding: one public answer, one private
    "translated.test": [TRANSLATED],
}
ENV_PROXY_NAMES = ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


class CheckFailed(Exception):
    """One check of a scenario did not hold."""


def check(condition: bool, message: str) -> None:
    """Fail the scenario with ``message`` unless ``condition``."""
    if not condition:
        raise CheckFailed(message)
    print(f"ok: {message}")


def set_up_network() -> None:
    """Refuse to run outside a fresh namespace; put the addresses on lo; write the hosts file."""
    names = [name for _index, name in socket.if_nameindex()]
    if names != ["lo"]:
        sys.exit(f"refusing to run: interfaces {names}; run me under `unshare -rnm`")
    commands = [["ip", "link", "set", "lo", "up"]]
    for address in (PUBLIC, PUBLIC_PROXY, PRIVATE, METADATA):
        commands.append(["ip", "addr", "add", f"{address}/32", "dev", "lo"])
    commands.append(["ip", "-6", "addr", "add", f"{TRANSLATED}/128", "dev", "lo", "nodad"])
    commands.append(["ip", "-6", "addr", "add", f"{PUBLIC6}/128", "dev", "lo", "nodad"])
    for command in commands:
        subprocess.run(command, check=True)
    lines = [f"{address} {name}" for name, addresses in HOSTS.items() for address in addresses]
    with tempfile.NamedTemporaryFile("w", suffix=".hosts", delete=False) as hosts:
        hosts.write("127.0.0.1 localhost\n" + "\n".join(lines) + "\n")
    subprocess.run(["mount", "--bind", hosts.name, "/etc/hosts"], check=True)
    os.unlink(hosts.name)  # the mount keeps the file for as long as this namespace lives


class Gateway:
    """The gateway, in this process, on 127.0.0.1; the test client is Tornado's simple one."""

    def __init__(self, env: dict[str, str]) -> None:
        base = {"AUTHORIZED_API_KEY": "netns-client-key", "IMAGE_FETCH_TIMEOUT": "5"}
        settings = load_settings({**base, **env})
        configure_http_client(settings)
        self.app = make_app(settings)
        self.server = make_http_server(self.app)
        sockets = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        self.base_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self.server.add_sockets(sockets)
        self.client = SimpleAsyncHTTPClient(force_instance=True)

    async def image(self, url: str) -> tuple[int, bytes]:
        """Follow a signed link to ``url``: the status and body the client gets."""
        query = urlencode(self.app.services.store.signer.query_for_url(url))
        response = await self.client.fetch(
            f"{self.base_url}/image-proxy?{query}", raise_error=False
        )
        return response.code, response.body

    async def chat(self, model: str) -> int:
        """A chat completion for ``model``: its status."""
        body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "a cat"}}]}}'
        response = await self.client.fetch(
            f"{self.base_url}/v1/chat/completions",
            method="POST",
            body=body,
            headers={
                "Authorization": "Bearer netns-client-key",
                "Content-Type": "application/json",
            },
            raise_error=False,
        )
        return response.code

    def close(self) -> None:
        """Stop serving."""
        self.server.stop()
        self.client.close()


async def private_listeners() -> dict[str, CountingListener]:
    """Listeners on every private address, each shown reachable before the gateway tries it."""
    listeners = {}
    for host in (PRIVATE, METADATA, TRANSLATED):
        listener = await CountingListener(host).start()
        check(await listener.reachable(), f"{host} is reachable from this namespace")
        listeners[host] = listener
    return listeners


async def scenario_environment() -> None:
    """Proxy variables in the environment point at a proxy on a public address (which the
    filter would let through): no image fetch and no provider call may use it."""
    proxy = RecordingProxy(PUBLIC_PROXY)
    for name in ENV_PROXY_NAMES:
        os.environ[name] = proxy.url()
    for name in ("no_proxy", "NO_PROXY"):
        os.environ.pop(name, None)
    listeners = await private_listeners()
    origin = FakeOrigin(PUBLIC)
    image = png_bytes(seed=11)
    origin.serve("a.png", image)
    images = FakeOrigin()
    sd = FakeSD(images)
    sd.script(FakeSD.image_answer(f"http://{METADATA}:{listeners[METADATA].port}/x.png"))
    gateway = Gateway({"SD_API_KEY": "netns-sd-key", "SD_API_BASE": sd.url("api")})

    for host, listener in listeners.items():
        for url in (listener.url(), listener.url(_name_of(host))):
            status, _ = await gateway.image(url)
            check(status == 502, f"{url} refused with 502 (got {status})")
    status = await gateway.chat("Z-Image")
    check(status == 502, f"a provider's image URL on {METADATA} refused with 502 (got {status})")
    check(len(sd.requests) == 1, "the provider call itself went straight to the provider")
    status, body = await gateway.image(origin.url("a.png"))
    check(status == 200 and body == image, f"an image on {PUBLIC} arrives directly ({status})")
    check(origin.hits["a.png"] == 1, "the public origin was reached directly")
    check(proxy.connections == 0, f"the environment's proxy saw nothing ({proxy.requests})")
    for listener in listeners.values():
        check(listener.accepted == 0, f"no connection reached {listener.host}")
    gateway.close()


async def scenario_image_fetch_proxy() -> None:
    """IMAGE_FETCH_PROXY on loopback: the gateway resolves and checks each hop itself and the
    proxy is asked to tunnel to the checked address, never to a name."""
    proxy = RecordingProxy("127.0.0.1")
    env_proxy = RecordingProxy(PUBLIC_PROXY)
    for name in ENV_PROXY_NAMES:
        os.environ[name] = env_proxy.url()
    listeners = await private_listeners()
    origin = FakeOrigin(PUBLIC)
    image = png_bytes(seed=12)
    origin.serve("a.png", image)

    def virtual_host(handler: RequestHandler) -> None:
        # The tunnel goes to an address; the request inside it still names the host.
        if handler.request.host_name != "images.test":
            handler.set_status(404)
        handler.set_header("Content-Type", "image/png")
        handler.finish(image)

    origin.routes["vhost.png"] = virtual_host
    origin.redirect("to-private.png", listeners[PRIVATE].url("private.test"))
    origin.redirect("to-public.png", f"http://{PUBLIC}:{origin.port}/a.png")
    gateway = Gateway({"IMAGE_FETCH_PROXY": proxy.url()})

    status, body = await gateway.image(f"http://images.test:{origin.port}/vhost.png")
    check(status == 200 and body == image, f"an image by name arrives through the proxy ({status})")
    tunnel = f"CONNECT {PUBLIC}:{origin.port}"
    check(proxy.requests == [tunnel], f"the proxy was asked `{tunnel}` ({proxy.requests})")

    proxy.requests.clear()
    status, body = await gateway.image(f"http://images.test:{origin.port}/to-public.png")
    check(status == 200 and body == image, f"a redirect is followed through the proxy ({status})")
    check(set(proxy.requests) <= {tunnel}, f"every hop tunnelled to {PUBLIC} ({proxy.requests})")

    proxy.requests.clear()
    connections = proxy.connections
    refused = [
        *(listener.url(_name_of(host)) for host, listener in listeners.items()),
        *(listener.url() for listener in listeners.values()),
        f"http://mixed.test:{origin.port}/a.png",
    ]
    for url in refused:
        status, _ = await gateway.image(url)
        check(status == 502, f"{url} refused with 502 (got {status})")
    check(proxy.connections == connections, f"the proxy saw none of them ({proxy.requests})")

    status, _ = await gateway.image(f"http://images.test:{origin.port}/to-private.png")
    check(status == 502, f"a redirect to private.test refused with 502 (got {status})")
    check(origin.hits["to-private.png"] == 1, "its first hop was fetched")
    check(set(proxy.requests) <= {tunnel}, f"the proxy tunnelled only to {PUBLIC}")

    # TLS through the tunnel names the real host: the listener speaks no TLS, so the handshake
    # fails, but the proxy has seen the ClientHello.
    proxy.requests.clear()
    no_tls = await CountingListener(PUBLIC).start()
    status, _ = await gateway.image(f"https://images.test:{no_tls.port}/a.png")
    check(status == 502, f"https to a listener that speaks no TLS fails ({status})")
    tls_tunnel = f"CONNECT {PUBLIC}:{no_tls.port}"
    check(proxy.requests == [tls_tunnel], f"the https fetch asked `{tls_tunnel}`")
    check(proxy.server_names == ["images.test"], f"TLS SNI was images.test ({proxy.server_names})")

    proxy.requests.clear()
    listener6 = await CountingListener(PUBLIC6).start()
    await gateway.image(f"http://images6.test:{listener6.port}/a.png")
    tunnel6 = f"CONNECT [{PUBLIC6}]:{listener6.port}"
    check(proxy.requests == [tunnel6], f"an IPv6 host is tunnelled to as `{tunnel6}`")
    check(env_proxy.connections == 0, "the environment's proxy saw nothing")
    for listener in listeners.values():
        check(listener.accepted == 0, f"no connection reached {listener.host}")
    gateway.close()


async def scenario_translated() -> None:
    """An IPv4-translated address (::ffff:0:7f00:1, SIIT for 127.0.0.1) that really has a
    listener behind it is refused, directly and by name, with no connection made."""
    listener = await CountingListener(TRANSLATED).start()
    check(await listener.reachable(), f"{TRANSLATED} is reachable from this namespace")
    gateway = Gateway({})
    for url in (listener.url(), listener.url("translated.test")):
        status, _ = await gateway.image(url)
        check(status == 502, f"{url} refused with 502 (got {status})")
    check(listener.accepted == 0, f"no connection reached {TRANSLATED}")
    gateway.close()


def _name_of(address: str) -> str:
    return next(name for name, addresses in HOSTS.items() if addresses == [address])


SCENARIOS = {
    "environment": scenario_environment,
    "image-fetch-proxy": scenario_image_fetch_proxy,
    "translated": scenario_translated,
}


def main() -> None:
    """Run one scenario; exit 1 with the failed check."""
    name = sys.argv[1]
    set_up_network()
    try:
        asyncio.run(SCENARIOS[name]())
    except CheckFailed as failed:
        print(f"FAILED {name}: {failed}")
        sys.exit(1)
    print(f"PASSED {name}")


if __name__ == "__main__":
    main()
