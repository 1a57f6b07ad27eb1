#!/usr/bin/env bash
# Installs the system tools the tests drive (as root, from Debian's packages), when missing.
# Without root or apt-get it only reports; tests that need a missing tool are skipped.
set -euo pipefail
need=()
command -v nft      >/dev/null || need+=(nftables)
command -v tcpdump  >/dev/null || need+=(tcpdump)
command -v tshark   >/dev/null || need+=(tshark)
command -v ip       >/dev/null || need+=(iproute2)
command -v wrk      >/dev/null || need+=(wrk)
command -v nginx    >/dev/null || need+=(nginx-light)
# promtool: checks the exporter's scrape and the alert rules, runs their unit tests
command -v promtool >/dev/null || need+=(prometheus)
# kernel tracing for `tcpreuse trace` and tests/test_trace_netns.py
command -v bpftrace >/dev/null || need+=(bpftrace)
# the second kernel (tcpreuse validate --kernel uml): User-Mode Linux 6.1, modprobe for its
# module tree, iptables-legacy for NAT/LB (its nftables has no ip family)
command -v linux    >/dev/null || need+=(user-mode-linux)
command -v modprobe >/dev/null || need+=(kmod)
command -v iptables-legacy-restore >/dev/null || need+=(iptables)
# headless browser for the HTML report tests (tests/test_report_browser.py)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: missing ${need[*]} (not root or no apt-get); tests needing them will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "system-deps: installing ${need[*]}" >&2
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
