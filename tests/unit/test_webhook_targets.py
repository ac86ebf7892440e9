"""The webhook target policy: every spelling of a refused address is refused
after resolution, private ranges only when allowed, allow and deny networks,
and the connection goes to the address that was checked."""

from __future__ import annotations

import ipaddress

import pytest

from corral.config import Settings
from corral.errors import ConfigError
from corral.webhook_targets import TargetPolicy, TargetRefused, excerpt, redact_url

# Each URL and the class of address it reaches, however it is written.
REFUSED = [
    ("http://127.0.0.1/", "loopback"),
    ("http://127.1/", "loopback"),                       # short form
    ("http://2130706433/", "loopback"),                  # decimal
    ("http://0x7f000001/", "loopback"),                  # hexadecimal
    ("http://0x7f.0.0.1/", "loopback"),
    ("http://017700000001/", "loopback"),                # octal
    ("http://localhost:8080/", "loopback"),              # a name
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),          # IPv4-mapped
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[0:0:0:0:0:ffff:127.0.0.1]/", "loopback"),
    ("http://[64:ff9b::7f00:1]/", "loopback"),           # NAT64
    ("http://[2002:7f00:1::]/", "loopback"),             # 6to4
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://169.254.169.254/latest/meta-data/", "the metadata address"),
    ("http://2852039166/", "the metadata address"),      # 169.254.169.254, decimal
    ("http://[::ffff:169.254.169.254]/", "the metadata address"),
    ("http://[fd00:ec2::254]/", "the metadata address"),
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://10.1.2.3/", "private"),
    ("http://0xa.1.2.3/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://[::ffff:10.0.0.1]/", "private"),
]


@pytest.mark.parametrize(("url", "kind"), REFUSED)
def test_the_default_policy_refuses_every_spelling(url, kind):
    with pytest.raises(TargetRefused, match=f"is an? {kind} address"):
        TargetPolicy().target(url)


@pytest.mark.parametrize("url", [u for u, kind in REFUSED if kind == "private"])
def test_private_ranges_are_allowed_only_with_the_setting(url):
    assert TargetPolicy(allow_private=True).target(url).url


def test_allow_and_deny_networks_and_deny_wins():
    loopback = ipaddress.ip_network("127.0.0.0/8")
    assert TargetPolicy(allow=(loopback,)).target("http://127.0.0.1:9/").url
    assert TargetPolicy(allow=(loopback,)).target("http://[::ffff:127.0.0.1]:9/").url
    with pytest.raises(TargetRefused, match="is in webhook_deny"):
        TargetPolicy(allow=(loopback,), deny=(ipaddress.ip_network("127.0.0.1/32"),)
                     ).target("http://127.0.0.1:9/")
    with pytest.raises(TargetRefused, match="is in webhook_deny"):
        TargetPolicy(deny=(ipaddress.ip_network("93.184.0.0/16"),)).target("http://93.184.1.1/")
    assert TargetPolicy().target("http://93.184.1.1/").url          # a public address


def test_the_connection_goes_to_the_checked_address_under_the_given_name():
    policy = TargetPolicy(allow=(ipaddress.ip_network("127.0.0.0/8"),
                                 ipaddress.ip_network("::1/128")))
    target = policy.target("https://user:pw@localhost:8443/hook?x=1")
    assert target.url in ("https://user:pw@127.0.0.1:8443/hook?x=1",
                          "https://user:pw@[::1]:8443/hook?x=1")
    assert target.headers == {"Host": "localhost:8443"}
    assert target.extensions == {"sni_hostname": "localhost"}   # the certificate's name
    plain = policy.target("http://127.0.0.1/")
    assert (plain.url, plain.headers, plain.extensions) == (
        "http://127.0.0.1/", {"Host": "127.0.0.1"}, {})


def test_an_unresolvable_or_unreadable_host_is_refused_with_a_reason():
    with pytest.raises(TargetRefused, match="does not resolve"):
        TargetPolicy().target("http://no-such-host.invalid/")
    with pytest.raises(TargetRefused, match="cannot be read"):
        TargetPolicy().target("http://0177.0.0.1/")
    with pytest.raises(TargetRefused, match="http:// or https://"):
        TargetPolicy().target("http://x/\r\nHost: y")


def test_the_settings_build_the_policy_and_refuse_a_bad_network():
    policy = TargetPolicy.from_settings(Settings(webhook_allow_private=True,
                                                 webhook_allow="127.0.0.1/32, ::1",
                                                 webhook_deny="10.9.0.0/16"))
    assert policy.allow_private
    assert [str(n) for n in policy.allow] == ["127.0.0.1/32", "::1/128"]
    assert [str(n) for n in policy.deny] == ["10.9.0.0/16"]
    with pytest.raises(ConfigError, match=r"webhook_deny .* 'nope' is not a network"):
        TargetPolicy.from_settings(Settings.model_construct(
            webhook_allow_private=False, webhook_allow="", webhook_deny="nope"))


def test_passwords_are_hidden_and_excerpts_are_one_clean_bounded_line():
    assert redact_url("https://u:secret@h:1/p?q") == "https://u:***@h:1/p?q"
    assert redact_url("https://u@h/p") == "https://u@h/p"
    assert redact_url("https://h/p") == "https://h/p"
    assert redact_url("https://u:p@ss@h/") == "https://u:***@h/"
    assert excerpt("a\r\nb\x1b[1m\tc  d") == "a b [1m c d"
    assert excerpt("x" * 500, 10) == "x" * 9 + "…"
