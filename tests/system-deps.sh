#!/usr/bin/env bash
# System packages the integration tests use when they can: real sshd and ssh/scp
# for the bridge's README example (tests/integration/test_bridge.py), and Debian's
# chromium for the web client in a real browser (tests/integration/test_browser.py;
# playwright drives it and never downloads a browser of its own). Installed
# with apt when we are root and it is missing; otherwise the tests that need it
# skip and say why. Never fails the build: a missing package is a skip, not an error.
set -u
need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 && command -v scp >/dev/null 2>&1 || need+=(openssh-client)
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)  # fonts: legible screenshots
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: not root or no apt-get; tests that need ${need[*]} will skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists of a fresh machine may be empty: install, and on failure update and try again.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; } ||
    echo "system-deps: could not install ${need[*]}; tests that need them will skip"
exit 0
