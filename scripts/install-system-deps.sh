#!/usr/bin/env bash
# Installs the Debian packages the test suite uses, when missing: iproute2 (network-namespace discovery
# test), chromium (dashboard test), and on x86-64 g++-aarch64-linux-gnu, qemu-user, clang (arm64 engine test).
# Without root or apt-get it says so; the tests that need them then skip with a printed reason.
set -u
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
# The arm64 (NEON) engine check cross-compiles and runs under qemu; it runs on x86-64 hosts only.
if [ "$(uname -m)" = "x86_64" ]; then
  command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || need+=(g++-aarch64-linux-gnu)
  command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
  command -v clang++ >/dev/null 2>&1 || need+=(clang)
fi
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system packages: missing ${need[*]} (not root or no apt-get); the tests that need them will skip"
  exit 0
fi
echo "system packages: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "system packages: install of ${need[*]} failed; the tests that need them will skip"
exit 0
