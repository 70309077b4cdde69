from __future__ import annotations

from smtplb.config import RouteConfig
from smtplb.routing.routes import RoutingInput, classify_content, decide_route


def inp(recipient: str = "a@example.org", **kw: object) -> RoutingInput:
    base: dict[str, object] = {
        "sender": "app@shop.test",
        "recipient": recipient,
        "headers": [],
        "content_class": "transactional",
    }
    base.update(kw)
    return RoutingInput(**base)  # type: ignore[arg-type]


def test_classify_content() -> None:
    assert classify_content([], 1) == "transactional"
    assert classify_content([("list-unsubscribe", "<mailto:u@x>")], 1) == "marketing"
    assert classify_content([("precedence", "bulk")], 1) == "bulk"
    assert classify_content([], 51) == "bulk"
    assert classify_content([("x-smtplb-class", "Marketing")], 1) == "marketing"
    assert classify_content([("x-smtplb-class", "bogus")], 1) == "transactional"


def test_first_matching_route_wins_and_default_pool_otherwise() -> None:
    routes = [
        RouteConfig(pool="gmail", match={"recipient_domain": ["gmail.com", "googlemail.com"]}),
        RouteConfig(pool="news", match={"class": "marketing"}, priority="low"),
        RouteConfig(pool="shop", match={"sender_domain": "*.test"}),
    ]
    d = decide_route(routes, "default", inp("x@GMAIL.com"))
    assert (d.pool, d.priority, d.route_index) == ("gmail", 0, 0)
    d = decide_route(routes, "default", inp(content_class="marketing"))
    assert (d.pool, d.priority) == ("news", 2)
    d = decide_route(routes, "default", inp())
    assert d.pool == "shop"
    d = decide_route(routes, "default", inp(sender="x@other.org"))
    assert (d.pool, d.route_index, d.priority) == ("default", None, 0)


def test_header_client_ip_auth_user_matches() -> None:
    routes = [
        RouteConfig(pool="h", match={"header": "X-Campaign: spring*"}),
        RouteConfig(pool="net", match={"client_ip": "10.0.0.0/8"}),
        RouteConfig(pool="user", match={"auth_user": "billing"}),
    ]
    assert decide_route(routes, "d", inp(headers=[("x-campaign", "spring-24")])).pool == "h"
    assert decide_route(routes, "d", inp(client_ip="10.1.2.3")).pool == "net"
    assert decide_route(routes, "d", inp(client_ip="not-an-ip")).pool == "d"
    assert decide_route(routes, "d", inp(auth_user="billing")).pool == "user"
    assert decide_route(routes, "d", inp()).pool == "d"


def test_route_can_set_class() -> None:
    routes = [RouteConfig(pool="p", match={"sender": "news@*"}, content_class="bulk")]
    d = decide_route(routes, "d", inp(sender="news@shop.test"))
    assert (d.content_class, d.priority) == ("bulk", 2)
