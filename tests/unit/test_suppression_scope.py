"""Per-sender-domain suppression: the scope of automatic additions and of imports."""

from __future__ import annotations

import io

from smtplb.api.reputation_routes import suppression_entries
from smtplb.commands.admin import import_entries
from smtplb.reputation.feedback import complaint_scope
from smtplb.reputation.state import Suppression, normalize_domain


def test_a_complaint_is_scoped_to_the_sender_domain_only_when_configured() -> None:
    assert complaint_scope("global", "news@Shop.Test") == ""
    assert complaint_scope("sender_domain", "news@Shop.Test") == "shop.test"
    assert complaint_scope("sender_domain", "<news@shop.test>") == "shop.test"
    # An unknown sender, or the null sender: the complainant is suppressed for everyone.
    assert complaint_scope("sender_domain", None) == ""
    assert complaint_scope("sender_domain", "") == ""


def test_normalize_domain() -> None:
    assert normalize_domain(" @Shop.Test. ") == "shop.test"
    assert normalize_domain("") == ""


def test_an_export_imports_back_with_each_row_s_reason_and_domain() -> None:
    exported = io.StringIO(
        "address,reason,source,created_at,domain\n"
        "a@example.org,550 5.1.1 gone,bounce,1.5,\n"
        'b@example.org,"complaint (arf, abuse)",complaint,2.0,shop.test\n'
    )
    assert import_entries(exported, reason="imported", domain="other.test") == [
        {"address": "a@example.org", "reason": "550 5.1.1 gone", "domain": ""},
        {"address": "b@example.org", "reason": "complaint (arf, abuse)", "domain": "shop.test"},
    ]


def test_a_plain_list_takes_the_options() -> None:
    plain = io.StringIO("# exported by hand\na@example.org\n\nb@example.org,whatever\nnot-one\n")
    assert import_entries(plain, reason="r", domain="shop.test") == [
        {"address": "a@example.org", "reason": "r", "domain": "shop.test"},
        {"address": "b@example.org", "reason": "r", "domain": "shop.test"},
    ]
    headed = io.StringIO("address,reason\nc@example.org,\n")  # the first release's export
    assert import_entries(headed, reason="r") == [
        {"address": "c@example.org", "reason": "r", "domain": ""}
    ]


def test_a_post_body_becomes_entries_or_names_what_is_wrong() -> None:
    assert suppression_entries({"addresses": ["a@example.org"], "domain": "Shop.Test"}, 1.0) == [
        Suppression("a@example.org", "", "operator", 1.0, "shop.test")
    ]
    assert suppression_entries({"address": "a@example.org", "reason": "r"}, 1.0) == [
        Suppression("a@example.org", "r", "operator", 1.0, "")
    ]
    rows = {"entries": [{"address": "a@example.org", "reason": "x", "domain": "b.test"}]}
    assert suppression_entries(rows, 2.0) == [
        Suppression("a@example.org", "x", "operator", 2.0, "b.test")
    ]
    assert "domain" in str(suppression_entries({"address": "a@example.org", "domain": 3}, 0))
    assert "domain" in str(suppression_entries({"address": "a@example.org", "domain": "a b"}, 0))
    assert "addresses" in str(suppression_entries({"addresses": ["nope"]}, 0))
    assert "entries" in str(suppression_entries({"entries": ["a@example.org"]}, 0))
    assert "reason" in str(suppression_entries({"address": "a@example.org", "reason": 1}, 0))
