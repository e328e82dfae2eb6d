#!/usr/bin/env bash
# Builds the Debian package, checks what it holds, installs it with dpkg
# into this machine (root needed: CI runs on a throwaway machine), starts
# the installed binary with the shipped config (not through systemd, which
# does not run here; only the port, metrics address and data directory are
# overridden), checks it answers PING and /readyz, then removes it.
#
#   bash scripts/package-test.sh [--profile release|dev]
set -euo pipefail
cd "$(dirname "$0")/.."

deb=$(bash scripts/package.sh "$@" | tail -n1)
echo "package: $deb"
contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/sessiond ./lib/systemd/system/sessiond.service \
  ./etc/sessiond/sessiond.toml ./usr/share/man/man1/sessiond.1.gz \
  ./usr/share/bash-completion/completions/sessiond \
  ./usr/share/zsh/vendor-completions/_sessiond \
  ./usr/share/fish/vendor_completions.d/sessiond.fish; do
  grep -q " $path\$" <<<"$contents" || { echo "missing from the package: $path" >&2; exit 1; }
done
unit=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./lib/systemd/system/sessiond.service)
for line in Type=notify DynamicUser=yes StateDirectory=sessiond ProtectSystem=strict \
  NoNewPrivileges=yes PrivateTmp=yes ProtectHome=yes; do
  grep -qx "$line" <<<"$unit" || { echo "the unit lacks $line" >&2; exit 1; }
done

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
pid=""; work=$(mktemp -d)
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  $SUDO dpkg -r sessiond >/dev/null 2>&1 || true
  $SUDO dpkg -P sessiond >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
$SUDO dpkg -i "$deb"
/usr/bin/sessiond check-config --config /etc/sessiond/sessiond.toml >/dev/null
if command -v systemd-analyze >/dev/null 2>&1; then
  # Unknown or misspelt directives, a wrong ExecStart path.
  verify=$(systemd-analyze verify /lib/systemd/system/sessiond.service 2>&1) || { echo "$verify" >&2; exit 1; }
  if grep -i 'unknown\|not executable\|failed' <<<"$verify"; then exit 1; fi
fi
zcat /usr/share/man/man1/sessiond.1.gz | grep -q 'requirepass' || { echo "the man page lacks the flags" >&2; exit 1; }

/usr/bin/sessiond serve --config /etc/sessiond/sessiond.toml --port 0 \
  --metrics-addr 127.0.0.1:0 --data-dir "$work/data" > "$work/out" &
pid=$!
for _ in $(seq 100); do grep -q 'sessiond ready' "$work/out" && break; sleep 0.1; done
line=$(head -n1 "$work/out")
port=$(sed -n 's/.*resp=[^ ]*:\([0-9]*\).*/\1/p' <<<"$line")
metrics=$(sed -n 's/.*metrics=\([^ ]*\).*/\1/p' <<<"$line")
[ -n "$port" ] || { echo "the installed server did not start: $line" >&2; exit 1; }
[ "$(redis-cli -p "$port" PING)" = PONG ] || { echo "no PONG" >&2; exit 1; }
exec 3<>"/dev/tcp/${metrics%:*}/${metrics##*:}"
printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3
ready=$(cat <&3); exec 3<&-
grep -q '^HTTP/1.0 200' <<<"$ready" || { echo "not ready: $ready" >&2; exit 1; }
kill "$pid"; wait "$pid"; pid=""
$SUDO dpkg -r sessiond
echo "package ok: $deb"
