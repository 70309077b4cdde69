"""scrypt password hashes and the SMTP AUTH authenticator."""

from __future__ import annotations

import base64
import threading

import pytest

from smtplb.intake.auth import hash_password, make_authenticator, parse_hash, verify_password

FAST = {"n": 2**4, "r": 1, "p": 1}  # tiny cost: these tests check logic, not strength


def test_hash_format_and_round_trip() -> None:
    stored = hash_password("correct horse")
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horse ", stored)
    assert not verify_password("", stored)


def test_salts_differ() -> None:
    assert hash_password("pw", **FAST) != hash_password("pw", **FAST)


def test_non_ascii_passwords() -> None:
    stored = hash_password("pässwörd ☃", **FAST)
    assert verify_password("pässwörd ☃", stored)
    assert not verify_password("passwort", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain-text-password",
        "bcrypt$2b$12$abc",
        "scrypt$16$1$1$c2FsdA==",
        "scrypt$abc$1$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$15$1$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",  # n not a power of two
        "scrypt$4194304$8$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",  # n too large to check
        "scrypt$16$0$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$16$1$1$not base64$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$16$1$1$$aGFzaGhhc2hoYXNoaGFzaA==",  # empty salt
        "scrypt$16$1$1$c2FsdA==$c2hvcnQ=",  # hash too short
    ],
)
def test_malformed_hashes_never_verify(stored: str) -> None:
    with pytest.raises(ValueError, match="password_hash"):
        parse_hash(stored)
    assert not verify_password("anything", stored)


def test_parsed_hash_repr_hides_the_digest() -> None:
    parsed = parse_hash(hash_password("pw", **FAST))
    assert repr(parsed) == "ScryptHash(n=16, r=1, p=1)"


def test_authenticator() -> None:
    check = make_authenticator(
        {"alice": hash_password("a-secret", **FAST), "bob": hash_password("b-secret", **FAST)}
    )
    assert check("alice", "a-secret")
    assert check("alice", "a-secret")  # from the cache of recent successes
    assert check("bob", "b-secret")
    assert not check("alice", "b-secret")
    assert not check("carol", "a-secret")
    assert not check("Alice", "a-secret")  # names are exact
    assert not check("", "")


def test_authenticator_names_the_user_with_a_bad_hash() -> None:
    with pytest.raises(ValueError, match=r"\[smtp\] users: user 'bob': password_hash"):
        make_authenticator({"alice": hash_password("x", **FAST), "bob": "not-a-hash"})


def test_authenticator_from_several_threads() -> None:
    check = make_authenticator({"alice": hash_password("pw", **FAST)})
    results: list[bool] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        ok = check("alice", "pw" if i % 2 == 0 else "wrong")
        with lock:
            results.append(ok == (i % 2 == 0))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 16
